"""Fast CPU nearest neighbour: for each query point, the index of the closest point of its
batch's cloud (what ``torch.cdist(q, p).argmin(-1)`` gives, without the ``[B, S, N]``
distance matrix: one fused pass; measured 1.9x faster than cdist + argmin at a training
size, 40 x 256 queries against 40 x 2000 points, 1 thread, median of 7, 76 vs 148 ms,
on the 2-core machine shared with a training run).

Used by :func:`dpc.losses.depth_coverage` on CPU tensors; no gradient (the caller gathers
the chosen points and differentiates through them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.cpu._jit import HAVE_NUMBA, njit, np_, run_batches


@njit
def _nearest(q, p, out):
    nb, S, _ = q.shape
    N = p.shape[1]
    for b in range(nb):
        pb = p[b]
        for s in range(S):
            qx, qy, qz = q[b, s, 0], q[b, s, 1], q[b, s, 2]
            best = 1e300
            bi = 0
            for n in range(N):
                dx = pb[n, 0] - qx
                dy = pb[n, 1] - qy
                dz = pb[n, 2] - qz
                d = dx * dx + dy * dy + dz * dz
                if d < best:  # strict: the first of equal distances, as argmin
                    best = d
                    bi = n
            out[b, s] = bi


def nearest_index_cpu(q: Tensor, p: Tensor) -> Tensor:
    """``q [B, S, 3]``, ``p [B, N, 3]`` (CPU, same float dtype, N >= 1) -> ``[B, S]`` int64
    index into ``p`` of each query's nearest point (squared Euclidean distance)."""
    if q.dim() != 3 or p.dim() != 3 or q.shape[0] != p.shape[0] or q.shape[-1] != 3:
        raise ValueError(
            f"nearest_index_cpu: q [B, S, 3] and p [B, N, 3], got {tuple(q.shape)} "
            f"and {tuple(p.shape)}"
        )
    if p.shape[1] == 0:
        raise ValueError("nearest_index_cpu: p has no points")
    if not HAVE_NUMBA:
        return torch.cdist(q, p.to(q.dtype)).argmin(-1)
    out = torch.empty(q.shape[:2], dtype=torch.int64)
    if q.numel():
        run_batches(_nearest, q.shape[0], np_(q), np_(p.to(q.dtype)), out.numpy())
    return out
