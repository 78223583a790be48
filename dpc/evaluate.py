"""Evaluate a trained run on a split: ``python -m dpc.evaluate run_dir=<dir> split=test``.

Writes into ``<run_dir>/eval/<split>/`` (or ``out=``):
  predictions.npz                 points [n_obj, V, N, 3] (float16), scale, poses per view
  ply/<object_id>_v<k>.ply        predicted clouds (model frame; ``ply_views`` per object)
  chamfer_pred_<split>.txt        "precision coverage" x100 (SPEC section 6)
  pose_error_pred_<split>.txt     "accuracy median_deg" (runs that predict poses)
  metrics_<split>.json            the same, per object, baselines, skipped views, settings
and, for runs that predict poses, ``<run_dir>/eval/alignment.json`` (global rotation,
estimated on ``align_split`` once and reused). See docs/eval.md for every option.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dpc.camera import mask_distance_maps
from dpc.eval.alignment import AlignmentResult, estimate_global_alignment
from dpc.eval.baselines import chamfer_medoid, mean_shape_baseline, mean_view_baseline
from dpc.eval.metrics import (
    FAR_DISTANCE,
    TRIM_KEEP,
    align_points,
    aligned_pose,
    outside_silhouettes,
    pose_errors_deg,
    pose_summary,
    shape_metrics_detailed,
)
from dpc.eval.pose_report import attach_fit_poses, report_for_alignment, summary_lines
from dpc.eval.predict import Predictions, predict_split, write_ply

DEFAULTS = {
    "run_dir": None,  # trained run directory (checkpoints/last.pt) [required]
    "split": "test",  # split to evaluate
    "out": None,  # output folder, default <run_dir>/eval/<split>
    "device": "auto",  # auto (cuda if available) | cpu | cuda
    "batch_size": 32,  # images per forward pass
    "max_objects": None,  # evaluate the first N objects only (quick checks)
    "data_path": None,  # dataset folder overriding the run's config
    "gt_dense": False,  # score against the dense ground truth (16k points) instead of 8k
    "chamfer_backend": "auto",  # auto | kdtree | keops | reference
    "align_split": "val",  # split the global alignment is estimated on
    "align_max_objects": 100,  # objects of align_split used for the alignment
    "recompute_alignment": False,  # ignore a saved alignment.json
    "ply_views": 1,  # PLY files per object (views 0..k-1); 0 = none, -1 = all
    "baselines": True,  # score the mean-shape and mean-view baselines
    "strict": False,  # raise instead of skipping views with NaN points / objects without GT
    "progress": True,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def open_reader(cfg, data_path: str | None, run_dir: Path | None = None):
    """The run's dataset reader, or the on-disk dataset at ``data_path``.

    Evaluation never builds a dataset: a relative ``data.root`` is looked up from the
    current directory, then from the directory the run was launched in (guessed as the
    parent of ``paths.output_root``); if neither has it, a clear error names ``data_path``.
    """
    import dpc.data as dpc_data

    if data_path:
        if not Path(data_path).exists():
            raise FileNotFoundError(f"data_path does not exist: {data_path}")
        return dpc_data.open_dataset(data_path)
    from dpc.training.data import open_training_data

    d = cfg.data
    if d.get("source", "dataset") == "dataset":
        rel = Path(str(d.root)) / str(d.name)
        cands = [rel]
        if not rel.is_absolute() and run_dir is not None:
            # run_dir = <launch>/<output_root>/<name>/<timestamp>
            depth = len(Path(str(cfg.paths.get("output_root", "outputs"))).parts) + 2
            parents = run_dir.resolve().parents
            if depth - 1 < len(parents):  # a run copied elsewhere may sit less deep
                cands.append(parents[depth - 1] / rel)
        for c in cands:
            if (c / "manifest.json").exists():
                return dpc_data.open_dataset(c)
        raise FileNotFoundError(
            f"dataset of this run not found (tried {[str(c) for c in cands]}); pass "
            "data_path=<dataset folder>, or build it: python -m dpc.data build "
            f"{d.get('build_command_args', '')}"
        )
    return open_training_data(cfg)


def dataset_key(cfg, data_path: str | None) -> str:
    """Identifies the dataset a saved alignment was computed on."""
    if data_path:
        return str(Path(data_path).resolve())
    return f"{cfg.data.get('source', 'dataset')}:{cfg.data.name}"


def load_gt(reader, split: str, dense: bool) -> np.ndarray:
    """Ground-truth clouds ``[n_obj, P, 3]`` with a clear error when the split has none."""
    try:
        gt = reader.gt_points(split, dense=dense)
    except (KeyError, FileNotFoundError, OSError) as e:
        raise ValueError(f"split {split!r} has no ground-truth point clouds ({e})") from e
    if gt is None:
        raise ValueError(f"split {split!r} has no ground-truth point clouds")
    return np.asarray(gt)


def valid_gt_mask(gt: np.ndarray) -> np.ndarray:
    """``[n_obj]`` bool: objects with a usable ground-truth cloud (finite, not all zero —
    a zero-filled row is how a missing cloud shows up in an array file)."""
    flat = gt.reshape(gt.shape[0], -1)
    return np.isfinite(flat).all(1) & (np.abs(np.nan_to_num(flat)).sum(1) > 0)


def renderer_from_cfg(cfg):
    from dpc.render import PointCloudRenderer, RenderSettings

    r = cfg.render
    return PointCloudRenderer(
        RenderSettings(
            vox_size=int(r.vox_size),
            kernel_size=int(r.pc_gauss_kernel_size),
            projection=str(r.get("projection", "drc")),
            backend=str(r.get("backend", "auto")),
        )
    )


def final_sigma(cfg) -> float:
    return float(cfg.render.get("pc_relative_sigma_end", 0.2) or 0.2)


def _predict(model, cfg, reader, split: str, device, opts, max_objects):
    """Predictions of the run's model on ``split``, rendered with the run's final sigma."""
    return predict_split(
        model,
        reader,
        split,
        int(cfg.data.image_size),
        device,
        int(opts.batch_size),
        max_objects=max_objects,
        renderer=renderer_from_cfg(cfg),
        sigma=final_sigma(cfg),
        progress=opts.progress,
    )


def get_alignment(
    model, cfg, reader, opts, run_dir: Path, step: int | None, device
) -> AlignmentResult:
    """Load ``<run_dir>/eval/alignment.json`` if it was computed for this checkpoint step,
    else estimate it on ``align_split`` and save it."""
    path = run_dir / "eval" / "alignment.json"
    if path.exists() and not opts.recompute_alignment:
        al = AlignmentResult.load(path)
        if (
            al.step == step
            and al.dataset == dataset_key(cfg, opts.data_path)
            and al.fit_q_pred is not None  # older files lack the fit poses (pose_report)
        ):
            print(f"using saved global alignment {path} (quat {np.round(al.quat, 4).tolist()})")
            return al
        warnings.warn(
            f"{path} was computed for step {al.step} on {al.dataset}; the checkpoint is at "
            f"step {step}, data {dataset_key(cfg, opts.data_path)}: recomputing",
            stacklevel=2,
        )
    split = str(opts.align_split)
    pv = _predict(model, cfg, reader, split, device, opts, opts.align_max_objects)
    gt = load_gt(reader, split, bool(opts.gt_dense))[: pv.points.shape[0]]
    q_gt = np.asarray(reader.quats(split))[: pv.points.shape[0]]
    ok = valid_gt_mask(gt) & np.isfinite(pv.points).reshape(len(gt), -1).all(1)
    if not ok.any():
        raise ValueError(f"no {split} object with finite predictions and ground truth to align on")
    al = estimate_global_alignment(
        pv.points[ok], pv.quat[ok], gt[ok], q_gt[ok], progress=opts.progress
    )
    al.split, al.step, al.dataset = split, step, dataset_key(cfg, opts.data_path)
    # record kept object indices in the split's numbering
    idx = np.nonzero(ok)[0]
    al.kept = [(int(idx[o]), v) for o, v in al.kept]
    n_fit = pv.points.shape[0]
    attach_fit_poses(al, pv.quat[ok], q_gt[ok], f"{split}[:{n_fit}] ({int(ok.sum())} objects)")
    al.save(path)
    print(f"saved global alignment to {path} (quat {np.round(al.quat, 4).tolist()})")
    return al


def evaluate(**kwargs) -> dict:
    """Run the whole evaluation (see :data:`DEFAULTS` for the arguments); returns the
    metrics dictionary also written to ``metrics_<split>.json``."""
    unknown = set(kwargs) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    opts = OmegaConf.create({**DEFAULTS, **kwargs})
    if not opts.run_dir:
        raise ValueError("run_dir is required: python -m dpc.evaluate run_dir=<dir> split=test")
    run_dir = Path(str(opts.run_dir))
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir is not a directory: {run_dir}")
    from dpc.training.checkpoint import find_checkpoint, load_checkpoint, load_run

    ckpt_path = find_checkpoint(run_dir)  # clear FileNotFoundError without a checkpoint
    step = int(load_checkpoint(ckpt_path).get("step", -1))
    device = resolve_device(str(opts.device))
    model, cfg = load_run(run_dir, device)
    reader = open_reader(cfg, opts.data_path, run_dir)
    split = str(opts.split)
    out = Path(str(opts.out)) if opts.out else run_dir / "eval" / split
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 1. predictions
    preds = _predict(model, cfg, reader, split, device, opts, opts.max_objects)
    n_obj, V = preds.points.shape[:2]
    preds.save_npz(out / "predictions.npz")
    _write_plys(out / "ply", preds, int(opts.ply_views))

    # 2. global alignment (runs that predict poses)
    al = None
    if preds.predicts_pose:
        al = get_alignment(model, cfg, reader, opts, run_dir, step, device)

    # 3. scoring
    gt = load_gt(reader, split, bool(opts.gt_dense))[:n_obj]
    masks = reader.masks(split)[:n_obj]
    G = int(cfg.render.vox_size)
    q_gt_split = np.asarray(reader.quats(split))[:n_obj]
    res = score(
        preds,
        gt,
        q_gt_split,
        al,
        opts,
        masks=masks,
        cell_px=(masks.shape[-1] - 1) / max(G - 1, 1),
    )
    res.update(
        run_dir=str(run_dir),
        checkpoint_step=step,
        split=split,
        num_views=V,
        gt_dense=bool(opts.gt_dense),
        seconds=None,
    )
    if opts.baselines:
        res["baselines"] = baselines(reader, split, gt, res["_valid_gt"], preds.predicts_pose, opts)
    if preds.predicts_pose:  # paper + flip-robust alignment, flips, ambiguity
        vg = res["_valid_gt"]
        res["pose_report"] = report_for_alignment(
            al, preds.quat[vg], q_gt_split[vg], f"{split}[:{n_obj}] ({int(vg.sum())} objects)"
        )
    res.pop("_valid_gt")
    res["seconds"] = round(time.time() - t0, 1)
    _write_outputs(out, split, res, preds, al)
    _print_summary(res, out)
    return res


def _has_quat(q: np.ndarray) -> np.ndarray:
    """``[..., 4]`` -> ``[...]`` bool: a usable ground-truth quaternion (finite, and not
    all zero, which is how a missing pose shows up in an array file)."""
    return np.isfinite(q).all(-1) & (np.abs(np.nan_to_num(q)).sum(-1) > 0)


def score(
    preds: Predictions,
    gt: np.ndarray,
    q_gt: np.ndarray,
    al: AlignmentResult | None,
    opts,
    masks: np.ndarray | None = None,
    cell_px: float = 1.0,
) -> dict:
    """Shape (and pose) metrics per object and view, with skipped views counted.

    ``masks`` (uint8 ``[n_obj, V, S, S]``, optional) adds the silhouette diagnostic: the
    share of predicted points projecting more than ``cell_px`` pixels (one renderer
    cell) outside at least one of the object's ground-truth silhouettes."""
    n_obj, V = preds.points.shape[:2]
    valid_gt = valid_gt_mask(gt)
    finite = np.isfinite(preds.points).reshape(n_obj, V, -1).all(-1)  # [n_obj, V]
    ids = preds.object_ids
    if not valid_gt.all():
        bad = [ids[i] for i in np.nonzero(~valid_gt)[0]]
        msg = f"{len(bad)} object(s) without usable ground truth: {bad[:10]}"
        if opts.strict:
            raise ValueError(msg)
        warnings.warn(msg + " (skipped, counted in 'skipped')", stacklevel=2)
    nan_views = [(ids[o], int(v)) for o, v in zip(*np.nonzero(~finite)) if valid_gt[o]]
    if nan_views:
        msg = f"{len(nan_views)} view(s) with NaN/inf predicted points: {nan_views[:10]}"
        if opts.strict:
            raise ValueError(msg)
        warnings.warn(msg + " (skipped, counted in 'skipped')", stacklevel=2)
    q_al = al.tensor() if al is not None else None
    per_obj = []
    prec_all, cov_all, pose_all, bad_pose = [], [], [], []
    far_all, trim_all, out_all, far_out_all = [], [], [], []
    it = range(n_obj)
    if opts.progress:
        from tqdm import tqdm

        it = tqdm(it, desc="score", unit="obj")
    for o in it:
        if not valid_gt[o]:
            continue
        vs = np.nonzero(finite[o])[0]
        row = {"object_id": ids[o], "views": vs.tolist()}
        if len(vs):
            p = torch.from_numpy(preds.points[o, vs])
            if q_al is not None:
                p = align_points(p.double(), q_al).float()
            outside = None
            cams = _has_quat(q_gt[o])
            if masks is not None and cams.any():
                m = torch.from_numpy(np.array(masks[o][cams], np.float32) / 255.0)
                outside = outside_silhouettes(
                    p,
                    mask_distance_maps(m, m.shape[-1]),
                    torch.from_numpy(np.array(q_gt[o][cams], np.float32)),
                    cell_px,
                )
            prec, cov, diag = shape_metrics_detailed(
                p,
                torch.from_numpy(np.array(gt[o], np.float32))[None],
                backend=str(opts.chamfer_backend),
                outside=outside,
            )
            row["precision"] = (prec * 100).tolist()
            row["coverage"] = (cov * 100).tolist()
            row["far_fraction"] = diag["far_fraction"].tolist()
            row["precision_near95"] = (diag["precision_near95"] * 100).tolist()
            prec_all += row["precision"]
            cov_all += row["coverage"]
            far_all += row["far_fraction"]
            trim_all += row["precision_near95"]
            if outside is not None:
                row["outside_fraction"] = diag["outside_fraction"].tolist()
                out_all += row["outside_fraction"]
                far_out_all += diag["far_outside_fraction"].tolist()
        if preds.predicts_pose:
            ok = np.isfinite(preds.quat[o]).all(-1) & _has_quat(q_gt[o])
            bad_pose += [(ids[o], int(v)) for v in np.nonzero(~ok)[0]]
            vq = np.nonzero(ok)[0]
            row["pose_views"] = vq.tolist()
            err = pose_errors_deg(
                torch.from_numpy(preds.quat[o, vq]), torch.from_numpy(q_gt[o, vq]), q_al
            ).numpy()
            row["pose_error_deg"] = err.tolist()
            pose_all += err.tolist()
        per_obj.append(row)
    if not prec_all:
        raise ValueError("no view could be scored: every prediction is NaN or has no ground truth")
    if bad_pose:
        msg = f"{len(bad_pose)} view(s) with a non-finite or missing pose: {bad_pose[:10]}"
        if opts.strict:
            raise ValueError(msg)
        warnings.warn(msg + " (skipped in the pose metrics, counted in 'skipped')", stacklevel=2)
    if preds.predicts_pose and not pose_all:
        raise ValueError("no view has both a finite predicted pose and a ground-truth pose")
    res = {
        "precision": float(np.mean(prec_all)),
        "coverage": float(np.mean(cov_all)),
        "num_scored_views": len(prec_all),
        "diagnostics": {
            "note": (
                "not the paper's metric: share of predicted points farther than "
                f"{FAR_DISTANCE} from the ground truth, and precision (x100) over each "
                f"view's nearest {TRIM_KEEP:.0%} of points"
            ),
            "far_fraction": float(np.mean(far_all)),
            "precision_near95": float(np.mean(trim_all)),
        },
        "skipped": {
            "objects_without_gt": [ids[i] for i in np.nonzero(~valid_gt)[0]],
            "views_with_nan_points": [list(x) for x in nan_views],
            "views_without_pose": [list(x) for x in bad_pose],
        },
        "per_object": per_obj,
        "_valid_gt": valid_gt,
    }
    if out_all:
        res["diagnostics"]["note"] += (
            f"; outside_fraction: share of points projecting more than {cell_px:.2f} px "
            "(one renderer cell) outside at least one of the object's ground-truth "
            "silhouettes, far_outside_fraction: share of points both far and outside"
        )
        res["diagnostics"]["outside_fraction"] = float(np.mean(out_all))
        res["diagnostics"]["far_outside_fraction"] = float(np.mean(far_out_all))
    res["chamfer"] = res["precision"] + res["coverage"]
    if preds.predicts_pose:
        res["pose"] = {
            **pose_summary(pose_all),
            "num_views": len(pose_all),
            "alignment_quat": al.quat if al is not None else None,
        }
    return res


