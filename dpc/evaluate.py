"""Evaluate a trained run on a split: ``python -m dpc.evaluate run_dir=<dir> split=test``.

Writes into ``<run_dir>/eval/<split>/`` (or ``out=``):
  predictions.npz                 points [n_obj, V, N, 3] (float16), scale, poses per view
  ply/<object_id>_v<k>.ply        predicted clouds (model frame; ``ply_views`` per object)
  chamfer_pred_<split>.txt        "precision coverage" x100 (docs/METHOD.md, section 6)
  pose_error_pred_<split>.txt     "accuracy median_deg" (runs that predict poses)
  metrics_<split>.json            the same, per object, baselines, skipped views, settings
and, for runs that predict poses, ``<run_dir>/eval/alignment.json`` (global rotation,
estimated on ``align_split`` once and reused). Options: ``configs/eval.yaml``
(``python -m dpc.evaluate --help``), documented in docs/eval.md.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from dpc.cli import run_command
from dpc.data import dataset_key, open_run_data
from dpc.eval.alignment import AlignmentResult, estimate_global_alignment
from dpc.eval.metrics import FAR_DISTANCE, TRIM_KEEP, aligned_pose
from dpc.eval.pose_report import attach_fit_poses, report_for_alignment, summary_lines
from dpc.eval.predictions import Predictions, check_pose_from, predict_split, write_ply
from dpc.eval.score import baselines, load_gt, score, valid_gt_mask
from dpc.render import build_renderer, final_sigma
from dpc.runs import ALIGNMENT, open_run
from dpc.training.distributed import resolve_device


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
        renderer=build_renderer(cfg),
        sigma=final_sigma(cfg),
        progress=opts.progress,
        pose_from=str(opts.pose_from),
    )


def alignment_path(run_dir: Path, pose_from: str) -> Path:
    """Where the run's saved alignment for poses from ``pose_from`` lives:
    ``eval/alignment.json`` (the student, the paper's), ``eval/alignment_<pose_from>.json``
    otherwise (each way of reading poses gets its own fit)."""
    p = run_dir / ALIGNMENT
    return p if pose_from == "student" else p.with_name(f"alignment_{pose_from}.json")


def alignment_file(spec, pose_from: str = "student") -> Path:
    """The alignment file named by ``alignment=``: a file, or a run directory's
    alignment for poses from ``pose_from`` (:func:`alignment_path`)."""
    p = Path(str(spec))
    p = alignment_path(p, pose_from) if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"alignment={spec}: no alignment file {p}")
    return p


def get_alignment(
    model, cfg, reader, opts, run_dir: Path, step: int | None, device
) -> AlignmentResult:
    """The alignment given by ``alignment=``; else ``<run_dir>/eval/alignment.json`` if
    it was computed for this checkpoint step and data set; else estimate it on
    ``align_split`` and save it there."""
    if opts.alignment:
        path = alignment_file(opts.alignment, str(opts.pose_from))
        al = AlignmentResult.load(path)
        print(f"using the given alignment {path} (estimated on {al.dataset}, step {al.step})")
        if al.step != step:
            warnings.warn(f"{path} is for step {al.step}, the checkpoint {step}", stacklevel=2)
        return al
    path = alignment_path(run_dir, str(opts.pose_from))
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
    if len(reader.splits.get(split, ())) == 0:
        saved = f" (this run's: alignment={run_dir})" if path.exists() else ""
        have = [s for s, ids in reader.splits.items() if len(ids)]
        raise ValueError(
            f"align_split={split} has no objects in this data set, and the pose metrics need "
            f"a global alignment: pass alignment=<run dir or alignment.json> to reuse a saved "
            f"one{saved}, or align_split=<a split with objects: {', '.join(have)}>"
        )
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


def run(opts: DictConfig) -> dict:
    """Run the whole evaluation (options: ``configs/eval.yaml``); returns the metrics
    dictionary also written to ``metrics_<split>.json``."""
    if not opts.run_dir:
        raise ValueError("run_dir is required: python -m dpc.evaluate run_dir=<dir> split=test")
    check_pose_from(str(opts.pose_from))  # before loading anything
    run_dir = Path(str(opts.run_dir))
    device = resolve_device(str(opts.device))
    loaded = open_run(run_dir, device)  # clear FileNotFoundError without a checkpoint
    model, cfg, step = loaded.model, loaded.cfg, loaded.step
    reader = open_run_data(cfg, opts.data_path, run_dir)
    split = str(opts.split)
    # poses chosen by silhouette get their own folder: the paper's figures stay where they are
    sub = split if opts.pose_from == "student" else f"{split}_pose_{opts.pose_from}"
    out = Path(str(opts.out)) if opts.out else run_dir / "eval" / sub
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
        masks=masks,
        cell_px=(masks.shape[-1] - 1) / max(G - 1, 1),
        chamfer_backend=str(opts.chamfer_backend),
        strict=bool(opts.strict),
        progress=bool(opts.progress),
    )
    res.update(
        run_dir=str(run_dir),
        checkpoint_step=step,
        split=split,
        num_views=V,
        gt_dense=bool(opts.gt_dense),
        pose_from=str(opts.pose_from),
        seconds=None,
    )
    if opts.baselines:
        res["baselines"] = baselines(
            reader,
            split,
            gt,
            res["_valid_gt"],
            preds.predicts_pose,
            bool(opts.gt_dense),
            num_points=int(preds.points.shape[-2]),
        )
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
    if "mean_shape_matched" in b:
        m = b["mean_shape_matched"]
        lines.append(
            f"  mean shape  at the predictions' {m['num_points']} points: precision "
            f"{m['precision']:.3f}  coverage {m['coverage']:.3f}  chamfer {m['chamfer']:.3f}"
        )
    if "pose" in res:
        p = res["pose"]
        lines.append(f"  pose        acc@30 {p['accuracy']:.3f}  median {p['median_deg']:.1f} deg")
        if "mean_view" in b:
            mv = b["mean_view"]
            lines.append(
                f"  mean view   acc@30 {mv['accuracy']:.3f}  median {mv['median_deg']:.1f} deg"
            )
    skipped = res["skipped"]
    if skipped["objects_without_gt"] or skipped["views_with_nan_points"]:
        lines.append(
            f"  SKIPPED: {len(skipped['objects_without_gt'])} objects without GT, "
            f"{len(skipped['views_with_nan_points'])} views with NaN points"
        )
    if "pose_report" in res:
        lines += summary_lines(res["pose_report"])
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """``python -m dpc.evaluate [key=value ...]`` (``argv``: the overrides, default the
    command line)."""
    run_command("eval", run, argv)


if __name__ == "__main__":
    main()
