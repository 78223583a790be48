"""Scoring a split's predictions (docs/METHOD.md, section 6): shape and pose metrics per object and
view with skipped views counted, and the mean-shape / mean-view baselines."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from dpc.data.images import mask_distance_maps
from dpc.eval.alignment import AlignmentResult
from dpc.eval.baselines import (
    chamfer_medoid,
    mean_shape_baseline,
    mean_view_baseline,
    subsample,
)
from dpc.eval.metrics import (
    FAR_DISTANCE,
    TRIM_KEEP,
    align_points,
    outside_silhouettes,
    pose_errors_deg,
    pose_summary,
    shape_metrics_detailed,
)
from dpc.eval.predictions import Predictions


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


def has_quat(q: np.ndarray) -> np.ndarray:
    """``[..., 4]`` -> ``[...]`` bool: a usable ground-truth quaternion (finite, and not
    all zero, which is how a missing pose shows up in an array file)."""
    return np.isfinite(q).all(-1) & (np.abs(np.nan_to_num(q)).sum(-1) > 0)


def _skip_or_raise(msg: str, strict: bool) -> None:
    if strict:
        raise ValueError(msg.split(" (skipped")[0])
    warnings.warn(msg, stacklevel=3)


def _usable(preds: Predictions, gt: np.ndarray, strict: bool):
    """``(objects with usable ground truth [n_obj], views with finite points [n_obj, V],
    the skipped (object id, view) pairs)``, with a warning (``strict``: an error) for each
    kind of skip."""
    n_obj, V = preds.points.shape[:2]
    valid_gt = valid_gt_mask(gt)
    finite = np.isfinite(preds.points).reshape(n_obj, V, -1).all(-1)  # [n_obj, V]
    ids = preds.object_ids
    if not valid_gt.all():
        bad = [ids[i] for i in np.nonzero(~valid_gt)[0]]
        msg = f"{len(bad)} object(s) without usable ground truth: {bad[:10]}"
        _skip_or_raise(msg + " (skipped, counted in 'skipped')", strict)
    nan_views = [(ids[o], int(v)) for o, v in zip(*np.nonzero(~finite)) if valid_gt[o]]
    if nan_views:
        msg = f"{len(nan_views)} view(s) with NaN/inf predicted points: {nan_views[:10]}"
        _skip_or_raise(msg + " (skipped, counted in 'skipped')", strict)
    return valid_gt, finite, nan_views


def _outside(points, masks, q_gt, cell_px: float):
    """Which of ``points [V, N, 3]`` (canonical frame) project more than ``cell_px``
    outside one of the object's GT silhouettes ``masks`` (uint8 ``[V, S, S]``), under its
    GT poses ``q_gt [V, 4]``; None without GT poses."""
    cams = has_quat(q_gt)
    if not cams.any():
        return None
    m = torch.from_numpy(np.array(masks[cams], np.float32) / 255.0)
    q = torch.from_numpy(np.array(q_gt[cams], np.float32))
    return outside_silhouettes(points, mask_distance_maps(m, m.shape[-1]), q, cell_px)


def _shape_row(p, gt_o, outside, backend: str) -> dict:
    """The shape metrics of one object's views ``p [v, N, 3]`` against its ground truth:
    precision and coverage (x100), the far and trimmed diagnostics, and with ``outside``
    the silhouette diagnostic (``_far_outside_fraction``: for the totals only)."""
    gt_t = torch.from_numpy(np.array(gt_o, np.float32))[None]
    prec, cov, diag = shape_metrics_detailed(p, gt_t, backend=backend, outside=outside)
    row = {
        "precision": (prec * 100).tolist(),
        "coverage": (cov * 100).tolist(),
        "far_fraction": diag["far_fraction"].tolist(),
        "precision_near95": (diag["precision_near95"] * 100).tolist(),
    }
    if outside is not None:
        row["outside_fraction"] = diag["outside_fraction"].tolist()
        row["_far_outside_fraction"] = diag["far_outside_fraction"].tolist()
    return row


def score(
    preds: Predictions,
    gt: np.ndarray,
    q_gt: np.ndarray,
    al: AlignmentResult | None,
    masks: np.ndarray | None = None,
    cell_px: float = 1.0,
    chamfer_backend: str = "auto",
    strict: bool = False,
    progress: bool = False,
) -> dict:
    """Shape (and pose) metrics per object and view, with skipped views counted.

    ``masks`` (uint8 ``[n_obj, V, S, S]``, optional) adds the silhouette diagnostic: the
    share of predicted points projecting more than ``cell_px`` pixels (one renderer
    cell) outside at least one of the object's ground-truth silhouettes."""
    valid_gt, finite, nan_views = _usable(preds, gt, strict)
    ids = preds.object_ids
    q_al = al.tensor() if al is not None else None
    per_obj = []
    prec_all, cov_all, pose_all, bad_pose = [], [], [], []
    far_all, trim_all, out_all, far_out_all = [], [], [], []
    it = range(len(valid_gt))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="score", unit="obj", disable=None)  # off when not a tty
    for o in it:
        if not valid_gt[o]:
            continue
        vs = np.nonzero(finite[o])[0]
        row = {"object_id": ids[o], "views": vs.tolist()}
        if len(vs):
            p = torch.from_numpy(preds.points[o, vs])
            if q_al is not None:
                p = align_points(p.double(), q_al).float()
            outside = None if masks is None else _outside(p, masks[o], q_gt[o], cell_px)
            row.update(_shape_row(p, gt[o], outside, chamfer_backend))
            prec_all += row["precision"]
            cov_all += row["coverage"]
            far_all += row["far_fraction"]
            trim_all += row["precision_near95"]
            if outside is not None:
                out_all += row["outside_fraction"]
                far_out_all += row.pop("_far_outside_fraction")
        if preds.predicts_pose:
            ok = np.isfinite(preds.quat[o]).all(-1) & has_quat(q_gt[o])
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
        _skip_or_raise(msg + " (skipped in the pose metrics, counted in 'skipped')", strict)
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


