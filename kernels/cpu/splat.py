"""Fast CPU splat: one numba pass over the points, forward and backward.

Each point scatters its 8 trilinear corner weights (and features) straight into the
output volume: no ``[B, N]`` masks, index tensors or per-corner ``index_add`` copies as in
:func:`kernels.reference.splat_points_ref`. The backward gathers the 8 corner gradients
per point. Same definition as the reference: points with any coordinate outside
``[-0.5, 0.5]`` (or NaN) are dropped, corners beyond the last cell (reached with weight 0
by points exactly on the far face) are skipped in both passes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kernels.cpu._jit import HAVE_NUMBA, njit, np_, run_batches, scalar
from kernels.reference import splat_points_ref


@njit
def _splat_fwd(points, feats, occ, fvol, D, H, W, one, half, fD, fH, fW):
    """points [b, N, 3], feats [b, N, C] -> occ [b, D*H*W] and fvol [b, C, D*H*W]
    (both zero on entry, accumulated). ``one``, ``half`` and ``fD = D - 1`` etc. come
    typed as the points' dtype, so float32 inputs are computed in float32 as in the
    reference."""
    nb, N, _ = points.shape
    C = feats.shape[2]
    HW = H * W
    for b in range(nb):
        ob = occ[b]
        for n in range(N):
            x0 = points[b, n, 0]
            x1 = points[b, n, 1]
            x2 = points[b, n, 2]
            # Written so that NaN fails the test and is dropped, as in the reference.
            if not (
                x0 >= -half
                and x0 <= half
                and x1 >= -half
                and x1 <= half
                and x2 >= -half
                and x2 <= half
            ):
                continue
            # u = (c + 0.5) * (S - 1): add, then multiply, as the reference.
            u0 = (x0 + half) * fD
            u1 = (x1 + half) * fH
            u2 = (x2 + half) * fW
            f0 = np.floor(u0)
            f1 = np.floor(u1)
            f2 = np.floor(u2)
            r0 = u0 - f0
            r1 = u1 - f1
            r2 = u2 - f2
            q0 = one - r0
            q1 = one - r1
            q2 = one - r2
            # Unsigned indices: numba then skips its negative-index wrap-around code.
            i0 = np.uint64(f0)
            j0 = np.uint64(f1)
            k0 = np.uint64(f2)
            if C == 0 and i0 + 1 < D and j0 + 1 < H and k0 + 1 < W:
                # Interior point (almost all of them): the 8 corners unrolled,
                # weights associated (w0 * w1) * w2 as in the reference.
                w00 = q0 * q1
                w01 = q0 * r1
                w10 = r0 * q1
                w11 = r0 * r1
                i = (i0 * H + j0) * W + k0
                ob[i] += w00 * q2
                ob[i + 1] += w00 * r2
                ob[i + W] += w01 * q2
                ob[i + W + 1] += w01 * r2
                i += HW
                ob[i] += w10 * q2
                ob[i + 1] += w10 * r2
                ob[i + W] += w11 * q2
                ob[i + W + 1] += w11 * r2
                continue
            for a in range(2):
                i = i0 + a
                if i >= D:
                    continue  # a corner beyond the far face (weight 0): skipped
                w0 = r0 if a == 1 else q0
                for bb in range(2):
                    j = j0 + bb
                    if j >= H:
                        continue
                    w01 = w0 * (r1 if bb == 1 else q1)
                    row = (i * H + j) * W
                    for c in range(2):
                        k = k0 + c
                        if k >= W:
                            continue
                        w = w01 * (r2 if c == 1 else q2)
                        idx = row + k
                        ob[idx] += w
                        for ch in range(C):
                            fvol[b, ch, idx] += w * feats[b, n, ch]


@njit
def _splat_bwd(points, feats, g_occ, g_fvol, g_points, g_feats, D, H, W, one, half, fD, fH, fW):
    """Gradients of :func:`_splat_fwd`: g_occ [b, DHW], g_fvol [b, C, DHW] ->
    g_points [b, N, 3] and g_feats [b, N, C] (written, not accumulated)."""
    nb, N, _ = points.shape
    C = feats.shape[2]
    HW = H * W
    zero = one - one
    for b in range(nb):
        gob = g_occ[b]
        for n in range(N):
            for ch in range(C):
                g_feats[b, n, ch] = zero
            x0 = points[b, n, 0]
            x1 = points[b, n, 1]
            x2 = points[b, n, 2]
            if not (
                x0 >= -half
                and x0 <= half
                and x1 >= -half
                and x1 <= half
                and x2 >= -half
                and x2 <= half
            ):
                g_points[b, n, 0] = zero
                g_points[b, n, 1] = zero
                g_points[b, n, 2] = zero
                continue
            u0 = (x0 + half) * fD
            u1 = (x1 + half) * fH
            u2 = (x2 + half) * fW
            f0 = np.floor(u0)
            f1 = np.floor(u1)
            f2 = np.floor(u2)
            r0 = u0 - f0
            r1 = u1 - f1
            r2 = u2 - f2
            q0 = one - r0
            q1 = one - r1
            q2 = one - r2
            i0 = np.uint64(f0)
            j0 = np.uint64(f1)
            k0 = np.uint64(f2)
            if C == 0 and i0 + 1 < D and j0 + 1 < H and k0 + 1 < W:
                i = (i0 * H + j0) * W + k0
                c000 = gob[i]
                c001 = gob[i + 1]
                c010 = gob[i + W]
                c011 = gob[i + W + 1]
                i += HW
                c100 = gob[i]
                c101 = gob[i + 1]
                c110 = gob[i + W]
                c111 = gob[i + W + 1]
                # d/dr of sum_corners w * g, grouped by differences along each axis.
                g0 = q1 * (q2 * (c100 - c000) + r2 * (c101 - c001)) + r1 * (
                    q2 * (c110 - c010) + r2 * (c111 - c011)
                )
                g1 = q0 * (q2 * (c010 - c000) + r2 * (c011 - c001)) + r0 * (
                    q2 * (c110 - c100) + r2 * (c111 - c101)
                )
                g2 = q0 * (q1 * (c001 - c000) + r1 * (c011 - c010)) + r0 * (
                    q1 * (c101 - c100) + r1 * (c111 - c110)
                )
                g_points[b, n, 0] = g0 * fD
                g_points[b, n, 1] = g1 * fH
                g_points[b, n, 2] = g2 * fW
                continue
            g0 = zero
            g1 = zero
            g2 = zero
            for a in range(2):
                i = i0 + a
                if i >= D:
                    continue  # skipped in the forward, so no gradient either
                w0 = r0 if a == 1 else q0
                s0 = one if a == 1 else -one
                for bb in range(2):
                    j = j0 + bb
                    if j >= H:
                        continue
                    w1 = r1 if bb == 1 else q1
                    s1 = one if bb == 1 else -one
                    row = (i * H + j) * W
                    for c in range(2):
                        k = k0 + c
                        if k >= W:
                            continue
                        w2 = r2 if c == 1 else q2
                        s2 = one if c == 1 else -one
                        idx = row + k
                        g = gob[idx]
                        if C > 0:
                            w = w0 * w1 * w2
                            for ch in range(C):
                                gf = g_fvol[b, ch, idx]
                                g += feats[b, n, ch] * gf
                                g_feats[b, n, ch] += w * gf
                        g0 += s0 * (w1 * w2) * g
                        g1 += s1 * (w0 * w2) * g
                        g2 += s2 * (w0 * w1) * g
            g_points[b, n, 0] = g0 * fD
            g_points[b, n, 1] = g1 * fH
            g_points[b, n, 2] = g2 * fW


def _no_feats(points: Tensor) -> np.ndarray:
    dt = np.float32 if points.dtype == torch.float32 else np.float64
    return np.empty((points.shape[0], points.shape[1], 0), dtype=dt)


def _params(points: Tensor, D: int, H: int, W: int) -> tuple:
    """Sizes and the constants typed as the points' dtype (see :func:`_splat_fwd`)."""
    c = [scalar(points, v) for v in (1.0, 0.5, D - 1, H - 1, W - 1)]
    return (D, H, W, *c)


