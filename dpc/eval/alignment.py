"""Global alignment of an unsupervised model's frame to the ground-truth frame
(docs/METHOD.md, section 6).

For each validation view the rotation ``q_gt^-1 q_pred`` (see :mod:`dpc.eval.metrics`)
initialises point-to-point ICP (open3d, threshold 0.2) of the predicted cloud onto the
ground-truth cloud; per object the 2 views with the lowest ICP RMSE are kept, then the
15 objects with the lowest mean RMSE of those, and the kept rotations are averaged with
Markley's eigenvector method.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpc.camera import matrix_to_quat, quat_conj, quat_mul, quat_normalize, quat_to_matrix


def import_open3d():
    """``open3d`` with ``libusb-1.0`` preloaded (its import needs the shared library)."""
    try:
        import ctypes

        import libusb_package

        ctypes.CDLL(libusb_package.get_library_path(), mode=ctypes.RTLD_GLOBAL)
    except Exception:  # not needed where the system provides libusb
        pass
    import open3d

    return open3d


def markley_average(quats, weights=None) -> np.ndarray:
    """Average unit quaternions ``[K, 4]`` (Markley et al. 2007): the eigenvector of
    ``sum_k w_k q_k q_k^T`` with the largest eigenvalue. Sign-invariant (q ~ -q).
    Returns ``[4]`` with w >= 0."""
    q = np.asarray(quats, dtype=np.float64).reshape(-1, 4)
    if q.shape[0] == 0:
        raise ValueError("markley_average: quats is empty")
    if not np.isfinite(q).all():
        raise ValueError("markley_average: quats contain NaN or inf")
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w = np.ones(len(q)) if weights is None else np.asarray(weights, dtype=np.float64)
    M = (q * w[:, None]).T @ q
    _, vecs = np.linalg.eigh(M)  # ascending eigenvalues
    avg = vecs[:, -1]
    return avg if avg[0] >= 0 else -avg


def icp_rotation(
    pred: np.ndarray,  # [N, 3] predicted cloud (model frame)
    gt: np.ndarray,  # [P, 3] ground-truth cloud
    q_init: np.ndarray,  # [4] initial rotation model frame -> GT frame
    threshold: float = 0.2,
    max_iterations: int = 30,
) -> tuple[np.ndarray, float, float]:
    """Point-to-point ICP of ``pred`` onto ``gt`` from rotation ``q_init``.

    Returns ``(q [4], inlier_rmse, fitness)``; only the rotation of the rigid fit is used
    (objects are centred, so the translation is a small correction). ``rmse`` is ``inf``
    when no point pair lies within ``threshold`` (fitness 0).
    """
    o3d = import_open3d()
    reg = o3d.pipelines.registration
    src = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(pred, np.float64)))
    tgt = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.asarray(gt, np.float64)))
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(torch.as_tensor(q_init, dtype=torch.float64)).numpy()
    res = reg.registration_icp(
        src,
        tgt,
        threshold,
        T,
        reg.TransformationEstimationPointToPoint(),
        reg.ICPConvergenceCriteria(max_iteration=max_iterations),
    )
    R = np.asarray(res.transformation)[:3, :3].copy()
    # project onto SO(3) (the estimate is a rotation up to round-off)
    U, _, Vt = np.linalg.svd(R)
    R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    q = matrix_to_quat(torch.from_numpy(R)).numpy()
    rmse = float(res.inlier_rmse) if res.fitness > 0 else float("inf")
    return q, rmse, float(res.fitness)


@dataclass
class AlignmentResult:
    """The global rotation ``quat`` [w, x, y, z] (model frame -> GT frame) and how it was
    obtained: the kept ``(object, view)`` pairs with their ICP RMSE."""

    quat: list[float]
    kept: list[tuple[int, int]] = field(default_factory=list)
    kept_rmse: list[float] = field(default_factory=list)
    num_views_tried: int = 0
    threshold: float = 0.2
    split: str = "val"
    step: int | None = None  # checkpoint step the alignment was computed for
    dataset: str | None = None  # dataset it was computed on (run config or data_path)
    # the fit views' poses ([K, 4] each) and which subset they are, so the flip-robust
    # alignment (dpc.eval.pose_report) can be computed from a saved file
    fit_q_pred: list | None = None
    fit_q_gt: list | None = None
    fit_subset: str = ""

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> AlignmentResult:
        d = json.loads(Path(path).read_text())
        d["kept"] = [tuple(k) for k in d.get("kept", [])]
        return cls(**d)

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.quat, dtype=torch.float64)


def estimate_global_alignment(
    pred_points,  # [n_obj, V, N, 3] predicted clouds per view (model frame)
    q_pred,  # [n_obj, V, 4] predicted camera quaternions
    gt_points,  # [n_obj, P, 3] ground-truth clouds
    q_gt,  # [n_obj, V, 4] ground-truth camera quaternions
    views_per_object: int = 2,
    num_objects: int = 15,
    threshold: float = 0.2,
    progress: bool = False,
) -> AlignmentResult:
    """Global alignment rotation (model frame -> GT frame) by per-view ICP + Markley.

    Views whose ICP finds no correspondences (RMSE inf) are never kept; fewer objects
    than ``num_objects`` are used (with a warning) if the split is smaller.
    """
    pred_points = np.asarray(pred_points, dtype=np.float32)
    q_pred = torch.as_tensor(np.array(q_pred), dtype=torch.float64)
    q_gt = torch.as_tensor(np.array(q_gt), dtype=torch.float64)
    n_obj, V = pred_points.shape[:2]
    if q_pred.shape[:2] != (n_obj, V) or q_gt.shape[:2] != (n_obj, V):
        raise ValueError(
            f"q_pred {tuple(q_pred.shape)} and q_gt {tuple(q_gt.shape)} must be "
            f"[n_obj={n_obj}, V={V}, 4] like pred_points"
        )
    q_init = quat_normalize(quat_mul(quat_conj(quat_normalize(q_gt)), quat_normalize(q_pred)))
    per_obj = []  # (mean rmse of best views, [(obj, view, q, rmse)])
    it = range(n_obj)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="alignment ICP", unit="obj", disable=None)  # off when not a tty
    for o in it:
        gt = np.asarray(gt_points[o], dtype=np.float64)
        fits = []
        for v in range(V):
            q, rmse, _ = icp_rotation(pred_points[o, v], gt, q_init[o, v].numpy(), threshold)
            if np.isfinite(rmse):
                fits.append((o, v, q, rmse))
        fits.sort(key=lambda f: f[3])
        best = fits[:views_per_object]
        if best:
            per_obj.append((float(np.mean([f[3] for f in best])), best))
    if not per_obj:
        raise ValueError(
            f"global alignment failed: ICP (threshold {threshold}) found no correspondences "
            "in any view; predicted clouds may be empty, degenerate or far off the GT"
        )
    per_obj.sort(key=lambda t: t[0])
    if len(per_obj) < num_objects:
        warnings.warn(
            f"global alignment: only {len(per_obj)} objects usable (< {num_objects})",
            stacklevel=2,
        )
    kept = [f for _, fs in per_obj[:num_objects] for f in fs]
    avg = markley_average(np.stack([f[2] for f in kept]))
    return AlignmentResult(
        quat=[float(a) for a in avg],
        kept=[(int(f[0]), int(f[1])) for f in kept],
        kept_rmse=[float(f[3]) for f in kept],
        num_views_tried=n_obj * V,
        threshold=threshold,
    )
