"""Fast CPU rotation + perspective of point clouds (the renderer's first step).

``grid = (a, -f u / (a + d), f v / (a + d))`` with ``(a, u, v) = R p + t``: what
:func:`dpc.camera.world_to_grid` computes, in one numba pass per direction instead of a
``bmm`` with 3x3 matrices (slow for K = 3 in BLAS) plus element-wise passes and their
autograd copies. Backward, with ``s = a + d`` and ``inv = f / s``:
``dL/da = g0 - (g1 grid1 + g2 grid2) / s``, ``dL/du = -g1 inv``, ``dL/dv = g2 inv``; then
``dL/dp = R^T dL/dp'``, ``dL/dR = sum_n dL/dp' p^T``, ``dL/dt = sum_n dL/dp'``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.cpu._jit import njit, np_, run_batches, scalar


@njit
def _fwd(points, R, t, out, d, f):
    nb, N, _ = points.shape
    for b in range(nb):
        r00, r01, r02 = R[b, 0, 0], R[b, 0, 1], R[b, 0, 2]
        r10, r11, r12 = R[b, 1, 0], R[b, 1, 1], R[b, 1, 2]
        r20, r21, r22 = R[b, 2, 0], R[b, 2, 1], R[b, 2, 2]
        t0, t1, t2 = t[b, 0], t[b, 1], t[b, 2]
        pb = points[b]
        ob = out[b]
        for n in range(N):
            x, y, z = pb[n, 0], pb[n, 1], pb[n, 2]
            a = r00 * x + r01 * y + r02 * z + t0
            u = r10 * x + r11 * y + r12 * z + t1
            v = r20 * x + r21 * y + r22 * z + t2
            inv = f / (a + d)
            ob[n, 0] = a
            ob[n, 1] = -u * inv
            ob[n, 2] = v * inv


@njit
def _bwd(points, R, t, g, g_points, g_R, g_t, d, f):
    nb, N, _ = points.shape
    for b in range(nb):
        r00, r01, r02 = R[b, 0, 0], R[b, 0, 1], R[b, 0, 2]
        r10, r11, r12 = R[b, 1, 0], R[b, 1, 1], R[b, 1, 2]
        r20, r21, r22 = R[b, 2, 0], R[b, 2, 1], R[b, 2, 2]
        t0, t1, t2 = t[b, 0], t[b, 1], t[b, 2]
        # Sums over the points in float64 (N terms).
        s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = 0.0
        st0 = st1 = st2 = 0.0
        pb = points[b]
        gb = g[b]
        gpb = g_points[b]
        for n in range(N):
            x, y, z = pb[n, 0], pb[n, 1], pb[n, 2]
            a = r00 * x + r01 * y + r02 * z + t0
            u = r10 * x + r11 * y + r12 * z + t1
            v = r20 * x + r21 * y + r22 * z + t2
            s = a + d
            inv = f / s
            g0, g1, g2 = gb[n, 0], gb[n, 1], gb[n, 2]
            ga = g0 - (g1 * (-u * inv) + g2 * (v * inv)) / s
            gu = -g1 * inv
            gv = g2 * inv
            gpb[n, 0] = r00 * ga + r10 * gu + r20 * gv
            gpb[n, 1] = r01 * ga + r11 * gu + r21 * gv
            gpb[n, 2] = r02 * ga + r12 * gu + r22 * gv
            s00 += ga * x
            s01 += ga * y
            s02 += ga * z
            s10 += gu * x
            s11 += gu * y
            s12 += gu * z
            s20 += gv * x
            s21 += gv * y
            s22 += gv * z
            st0 += ga
            st1 += gu
            st2 += gv
        g_R[b, 0, 0], g_R[b, 0, 1], g_R[b, 0, 2] = s00, s01, s02
        g_R[b, 1, 0], g_R[b, 1, 1], g_R[b, 1, 2] = s10, s11, s12
        g_R[b, 2, 0], g_R[b, 2, 1], g_R[b, 2, 2] = s20, s21, s22
        g_t[b, 0], g_t[b, 1], g_t[b, 2] = st0, st1, st2


class RotateProjectCPU(torch.autograd.Function):
    """Autograd glue for :func:`_fwd` / :func:`_bwd`. Saves only the inputs."""

    @staticmethod
    def forward(ctx, points, R, t, camera_distance, focal_length):
        out = points.new_empty(points.shape)
        d, f = scalar(points, camera_distance), scalar(points, focal_length)
        if points.numel():
            run_batches(_fwd, points.shape[0], np_(points), np_(R), np_(t), np_(out), extra=(d, f))
        ctx.save_for_backward(points, R, t)
        ctx.params = (d, f)
        return out

    @staticmethod
    def backward(ctx, g):
        points, R, t = ctx.saved_tensors
        g_points = points.new_empty(points.shape)
        g_R = R.new_zeros(R.shape)
        g_t = t.new_zeros(t.shape)
        if points.numel():
            run_batches(
                _bwd,
                points.shape[0],
                np_(points),
                np_(R),
                np_(t),
                np_(g),
                np_(g_points),
                np_(g_R),
                np_(g_t),
                extra=ctx.params,
            )
        return g_points, g_R, g_t, None, None


def rotate_project_cpu(
    points: Tensor,  # [B, N, 3] object frame
    R: Tensor,  # [B, 3, 3] rotation matrices (p' = R p)
    translation: Tensor | None,  # [B, 3] camera-frame translation, None = 0
    camera_distance: float,
    focal_length: float,
) -> Tensor:
    """Grid coordinates ``[B, N, 3]`` (depth, row, col) of ``R p + t`` (see module doc).
    CPU float32/float64 tensors of one dtype; differentiable w.r.t. all three."""
    t = translation if translation is not None else points.new_zeros(points.shape[0], 3)
    return RotateProjectCPU.apply(points, R, t, float(camera_distance), float(focal_length))
