"""Shape and pose metrics (docs/METHOD.md, section 6).

Frames and quaternions (docs/CONTRACTS.md): a camera quaternion maps object-frame points
to the camera frame. An unsupervised model predicts a shape ``P_pred`` in a frame of its
own choosing and poses ``q_pred`` mapping *that* frame to the camera. If ``q_a`` rotates
the predicted frame onto the ground-truth frame (``P_gt ~ q_a P_pred q_a^-1``), the same
camera sees ``q_pred P_pred = q_gt P_gt = q_gt q_a P_pred``, so per view

    q_a = q_gt^-1 q_pred     and the aligned pose is  q_pred q_a^-1  (maps GT frame -> camera).

The pose error of a view is the angle of ``q_gt^-1 (q_pred q_a^-1)``; the shape is scored
after rotating the predicted points by ``q_a``.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from dpc.camera import deg, quat_angle, quat_conj, quat_mul, quat_normalize
from kernels import chamfer_distance


def shape_metrics(
    pred: Tensor,  # [B, N, 3]
    gt: Tensor,  # [B, P, 3] (or [1, P, 3], broadcast to B)
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Precision (mean pred->gt nearest distance) and coverage (mean gt->pred) ``[B]`` each,
    Euclidean, not squared, not x100."""
    d = _nn_distances(pred, gt, backend)
    return d.x_to_y.mean(1), d.y_to_x.mean(1)


def _nn_distances(pred: Tensor, gt: Tensor, backend: str):
    """Nearest-neighbour distances both ways (Euclidean), ``gt [1, P, 3]`` broadcast to B."""
    if gt.shape[0] == 1 and pred.shape[0] > 1:
        gt = gt.expand(pred.shape[0], -1, -1)
    return chamfer_distance(pred, gt.to(pred.dtype), squared=False, backend=backend)


# Diagnostics (not the paper's metric): a predicted point farther than this from every
# ground-truth point is "far" (10% of the object's bounding-box diagonal under the default
# normalisation), and precision is also reported over each view's nearest 95% of points.
FAR_DISTANCE = 0.1
TRIM_KEEP = 0.95


def shape_metrics_detailed(
    pred: Tensor,  # [B, N, 3]
    gt: Tensor,  # [B, P, 3] (or [1, P, 3])
    backend: str = "auto",
    outside: Tensor | None = None,  # [B, N] bool, from :func:`outside_silhouettes`
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """:func:`shape_metrics` plus per-view diagnostics ``[B]`` each: ``far_fraction``
    (share of predicted points farther than :data:`FAR_DISTANCE` from the ground truth) and
    ``precision_near95`` (precision over the nearest :data:`TRIM_KEEP` of the points), to
    tell stray points from a uniformly offset cloud; with ``outside`` also
    ``outside_fraction`` (share of points outside some silhouette) and
    ``far_outside_fraction`` (share of points both far and outside). Not x100."""
    d = _nn_distances(pred, gt, backend)
    x = d.x_to_y
    keep = max(1, int(round(TRIM_KEEP * x.shape[1])))
    far = x > FAR_DISTANCE
    diag = {
        "far_fraction": far.to(x.dtype).mean(1),
        "precision_near95": x.sort(dim=1).values[:, :keep].mean(1),
    }
    if outside is not None:
        diag["outside_fraction"] = outside.to(x.dtype).mean(1)
        diag["far_outside_fraction"] = (outside & far).to(x.dtype).mean(1)
    return x.mean(1), d.y_to_x.mean(1), diag


def outside_silhouettes(
    points: Tensor,  # [B, N, 3] ground-truth frame
    distance: Tensor,  # [V, S, S] distance maps of the object's masks, pixels
    quats: Tensor,  # [V, 4] ground-truth cameras of those masks
    tolerance_px: float,
) -> Tensor:
    """``[B, N]`` bool: points whose projection lies more than ``tolerance_px`` pixels
    outside at least one of the object's ``V`` silhouettes (a diagnostic: such points
    contradict a training signal; a point inside every silhouette may still be wrong)."""
    from dpc.camera import world_to_grid
    from dpc.losses import point_silhouette_distances

    B, N, _ = points.shape
    V = quats.shape[0]
    # every view projects all B*N points at once: no per-cloud copies of the V maps
    grid = world_to_grid(points.reshape(1, B * N, 3).expand(V, -1, -1), quats.to(points.dtype))
    d = point_silhouette_distances(grid, distance.to(points.dtype))  # [V, B*N]
    return d.amax(0).view(B, N) > tolerance_px


def align_points(points: Tensor, q_align: Tensor) -> Tensor:
    """Rotate predicted points ``[B, N, 3]`` into the ground-truth frame by ``q_align [4]``."""
    from dpc.camera import quat_rotate

    q = quat_normalize(q_align.to(points.dtype)).expand(points.shape[0], 4)
    return quat_rotate(q, points)


def aligned_pose(q_pred: Tensor, q_align: Tensor | None) -> Tensor:
    """Predicted camera quaternions ``[..., 4]`` re-expressed for the ground-truth frame:
    ``q_pred q_align^-1`` (identity alignment when ``q_align`` is None)."""
    if q_align is None:
        return quat_normalize(q_pred)
    return quat_normalize(quat_mul(quat_normalize(q_pred), quat_conj(quat_normalize(q_align))))


def pose_errors_deg(q_pred: Tensor, q_gt: Tensor, q_align: Tensor | None = None) -> Tensor:
    """Angular errors ``[...]`` in degrees: angle of ``q_gt^-1 (q_pred q_align^-1)``."""
    return deg(quat_angle(q_gt.double(), aligned_pose(q_pred.double(), q_align)))


def pose_summary(errors_deg: np.ndarray | Tensor, threshold_deg: float = 30.0) -> dict[str, float]:
    """``{"accuracy": fraction of errors < threshold, "median_deg": median error}``."""
    e = np.asarray(errors_deg, dtype=np.float64).reshape(-1)
    if e.size == 0:
        raise ValueError("pose_summary: no pose errors to summarise (empty input)")
    if not np.isfinite(e).all():
        raise ValueError("pose_summary: pose errors contain NaN or inf")
    return {"accuracy": float((e < threshold_deg).mean()), "median_deg": float(np.median(e))}
