"""Trivial baselines printed next to the model's numbers.

* Shape: the category-mean shape. Point clouds are unordered, so a per-index mean is
  meaningless and the union of all training clouds is a fat blob that scores well on
  coverage only. We use the **Chamfer medoid** of the training split: the training
  object whose ground-truth cloud has the smallest mean Chamfer distance (precision +
  coverage) to the other training clouds, i.e. the Fréchet mean restricted to the data
  under the evaluation metric itself. It is a real shape in the canonical frame, scored
  against every test object exactly like a prediction (without needing any alignment).
* Pose: "always predict the mean view": the Markley average of all training-view
  ground-truth camera quaternions, used as the prediction for every test view.
"""

from __future__ import annotations

import numpy as np
import torch

from dpc.eval.alignment import markley_average
from dpc.eval.metrics import pose_errors_deg, pose_summary, shape_metrics


def subsample(points: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the ``[P, 3]`` points, drawn without replacement (all of them if P <= n)."""
    if points.shape[0] <= n:
        return points
    idx = np.random.default_rng(seed).choice(points.shape[0], n, replace=False)
    return points[idx]


def chamfer_medoid(
    train_points,  # [n_train, P, 3] ground-truth clouds
    max_objects: int = 64,
    num_points: int = 2000,
    seed: int = 0,
) -> tuple[int, np.ndarray]:
    """Index (into the training split) and full cloud ``[P, 3]`` of the Chamfer medoid.

    At most ``max_objects`` training objects (a fixed random subset) are compared, each
    subsampled to ``num_points`` points, to keep this at a few seconds on 2 CPU cores.
    """
    n = int(train_points.shape[0])
    if n == 0:
        raise ValueError("chamfer_medoid: the training split has no ground-truth clouds")
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    cand = np.sort(rng.choice(n, min(n, max_objects), replace=False))
    clouds = [
        subsample(np.asarray(train_points[i], np.float64), num_points, seed + i) for i in cand
    ]
    # One tree per cloud, queried by every other cloud: k trees + k^2 queries (about 2 s
    # for k = 64, 2000 points) instead of rebuilding trees for every pair.
    trees = [cKDTree(c, balanced_tree=False, compact_nodes=False) for c in clouds]
    k = len(clouds)
    D = np.zeros((k, k))  # D[a, b] = mean distance from cloud a to its nearest points in b
    for a in range(k):
        for b in range(k):
            if a != b:
                D[a, b] = trees[b].query(clouds[a], k=1, workers=-1)[0].mean()
    chamfer = D + D.T  # precision + coverage of a against b
    best = int(cand[int(chamfer.sum(1).argmin())])
    return best, np.asarray(train_points[best], np.float32)


def mean_shape_baseline(
    mean_cloud: np.ndarray,  # [P, 3]
    gt_points,  # [n_obj, P', 3]
    valid: np.ndarray | None = None,  # [n_obj] bool: objects to score
) -> dict:
    """Precision / coverage x100 of the mean shape against each test object."""
    m = torch.from_numpy(np.array(mean_cloud, np.float32))[None]
    prec, cov = [], []
    for i in range(int(gt_points.shape[0])):
        if valid is not None and not valid[i]:
            continue
        p, c = shape_metrics(m, torch.from_numpy(np.array(gt_points[i], np.float32))[None])
        prec.append(float(p[0]) * 100)
        cov.append(float(c[0]) * 100)
    return {
        "precision": float(np.mean(prec)),
        "coverage": float(np.mean(cov)),
        "chamfer": float(np.mean(prec) + np.mean(cov)),
        "num_objects": len(prec),
    }


def mean_view_baseline(train_quats, test_quats) -> dict:
    """Pose metrics of always predicting the Markley mean of the training views."""
    q_mean = markley_average(np.asarray(train_quats).reshape(-1, 4))
    q_gt = torch.as_tensor(np.array(test_quats).reshape(-1, 4), dtype=torch.float64)
    err = pose_errors_deg(torch.from_numpy(q_mean)[None].expand_as(q_gt), q_gt).numpy()
    return {**pose_summary(err), "quat": [float(a) for a in q_mean]}
