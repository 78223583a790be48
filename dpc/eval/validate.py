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
  report itself under ``pose_report``, fitted and scored on ``<split>[:n]``).

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
from dpc.eval.predictions import Predictions, predict_split
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
    finally:
        if was_training:
            model.train()
    return res


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
            )
            res["pose_report"] = rep
            res.update(report_scalars(rep, prefix=""))
    clouds = []
    if not preds.predicts_pose or q_al is not None:
        prec, cov = [], []
        for o in range(n):
            vs = np.nonzero(finite[o])[0]
            if not len(vs):
                continue
            p = torch.from_numpy(preds.points[o, vs])
            if q_al is not None:
                p = align_points(p.double(), q_al).float()
            a, b = shape_metrics(p, torch.from_numpy(gt[o])[None])
            prec += a.tolist()
            cov += b.tolist()
            if len(clouds) < num_clouds:
                clouds.append(p[0].numpy())
        if prec:
            res["precision"] = 100 * float(np.mean(prec))
            res["coverage"] = 100 * float(np.mean(cov))
            res["chamfer"] = res["precision"] + res["coverage"]
    res["num_views"] = float(finite.sum())
    res["clouds"] = (
        np.stack(clouds) if clouds else np.zeros((0, preds.points.shape[2], 3), np.float32)
    )
    res["gt_clouds"] = gt[: len(clouds)]
    return res


def scalars(result: dict) -> dict[str, float]:
    """The scalar entries of :func:`validate`'s result."""
    return {k: float(x) for k, x in result.items() if isinstance(x, (int, float))}