def baselines(reader, split, gt, valid_gt, with_pose: bool, opts) -> dict:
    """Mean-shape (Chamfer medoid of train) and mean-view baselines on the same objects."""
    out = {}
    if "train" not in reader.splits:
        warnings.warn("no train split: baselines skipped", stacklevel=2)
        return out
    train_gt = load_gt(reader, "train", bool(opts.gt_dense))
    tv = valid_gt_mask(train_gt)
    idx, cloud = chamfer_medoid(train_gt[tv])
    out["mean_shape"] = {
        **mean_shape_baseline(cloud, gt, valid_gt),
        "definition": "Chamfer medoid of the training ground-truth clouds",
        "train_object": reader.splits["train"][int(np.nonzero(tv)[0][idx])],
    }
    if with_pose:
        q_gt = np.asarray(reader.quats(split))[: len(gt)][valid_gt]
        out["mean_view"] = {
            **mean_view_baseline(reader.quats("train"), q_gt),
            "definition": "Markley mean of the training camera quaternions",
        }
    return out


def _write_plys(folder: Path, preds: Predictions, ply_views: int) -> None:
    V = preds.points.shape[1]
    k = V if ply_views < 0 else min(ply_views, V)
    for o, oid in enumerate(preds.object_ids):
        for v in range(k):
            if np.isfinite(preds.points[o, v]).all():
                write_ply(folder / f"{oid}_v{v}.ply", preds.points[o, v])