def baselines(
    reader,
    split,
    gt,
    valid_gt,
    with_pose: bool,
    gt_dense: bool = False,
    num_points: int | None = None,
) -> dict:
    """Mean-shape (Chamfer medoid of train) and mean-view baselines on the same objects.

    With ``num_points`` (the predictions' points per cloud) fewer than the medoid's, also
    ``mean_shape_matched``: the same medoid subsampled to ``num_points``. Coverage
    depends on the point count (a GT point's nearest predicted point is farther in a
    sparser cloud), so this is the like-for-like comparison; ``mean_shape`` stays the
    reference the targets are stated against."""
    out = {}
    if "train" not in reader.splits or len(reader.splits["train"]) == 0:
        out["note"] = "no train objects in this data set: baselines skipped"
        warnings.warn(out["note"], stacklevel=2)
        return out
    train_gt = load_gt(reader, "train", gt_dense)
    tv = valid_gt_mask(train_gt)
    if not tv.any():
        out["note"] = "no train object with ground truth: baselines skipped"
        warnings.warn(out["note"], stacklevel=2)
        return out
    idx, cloud = chamfer_medoid(train_gt[tv])
    out["mean_shape"] = {
        **mean_shape_baseline(cloud, gt, valid_gt),
        "definition": "Chamfer medoid of the training ground-truth clouds",
        "train_object": reader.splits["train"][int(np.nonzero(tv)[0][idx])],
    }
    if num_points is not None and 0 < num_points < cloud.shape[0]:
        sub = subsample(cloud, num_points, seed=0)
        out["mean_shape_matched"] = {
            **mean_shape_baseline(sub, gt, valid_gt),
            "definition": (
                f"the same medoid, {num_points} of its {cloud.shape[0]} points drawn at random "
                "(seed 0): the predictions' point count"
            ),
            "num_points": int(num_points),
        }
    if with_pose:
        q_gt = np.asarray(reader.quats(split))[: len(gt)][valid_gt]
        out["mean_view"] = {
            **mean_view_baseline(reader.quats("train"), q_gt),
            "definition": "Markley mean of the training camera quaternions",
        }
    return out