class SplatPointsCPU(torch.autograd.Function):
    """Autograd glue for the numba splat. Saves only the inputs."""

    @staticmethod
    def forward(ctx, points: Tensor, features: Tensor | None, size: tuple[int, int, int]):
        D, H, W = size
        B, N, _ = points.shape
        C = 0 if features is None else features.shape[2]
        occ = points.new_zeros(B, 1, D, H, W)
        feat = points.new_zeros(B, C, D, H, W) if features is not None else None
        pts = np_(points)
        fts = np_(features) if features is not None else _no_feats(points)
        if feat is not None:
            fvol = np_(feat).reshape(B, C, D * H * W)
        else:
            fvol = np.empty((1, 0, 1), pts.dtype)
        if B * N > 0:
            run_batches(
                _splat_fwd,
                B,
                pts,
                fts,
                np_(occ).reshape(B, D * H * W),
                fvol,
                extra=_params(points, D, H, W),
            )
        ctx.save_for_backward(points, features)
        ctx.size = size
        if feat is None:
            return occ
        return occ, feat

    @staticmethod
    def backward(ctx, g_occ: Tensor, g_feat: Tensor | None = None):
        points, features = ctx.saved_tensors
        D, H, W = ctx.size
        B, N, _ = points.shape
        C = 0 if features is None else features.shape[2]
        # Fresh contiguous buffers (empty_like would copy a non-contiguous layout).
        g_points = points.new_empty(points.shape)
        g_features = features.new_empty(features.shape) if features is not None else None
        if g_occ is None:
            g_occ = points.new_zeros(B, 1, D, H, W)
        if features is not None and g_feat is None:
            g_feat = points.new_zeros(B, C, D, H, W)
        pts = np_(points)
        if features is not None:
            fts, gf, gfe = np_(features), np_(g_feat).reshape(B, C, -1), np_(g_features)
        else:
            fts = _no_feats(points)
            gf, gfe = np.empty((1, 0, 1), pts.dtype), fts
        if B * N > 0:
            run_batches(
                _splat_bwd,
                B,
                pts,
                fts,
                np_(g_occ).reshape(B, D * H * W),
                gf,
                np_(g_points),
                gfe,
                extra=_params(points, D, H, W),
            )
        return g_points, g_features, None


def splat_points_cpu(
    points: Tensor,  # [B, N, 3]
    size: tuple[int, int, int],
    features: Tensor | None = None,  # [B, N, C]
) -> tuple[Tensor, Tensor | None]:
    """CPU path of :func:`kernels.splat_points` (validated inputs): occupancy
    ``[B, 1, D, H, W]`` and feature sums ``[B, C, D, H, W]`` (or None)."""
    if not HAVE_NUMBA:
        return splat_points_ref(points, size, features)
    size = tuple(int(s) for s in size)
    if features is None:
        return SplatPointsCPU.apply(points, None, size), None
    occ, feat = SplatPointsCPU.apply(points, features, size)
    return occ, feat
