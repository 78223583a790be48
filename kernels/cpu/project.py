"""Fast CPU ray-termination projection: numba walks over the depth slices.

Forward: one front-to-back walk per batch element with a running transmittance
``T_k = prod_{j<k} (1 - o_j)``, accumulating silhouette, depth and colour (and writing the
probabilities if asked); the inner loops run over the contiguous pixels of a slice.

Backward (as the Triton kernel, see :mod:`kernels.project`): with per-cell values
``v_k = g_depth d_k + sum_c g_color_c c_ck + g_probs_k`` and the escape value
``v_E = g_depth max_depth + sum_c g_color_c background - g_sil + g_probs_E``, the suffix
value ``R`` obeys ``R = v_E`` after the last cell, ``R <- o_k v_k + (1 - o_k) R`` walking
back, and ``dL/do_k = T_k (v_k - R_k)``: no division, exact at o = 1. A front-to-back walk
first stores ``T_k`` in the gradient buffer, then the back-to-front walk overwrites it.
No flip, cumsum or cumprod over the volume, and only the inputs are saved.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kernels.cpu._jit import HAVE_NUMBA, njit, np_, run_batches, scalar
from kernels.reference import RayProjection, depth_values, ray_project_ref


@njit
def _project_fwd(
    occ, colors, dvals, sil, depth, color, probs, want_depth, want_probs, max_depth, bg, one
):
    """occ [b, D, P], colors [b, C, D, P], dvals [D] -> sil [b, P], depth [b, P],
    color [b, C, P], probs [b, D+1, P] (written)."""
    nb, D, P = occ.shape
    C = colors.shape[1]
    zero = one - one
    T = np.empty(P, occ.dtype)
    p = np.empty(P, occ.dtype)
    for b in range(nb):
        T[:] = one
        if want_depth:
            depth[b, :] = zero
        for ch in range(C):
            color[b, ch, :] = zero
        for k in range(D):
            ob = occ[b, k]
            for i in range(P):
                p[i] = ob[i] * T[i]
                T[i] = T[i] * (one - ob[i])
            if want_depth:
                dk = dvals[k]
                db = depth[b]
                for i in range(P):
                    db[i] += p[i] * dk
            for ch in range(C):
                cb = color[b, ch]
                cc = colors[b, ch, k]
                for i in range(P):
                    cb[i] += p[i] * cc[i]
            if want_probs:
                probs[b, k, :] = p
        for i in range(P):
            sil[b, i] = one - T[i]
        if want_depth:
            for i in range(P):
                depth[b, i] += T[i] * max_depth
        for ch in range(C):
            for i in range(P):
                color[b, ch, i] += T[i] * bg
        if want_probs:
            probs[b, D, :] = T


@njit
def _project_bwd(
    occ,
    colors,
    dvals,
    g_sil,
    g_depth,
    g_color,
    g_probs,
    g_occ,
    g_colors,
    has_gd,
    has_gp,
    max_depth,
    bg,
    one,
):
    """Gradients of :func:`_project_fwd` w.r.t. occ [b, D, P] (into ``g_occ``) and colors
    [b, C, D, P] (into ``g_colors``), from g_sil [b, P], g_depth [b, P] (if has_gd),
    g_color [b, C, P], g_probs [b, D+1, P] (if has_gp)."""
    nb, D, P = occ.shape
    C = colors.shape[1]
    T = np.empty(P, occ.dtype)
    R = np.empty(P, occ.dtype)
    v = np.empty(P, occ.dtype)
    zero = one - one
    for b in range(nb):
        # Front to back: T_k into the gradient buffer.
        T[:] = one
        for k in range(D):
            ob = occ[b, k]
            gb = g_occ[b, k]
            for i in range(P):
                gb[i] = T[i]
                T[i] = T[i] * (one - ob[i])
        # Escape value v_E.
        for i in range(P):
            R[i] = -g_sil[b, i]
        if has_gd:
            for i in range(P):
                R[i] += g_depth[b, i] * max_depth
        for ch in range(C):
            for i in range(P):
                R[i] += g_color[b, ch, i] * bg
        if has_gp:
            for i in range(P):
                R[i] += g_probs[b, D, i]
        # Back to front: gradient T_k (v_k - R_k), then R_{k-1}.
        for kk in range(D):
            k = D - 1 - kk
            ob = occ[b, k]
            gb = g_occ[b, k]
            if has_gd:
                dk = dvals[k]
                for i in range(P):
                    v[i] = g_depth[b, i] * dk
            else:
                v[:] = zero
            for ch in range(C):
                cc = colors[b, ch, k]
                gc = g_color[b, ch]
                gcc = g_colors[b, ch, k]
                for i in range(P):
                    v[i] += gc[i] * cc[i]
                    gcc[i] = gc[i] * (ob[i] * gb[i])
            if has_gp:
                gp = g_probs[b, k]
                for i in range(P):
                    v[i] += gp[i]
            for i in range(P):
                o = ob[i]
                gb[i] = gb[i] * (v[i] - R[i])
                R[i] = o * v[i] + (one - o) * R[i]


def _dummy(t: Tensor, ndim: int) -> np.ndarray:
    return np.zeros((1,) * ndim, dtype=np.float32 if t.dtype == torch.float32 else np.float64)


class RayProjectCPU(torch.autograd.Function):
    """Autograd glue for the numba projection. Saves only the inputs (the backward
    recomputes the transmittance)."""

    @staticmethod
    def forward(
        ctx, occ, colors, camera_distance, max_depth, background, return_depth, return_probs
    ):
        B, _, D, H, W = occ.shape
        P = H * W
        C = 0 if colors is None else colors.shape[1]
        sil = occ.new_empty(B, H, W)
        depth = occ.new_empty(B, H, W) if return_depth else None
        color = occ.new_empty(B, C, H, W) if colors is not None else None
        probs = occ.new_empty(B, D + 1, H, W) if return_probs else None
        dv = depth_values(D, camera_distance, max_depth, occ.dtype, occ.device)
        o = np_(occ).reshape(B, D, P)
        col = np_(colors).reshape(B, C, D, P) if colors is not None else _dummy(occ, 4)[:, :0]
        if B * P > 0:
            run_batches(
                _project_fwd,
                B,
                o,
                col,
                np_(dv),
                np_(sil).reshape(B, P),
                np_(depth).reshape(B, P) if depth is not None else _dummy(occ, 2),
                np_(color).reshape(B, C, P) if color is not None else _dummy(occ, 3),
                np_(probs).reshape(B, D + 1, P) if probs is not None else _dummy(occ, 3),
                extra=(
                    bool(return_depth),
                    bool(return_probs),
                    scalar(occ, max_depth),
                    scalar(occ, background),
                    scalar(occ, 1.0),
                ),
            )
        ctx.save_for_backward(occ, colors)
        ctx.params = (camera_distance, max_depth, background)
        return sil, depth, color, probs

    @staticmethod
    def backward(ctx, g_sil, g_depth, g_color, g_probs):
        occ, colors = ctx.saved_tensors
        if not any(ctx.needs_input_grad[:2]):
            return (None,) * 7
        camera_distance, max_depth, background = ctx.params
        B, _, D, H, W = occ.shape
        P = H * W
        C = 0 if colors is None else colors.shape[1]
        grad_occ = occ.new_empty(occ.shape)
        grad_colors = colors.new_empty(colors.shape) if colors is not None else None
        if g_sil is None:
            g_sil = occ.new_zeros(B, H, W)
        if colors is not None and g_color is None:
            g_color = occ.new_zeros(B, C, H, W)
        dv = depth_values(D, camera_distance, max_depth, occ.dtype, occ.device)
        if B * P > 0:
            col = np_(colors).reshape(B, C, D, P) if colors is not None else _dummy(occ, 4)[:, :0]
            run_batches(
                _project_bwd,
                B,
                np_(occ).reshape(B, D, P),
                col,
                np_(dv),
                np_(g_sil).reshape(B, P),
                np_(g_depth).reshape(B, P) if g_depth is not None else _dummy(occ, 2),
                np_(g_color).reshape(B, C, P) if colors is not None else _dummy(occ, 3),
                np_(g_probs).reshape(B, D + 1, P) if g_probs is not None else _dummy(occ, 3),
                np_(grad_occ).reshape(B, D, P),
                np_(grad_colors).reshape(B, C, D, P) if colors is not None else _dummy(occ, 4),
                extra=(
                    g_depth is not None,
                    g_probs is not None,
                    scalar(occ, max_depth),
                    scalar(occ, background),
                    scalar(occ, 1.0),
                ),
            )
        else:
            grad_occ.zero_()
            if grad_colors is not None:
                grad_colors.zero_()
        return (
            grad_occ if ctx.needs_input_grad[0] else None,
            grad_colors if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
            None,
        )


def ray_project_cpu(
    occupancy: Tensor,  # [B, 1, D, H, W]
    colors: Tensor | None = None,  # [B, C, D, H, W]
    camera_distance: float = 2.0,
    max_depth: float = 10.0,
    background: float = 1.0,
    return_depth: bool = True,
    return_probs: bool = False,
) -> RayProjection:
    """CPU path of :func:`kernels.ray_project` (validated inputs); outputs as there."""
    if not HAVE_NUMBA:
        return ray_project_ref(
            occupancy, colors, camera_distance, max_depth, background, return_depth, return_probs
        )
    out = RayProjectCPU.apply(
        occupancy,
        colors,
        float(camera_distance),
        float(max_depth),
        float(background),
        bool(return_depth),
        bool(return_probs),
    )
    return RayProjection(*out)
