"""Validation during training: the evaluation metrics on a fixed subset of a split.

``validate(model, reader)`` predicts a cloud (and pose) from every view of the first
``max_objects`` objects of ``split`` and returns scalar metrics keyed ``val/<name>``
(ready for ``wandb.log``) plus the predicted clouds of the first view of a few objects
under ``"clouds"`` (:func:`wandb_payload` turns those into ``wandb.Object3D``):

* ``val/precision``, ``val/coverage``, ``val/chamfer`` (x100, SPEC section 6);
* for runs that predict poses: ``val/pose_accuracy`` (fraction < 30 degrees),
  ``val/pose_median_deg``, and ``val/alignment_deg`` (angle of the global alignment
  rotation, for watching the frame drift). Unless an ``alignment`` is given, it is
  *fitted on the same validation subset* (ICP + Markley, as :mod:`dpc.eval.alignment`),
  which is slightly optimistic compared with ``python -m dpc.evaluate`` (alignment on
  val, scores on test) but tracks progress the same way.

Costs on 2 CPU cores (16 objects x 5 views, 8000 points): seconds; ICP for unsupervised
runs adds about 1-3 s.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from dpc.camera import quat_angle
from dpc.eval.alignment import AlignmentResult, estimate_global_alignment
from dpc.eval.metrics import align_points, pose_errors_deg, pose_summary, shape_metrics
from dpc.eval.predict import predict_split


@torch.no_grad()
def validate(
    model,
    reader,
    split: str = "val",
    max_objects: int = 16,
    device="cpu",
    image_size: int | None = None,
    alignment: AlignmentResult | torch.Tensor | None | str = "fit",
    num_clouds: int = 4,
    gt_dense: bool = False,
    renderer=None,
    sigma: float = 1.0,
) -> dict:
    """Evaluation metrics of ``model`` on the first ``max_objects`` objects of ``split``.

    Args:
        model: a ``DPCModel`` (its train/eval mode is restored afterwards).
        reader: a dataset reader (docs/CONTRACTS.md, "Datasets").
        image_size: network input size; default ``model.encoder.image_size``.
        alignment: for runs predicting poses: ``"fit"`` (estimate on this subset), a saved
            :class:`AlignmentResult` or quaternion ``[4]``, or None (skip shape metrics
            for such runs, since their frame is arbitrary; pose metrics unaligned).
        num_clouds: predicted clouds returned (first view of the first objects).
        renderer, sigma: only to choose among several pose candidates without a student.

    Returns:
        dict with float metrics ``val/...`` (see module docstring), ``val/num_views``,
        and ``clouds``: float32 ``[num_clouds, N, 3]`` (aligned to the GT frame when an
        alignment is used), ``gt_clouds`` ``[num_clouds, P, 3]``.
    """
    if image_size is None:
        image_size = int(model.encoder.image_size)
    preds = predict_split(
        model,
        reader,
        split,
        image_size,
        device,
        max_objects=max_objects,
        renderer=renderer,
        sigma=sigma,
        progress=False,
    )
    n = preds.points.shape[0]
    gt = np.asarray(reader.gt_points(split, dense=gt_dense))[:n].astype(np.float32)
    q_gt = np.asarray(reader.quats(split))[:n]
    finite = np.isfinite(preds.points).reshape(n, preds.points.shape[1], -1).all(-1)
    res: dict = {}
    if not finite.all():
        warnings.warn(
            f"validate: {int((~finite).sum())} views with NaN points skipped", stacklevel=2
        )
        res["val/nan_views"] = float((~finite).sum())
    q_al = None
    if preds.predicts_pose:
        if isinstance(alignment, str):
            if alignment != "fit":
                raise ValueError(
                    f"alignment must be 'fit', a quaternion or None, got {alignment!r}"
                )
            ok = finite.all(1)
            if ok.any():
                with warnings.catch_warnings():  # fewer than 15 objects is expected here
                    warnings.simplefilter("ignore")
                    al = estimate_global_alignment(
                        preds.points[ok],
                        preds.quat[ok],
                        gt[ok],
                        q_gt[ok],
                        num_objects=min(15, int(ok.sum())),
                    )
                q_al = al.tensor()
        elif isinstance(alignment, AlignmentResult):
            q_al = alignment.tensor()
        elif alignment is not None:
            q_al = torch.as_tensor(alignment, dtype=torch.float64)
        # q_gt may be a read-only memmap slice: copy rather than share it with torch
        err = pose_errors_deg(torch.from_numpy(preds.quat), torch.tensor(np.asarray(q_gt)), q_al)
        s = pose_summary(err.numpy())
        res["val/pose_accuracy"] = s["accuracy"]
        res["val/pose_median_deg"] = s["median_deg"]
        if q_al is not None:
            ident = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
            res["val/alignment_deg"] = math.degrees(float(quat_angle(ident, q_al)))
            from dpc.eval.pose_report import pose_report, scalars  # robust + flips (#15)

            sub = f"{split}[:{n}]"
            res["pose_report"] = pose_report(
                preds.quat,
                q_gt,
                preds.quat,
                q_gt,
                q_al.numpy(),
                fit_subset=sub,
                eval_subset=sub,
                keep_errors=True,
            )
            res.update(scalars(res["pose_report"]))
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
            res["val/precision"] = 100 * float(np.mean(prec))
            res["val/coverage"] = 100 * float(np.mean(cov))
            res["val/chamfer"] = res["val/precision"] + res["val/coverage"]
    res["val/num_views"] = float(finite.sum())
    res["clouds"] = (
        np.stack(clouds) if clouds else np.zeros((0, preds.points.shape[2], 3), np.float32)
    )
    res["gt_clouds"] = gt[: len(clouds)]
    return res


def wandb_payload(result: dict, wandb_module=None, max_points: int = 4000) -> dict:
    """``validate``'s result as a ``wandb.log`` dict: the scalars, plus each returned cloud
    as ``val/cloud_<i>`` ``wandb.Object3D`` (prediction in red next to the GT in grey,
    shifted by +1 along x), subsampled to ``max_points`` points each."""
    if wandb_module is None:
        import wandb as wandb_module
    out = {k: v for k, v in result.items() if k.startswith("val/")}
    rng = np.random.default_rng(0)
    for i, cloud in enumerate(result.get("clouds", [])):
        gt = result["gt_clouds"][i]
        sel = lambda a: a[rng.choice(len(a), min(len(a), max_points), replace=False)]  # noqa: E731
        p, g = sel(cloud), sel(gt) + np.array([1.0, 0.0, 0.0], np.float32)
        rgb = np.concatenate(
            [np.tile([230, 60, 50], (len(p), 1)), np.tile([150, 150, 150], (len(g), 1))]
        )
        pts = np.concatenate([np.concatenate([p, g]), rgb], 1)
        out[f"val/cloud_{i}"] = wandb_module.Object3D(pts)
    return out