def _write_outputs(out: Path, split: str, res: dict, preds: Predictions, al) -> None:
    (out / f"chamfer_pred_{split}.txt").write_text(
        f"{res['precision']:.6f} {res['coverage']:.6f}\n"
    )
    if "pose" in res:
        p = res["pose"]
        (out / f"pose_error_pred_{split}.txt").write_text(
            f"{p['accuracy']:.6f} {p['median_deg']:.6f}\n"
        )
        # per-view poses, raw and re-expressed in the GT frame
        q = torch.from_numpy(preds.quat).double()
        np.savez(
            out / f"poses_{split}.npz",
            quat_pred=preds.quat,
            quat_aligned=aligned_pose(q, al.tensor() if al else None).float().numpy(),
            object_ids=np.array(preds.object_ids),
        )
    (out / f"metrics_{split}.json").write_text(json.dumps(res, indent=1))


def _print_summary(res: dict, out: Path) -> None:
    lines = [
        f"{res['split']}: {res['num_scored_views']} views, {res['seconds']} s -> {out}",
        f"  model       precision {res['precision']:.3f}  coverage {res['coverage']:.3f}  "
        f"chamfer {res['chamfer']:.3f}  (x100)",
    ]
    dg = res.get("diagnostics")
    if dg:
        lines.append(
            f"  diagnostic  {100 * dg['far_fraction']:.1f}% of predicted points > {FAR_DISTANCE} "
            f"from the GT; precision of the nearest {TRIM_KEEP:.0%}: {dg['precision_near95']:.3f}"
        )
    if dg and "outside_fraction" in dg:
        lines.append(
            f"  diagnostic  {100 * dg['outside_fraction']:.1f}% of predicted points outside a "
            f"GT silhouette by > 1 cell ({100 * dg['far_outside_fraction']:.1f}% far and outside)"
        )
    b = res.get("baselines", {})
    if "mean_shape" in b:
        m = b["mean_shape"]
        lines.append(
            f"  mean shape  precision {m['precision']:.3f}  coverage {m['coverage']:.3f}  "
            f"chamfer {m['chamfer']:.3f}"
        )
    if "pose" in res:
        p = res["pose"]
        lines.append(f"  pose        acc@30 {p['accuracy']:.3f}  median {p['median_deg']:.1f} deg")
        if "mean_view" in b:
            mv = b["mean_view"]
            lines.append(
                f"  mean view   acc@30 {mv['accuracy']:.3f}  median {mv['median_deg']:.1f} deg"
            )
    if "pose_report" in res:
        lines += summary_lines(res["pose_report"])
    skipped = res["skipped"]
    if skipped["objects_without_gt"] or skipped["views_with_nan_points"]:
        lines.append(
            f"  SKIPPED: {len(skipped['objects_without_gt'])} objects without GT, "
            f"{len(skipped['views_with_nan_points'])} views with NaN points"
        )
    print("\n".join(lines))


def parse_cli(argv: list[str]) -> dict:
    """``key=value`` arguments (OmegaConf dotlist syntax, e.g. ``objects=[0,1]``)."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"arguments must be key=value, got {bad}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(argv))


def main(argv: list[str] | None = None) -> None:
    evaluate(**parse_cli(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
