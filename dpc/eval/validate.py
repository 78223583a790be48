"""Validation: the one function training (every ``val.every`` steps) and evaluation use.

``validate(model, reader, cfg, device)`` scores the first ``val.num_objects`` objects of a
split and returns unprefixed scalars (training logs them as ``val/<name>``):

* ``projection_loss``: the training projection loss (per view, half sum of squares) on
  ``val.views`` fixed views per object, at a fixed sigma (``val.sigma``, default the final
  training sigma) and without point dropout, so values compare across steps and runs.
  Camera supervision renders with the ground-truth poses; pose-predicting runs take, per
  view, the best of the predicted candidates (the training objective; with
  ``model.pose_flip_candidates`` their flips included).
* unless ``val.eval_metrics=false``, the evaluation metrics from a cloud (and pose)
  predicted from every view (docs/CONTRACTS.md, "Evaluation"): ``precision``,
  ``coverage``, ``chamfer`` (x100, docs/METHOD.md 6), ``num_views`` (``nan_views`` when some
  were skipped), and for pose-predicting runs ``pose_accuracy`` (fraction < 30 degrees),
  ``pose_median_deg`` and ``alignment_deg`` (angle of the global alignment rotation, for
  watching the frame drift). Unless an ``alignment`` is given, it is *fitted on the same
  subset* (:func:`fit_alignment`), slightly optimistic compared with
  ``python -m dpc.evaluate`` (alignment on val, scores on test) but tracking progress the
  same way. With an alignment, also the flip-robust figures of
  :func:`dpc.eval.pose_report.pose_report` (``pose_accuracy_robust``,
  ``pose_accuracy_up_to_flip``, ``pose_flipped_share``, ``alignment_ambiguous``, ...; the
  report itself under ``pose_report``, fitted and scored on ``<split>[:n]``), and, with
  several candidates, the flip-robust figures of the candidate chosen by silhouette
  (:func:`silhouette_pose`: ``pose_accuracy_silhouette``, ...; ``dpc.evaluate
  pose_from=silhouette``, not the paper's protocol).

Also returned: ``clouds`` ``[c, N, 3]`` (first view of the first objects, in the
ground-truth frame when aligned) and ``gt_clouds`` ``[c, P, 3]``, for
:func:`dpc.training.logging.wandb_payload`. Costs on 2 CPU cores (16 objects x 5 views,
8000 points): seconds; ICP for pose-predicting runs adds about 1-3 s.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from dpc.camera import quat_angle
from dpc.data import build_batch_sampler
from dpc.eval.alignment import AlignmentResult, estimate_global_alignment
from dpc.eval.metrics import align_points, pose_errors_deg, pose_summary, shape_metrics
from dpc.eval.pose_report import pose_report
from dpc.eval.pose_report import scalars as report_scalars
from dpc.eval.predictions import Predictions, choose_by_silhouette, predict_split
from dpc.eval.score import baselines, valid_gt_mask
from dpc.losses import per_view_l2
from dpc.render import build_renderer, final_sigma


@torch.no_grad()
def validate(
    model,
    reader,
    cfg,
    device="cpu",
    split: str = "val",
    alignment: AlignmentResult | torch.Tensor | None | str = "fit",
    num_clouds: int = 4,
) -> dict:
    """Validation scalars of ``model`` (see the module docstring).

    Args:
        model: a ``DPCModel`` (its train/eval mode is restored afterwards).
        reader: a dataset reader (docs/CONTRACTS.md, "Datasets").
        cfg: the run's training config (``val``, ``render``, ``data``, ``model``, ``seed``).
        alignment: for pose-predicting runs: ``"fit"`` (estimate on this subset), a saved
            :class:`AlignmentResult` or quaternion ``[4]``, or None (no shape metrics for
            such runs, since their frame is arbitrary; pose metrics unaligned).
        num_clouds: predicted clouds returned.
    """
    v = cfg.val
    renderer = build_renderer(cfg)
    sigma = float(v.sigma) if v.sigma is not None else final_sigma(cfg)
    # fixed views per object: those of "step" i of a dedicated sampler, object i
    views = min(int(v.views), reader.num_views)
    sampler = build_batch_sampler(cfg, reader, split, 1, views, int(cfg.seed) + 12345)
    n = min(int(v.num_objects), sampler.n)
    was_training = model.training
    model.eval()
    try:
        res: dict = {
            "projection_loss": _projection_loss(model, sampler, n, renderer, sigma, cfg, device)
        }
        if v.eval_metrics:
            preds = predict_split(
                model,
                reader,
                split,
                int(cfg.data.image_size),
                device,
                max_objects=n,
                renderer=renderer,
                sigma=sigma,
                progress=False,
            )
            res.update(_metrics(preds, reader, split, alignment, num_clouds))
            if (
                "pose_report" in res
                and preds.candidates is not None
                and preds.candidates.shape[2] > 1
            ):
                chosen = choose_by_silhouette(
                    preds, reader.masks(split), renderer, sigma, device
                )  # the predicted clouds and candidates: no second network pass
                res.update(silhouette_pose(chosen, np.asarray(reader.quats(split))[:n]))
    finally:
        if was_training:
            model.train()
    return res


def silhouette_pose(quat: np.ndarray, q_gt: np.ndarray) -> dict[str, float]:
    """Flip-robust pose figures of the candidates chosen by silhouette (``quat [n, V, 4]``,
    ``dpc.evaluate pose_from=silhouette``, a test-time choice that is not the paper's),
    aligned on the same views: ``pose_accuracy_silhouette``,
    ``pose_median_deg_silhouette``, ``pose_accuracy_silhouette_up_to_flip``."""
    rob = pose_report(quat, q_gt, quat, q_gt, None, warn=False)["robust"]
    return {
        "pose_accuracy_silhouette": float(rob["accuracy"]),
        "pose_median_deg_silhouette": float(rob["median_deg"]),
        "pose_accuracy_silhouette_up_to_flip": float(rob["accuracy_up_to_flip"]),
    }


def _projection_loss(model, sampler, n: int, renderer, sigma: float, cfg, device) -> float:
    """Mean over objects ``0..n-1`` of the per-view projection loss (best candidate per
    view), on the views of "step" i of ``sampler`` for object i."""
    G = renderer.settings.vox_size
    losses = []
    for i in range(n):
        b = sampler.views_of(i, sampler.indices(i)[1][0])
        images, masks = b["image"].to(device), b["mask"].to(device)  # [K,3,S,S], [K,G,G]
        K = masks.shape[0]
        if cfg.model.predict_pose:
            out = model(images, shape_index=torch.zeros(1, dtype=torch.long, device=device))
            q = out.pose_candidates  # [K, M, 4]: as training chooses among (flips included)
        else:
            out = model(images[:1])
            q = b["quat"].to(device)[:, None]
        M = q.shape[1]
        pts = out.points.expand(K * M, -1, -1)
        sil = renderer(
            pts, q.reshape(K * M, 4), sigma=sigma, scale=out.scale.expand(K * M)
        ).silhouette
        per = per_view_l2(sil.view(K, M, G, G), masks[:, None])  # [K, M]
        losses.append(per.min(dim=1).values.mean().item())
    return float(np.mean(losses))


def fit_alignment(
    points: np.ndarray, quat: np.ndarray, gt: np.ndarray, q_gt: np.ndarray
) -> AlignmentResult:
    """The global alignment of predictions ``points [n, V, N, 3]``, ``quat [n, V, 4]`` to
    the ground truth ``gt [n, P, 3]``, ``q_gt [n, V, 4]`` (all finite): validation's one
    alignment call."""
    with warnings.catch_warnings():  # fewer than 15 objects is expected here
        warnings.simplefilter("ignore")
        return estimate_global_alignment(points, quat, gt, q_gt, num_objects=min(15, len(points)))


def _metrics(preds: Predictions, reader, split: str, alignment, num_clouds: int) -> dict:
    """Shape (and pose) metrics of ``preds``, with the predicted clouds for wandb."""
    n = preds.points.shape[0]
    gt = np.asarray(reader.gt_points(split))[:n].astype(np.float32)
    q_gt = np.asarray(reader.quats(split))[:n]
    finite = np.isfinite(preds.points).reshape(n, preds.points.shape[1], -1).all(-1)
    res: dict = {}
    if not finite.all():
        warnings.warn(
            f"validate: {int((~finite).sum())} views with NaN points skipped", stacklevel=3
        )
        res["nan_views"] = float((~finite).sum())
    q_al = None
    if preds.predicts_pose:
        if isinstance(alignment, str):
            if alignment != "fit":
                raise ValueError(
                    f"alignment must be 'fit', a quaternion or None, got {alignment!r}"
                )
            ok = finite.all(1)
            if ok.any():
                q_al = fit_alignment(preds.points[ok], preds.quat[ok], gt[ok], q_gt[ok]).tensor()
        elif isinstance(alignment, AlignmentResult):
            q_al = alignment.tensor()
        elif alignment is not None:
            q_al = torch.as_tensor(alignment, dtype=torch.float64)
        # q_gt may be a read-only memmap slice: copy rather than share it with torch
        err = pose_errors_deg(torch.from_numpy(preds.quat), torch.tensor(np.asarray(q_gt)), q_al)
        s = pose_summary(err.numpy())
        res["pose_accuracy"] = s["accuracy"]
        res["pose_median_deg"] = s["median_deg"]
        if q_al is not None:
            ident = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
            res["alignment_deg"] = math.degrees(float(quat_angle(ident, q_al)))
            # the paper's alignment next to the flip-robust one (dpc.eval.pose_report)
            sub = f"{split}[:{n}]"
            rep = pose_report(
                preds.quat,
                q_gt,
                preds.quat,
                q_gt,
                q_al.numpy(),
                fit_subset=sub,
                eval_subset=sub,
                keep_errors=True,
                warn=False,  # the training log's "align" line says it (summary_lines)
            )
            res["pose_report"] = rep
            res.update(report_scalars(rep, prefix=""))
    clouds: list = []
    if not preds.predicts_pose or q_al is not None:
        prec, cov, clouds = _shape_scores(preds.points, gt, finite, q_al, num_clouds)
        if prec is not None:  # (0.0 is a score: the oracle's)
            res["precision"], res["coverage"] = prec, cov
            res["chamfer"] = prec + cov
        if "pose_report" in res:  # the same clouds under the flip-robust (majority) alignment
            q_rob = torch.tensor(res["pose_report"]["robust"]["quat"], dtype=torch.float64)
            prec_r, cov_r, _ = _shape_scores(preds.points, gt, finite, q_rob, 0)
            if prec_r is not None:
                res["chamfer_robust"] = prec_r + cov_r
        ms, ms_n = mean_shape_chamfer(reader, split, gt, num_points=int(preds.points.shape[2]))
        if ms is not None:
            res["mean_shape_chamfer"] = ms
        if ms_n is not None:
            res["mean_shape_chamfer_matched"] = ms_n
    res["num_views"] = float(finite.sum())
    res["clouds"] = (
        np.stack(clouds) if clouds else np.zeros((0, preds.points.shape[2], 3), np.float32)
    )
    res["gt_clouds"] = gt[: len(clouds)]
    return res


def _shape_scores(points, gt, finite, q_al, num_clouds: int):
    """Mean precision and coverage (x100; None, None without any finite view) of the
    predicted clouds ``points [n, V, N, 3]`` against ``gt [n, P, 3]``, rotated into the
    ground-truth frame by ``q_al`` (None: already there), and the first view's cloud of
    the first ``num_clouds`` objects."""
    prec, cov, clouds = [], [], []
    for o in range(points.shape[0]):
        vs = np.nonzero(finite[o])[0]
        if not len(vs):
            continue
        p = torch.from_numpy(points[o, vs])
        if q_al is not None:
            p = align_points(p.double(), q_al).float()
        a, b = shape_metrics(p, torch.from_numpy(gt[o])[None])
        prec += a.tolist()
        cov += b.tolist()
        if len(clouds) < num_clouds:
            clouds.append(p[0].numpy())
    if not prec:
        return None, None, clouds
    return 100 * float(np.mean(prec)), 100 * float(np.mean(cov)), clouds


_MEAN_SHAPE: dict = {}


def mean_shape_chamfer(
    reader, split: str, gt: np.ndarray, num_points: int | None = None
) -> tuple[float | None, float | None]:
    """Chamfer (x100) of the category-mean shape on the clouds ``gt`` of ``split``
    (:func:`dpc.eval.score.baselines`, as ``dpc.evaluate`` reports it), and of the same
    shape at ``num_points`` of its points (``mean_shape_matched``; None when it has no
    more points, or without ``num_points``), computed once per data set and subset
    (about 2 s); (None, None) without train objects."""
    key = (str(getattr(reader, "path", id(reader))), split, len(gt), num_points)
    if key not in _MEAN_SHAPE:
        b = baselines(reader, split, gt, valid_gt_mask(gt), with_pose=False, num_points=num_points)
        _MEAN_SHAPE[key] = tuple(
            b[k]["chamfer"] if k in b else None for k in ("mean_shape", "mean_shape_matched")
        )
    return _MEAN_SHAPE[key]


def summary_lines(metrics: dict, initial: dict | None = None) -> list[str]:
    """The lines a newcomer reads at each validation (pose, shape, alignment; the objects
    seen turned as a whole when there are some; and the pose of the candidates chosen by
    silhouette when there are several), from
    :func:`scalars` of a validation (``initial``: the untrained network's, for the shape
    line). Camera-supervised runs get the shape line only."""
    m, lines = metrics, []
    if "pose_accuracy_robust" in m:
        lines.append(
            f"pose   acc@30 {m['pose_accuracy']:.2f} under the paper's alignment (median "
            f"{m['pose_median_deg']:.0f} deg), {m['pose_accuracy_robust']:.2f} flip-robust "
            f"(median {m['pose_median_deg_robust']:.0f} deg); {m['pose_accuracy_up_to_flip']:.2f}"
            f" right up to a front/back flip ({m['pose_flipped_share']:.2f} flipped)"
        )
    elif "pose_accuracy" in m:
        lines.append(
            f"pose   acc@30 {m['pose_accuracy']:.2f} (median {m['pose_median_deg']:.0f} deg)"
        )
    if m.get("pose_turned_objects"):
        lines.append(turned_line(m))
    if "pose_accuracy_silhouette" in m:
        lines.append(
            f"pose*  acc@30 {m['pose_accuracy_silhouette']:.2f} flip-robust (median "
            f"{m['pose_median_deg_silhouette']:.0f} deg; "
            f"{m['pose_accuracy_silhouette_up_to_flip']:.2f} up to a flip) with, per view, the "
            "candidate that best matches the input's silhouette (test-time, not the paper's)"
        )
    if "chamfer" in m:
        how = "under the paper's alignment" if "pose_accuracy" in m else "(ground-truth frame)"
        line = f"shape  Chamfer x100 {m['chamfer']:.2f} {how}"
        if "chamfer_robust" in m:
            line += f", {m['chamfer_robust']:.2f} flip-robust"
        if "mean_shape_chamfer" in m:
            line += f" | mean shape {m['mean_shape_chamfer']:.2f}"
            if "mean_shape_chamfer_matched" in m:
                line += f" ({m['mean_shape_chamfer_matched']:.2f} at the model's point count)"
        if initial and "chamfer" in initial:
            line += f", untrained {initial['chamfer']:.2f}"
        lines.append(line)
    if "alignment_mode_ratio" in m:
        lines.append(alignment_line(m))
    return lines


def turned_line(m: dict) -> str:
    """Objects seen turned front to back as a whole, in one line (only when there are some:
    :func:`dpc.eval.pose_report.turned_objects`)."""
    line = (
        f"turned {int(m['pose_turned_objects'])} of {int(m['pose_num_objects'])} objects "
        "seen front to back as a whole (most views on the flip: the cloud turned with every "
        "camera renders the same silhouettes)"
    )
    if m.get("pose_accuracy_other_objects") is not None:
        line += f"; acc@30 on the other objects {m['pose_accuracy_other_objects']:.2f}"
    return line


def alignment_line(m: dict) -> str:
    """The alignment's state in one line: one clear mode, or two (and which one the paper's
    alignment read), so an accuracy near 0 is never left unexplained."""
    views = int(m["alignment_fit_views"])
    ratio = m["alignment_mode_ratio"]
    off = m.get("alignment_paper_vs_robust_deg")
    where = ""
    if off is not None and off > 30:
        where = (
            f"; the paper's alignment lies {off:.0f} deg from the robust one"
            + (" (the other mode)" if off > 150 else " (between the modes)")
            + ": its accuracy counts the wrong views, read the flip-robust figure"
        )
    if m.get("alignment_weak"):
        return f"align  no clear mode yet (poses mostly unaligned, of {views} views){where}"
    if m["alignment_ambiguous"]:
        return (
            f"align  AMBIGUOUS: a second mode holds {ratio:.2f} x the first's views "
            f"(of {views}), typically a front/back flip{where}"
        )
    return f"align  one clear mode (second mode {ratio:.2f} x the first, of {views} views){where}"


def scalars(result: dict) -> dict[str, float]:
    """The scalar entries of :func:`validate`'s result."""
    return {k: float(x) for k, x in result.items() if isinstance(x, (int, float))}
