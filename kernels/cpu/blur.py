"""Fast CPU blur: one numba pass per volume doing clip -> blur along W, H, D -> scale,
clip, with a hand-written backward.

Each 1-D pass is a K-tap shifted multiply-add over contiguous rows (K multiply-adds per
cell instead of the G of a banded matmul), and one volume at a time stays in cache
through the three passes and the element-wise steps, so the whole op reads and writes
each full volume about once. The Gaussian is symmetric, so the blur is its own adjoint:
the backward blurs the incoming gradient with the same passes. Saved for the backward:
the raw input (for the input clip's mask) and the blurred volume before the scale (for
the scale's gradient and the output clip's mask); nothing else.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from kernels.cpu._jit import HAVE_NUMBA, njit, np_, run_batches, scalar
from kernels.reference import blur3d_ref, blur_occupancy_ref, gaussian_kernel1d

# Layout of one depth slice while it is blurred along W and H: rows of Wp = W + 2r
# values (r = (K - 1) // 2), data in columns [r, r + W) of the padded input ``Pf`` and in
# columns [0, W) of the outputs. The W pass is then one long multiply-add per tap over
# the flattened slice, ``Q[j] = sum_t k[t] Pf[j + t]`` (columns >= W of Q pick up values
# of the next row: they are never read back into data columns, because the H and D
# passes only mix cells of the same column), and the H pass another,
# ``R[j] = sum_t k[t] Qpad[j + t Wp]`` over Q with r zero rows above and below. Long
# branch-free loops that LLVM vectorises; the K-tap sums cost K multiply-adds per cell
# instead of the G of a banded matmul.


@njit
def _wh_slice(Pf, Qpad, k, L, Wp, dst):
    """W then H pass of one padded slice ``Pf`` [L + 2r] (L = H * Wp) into ``dst`` [L]."""
    K = k.shape[0]
    r = (K - 1) // 2
    zero = k[0] - k[0]
    # Loops index views with the bare loop variable: numba then drops its negative-index
    # wrap-around code and LLVM vectorises them (8x faster than ``a[off + j]``).
    q = Qpad[r * Wp : r * Wp + L]
    for j in range(L):
        q[j] = zero
    for t in range(K):
        kt = k[t]
        src = Pf[t : t + L]
        for j in range(L):
            q[j] += kt * src[j]
    for j in range(L):
        dst[j] = zero
    for t in range(K):
        kt = k[t]
        src = Qpad[t * Wp : t * Wp + L]
        for j in range(L):
            dst[j] += kt * src[j]


@njit
def _d_row(Bt, k, d, acc):
    """D pass for output slice ``d``: ``acc = sum_t k[t] Bt[d + t - r]`` (zero outside)."""
    D, L = Bt.shape
    K = k.shape[0]
    r = (K - 1) // 2
    zero = k[0] - k[0]
    for j in range(L):
        acc[j] = zero
    for t in range(K):
        dd = d + t - r
        if dd < 0 or dd >= D:
            continue
        kt = k[t]
        src = Bt[dd]
        for j in range(L):
            acc[j] += kt * src[j]


@njit
def _blur_occ_fwd(vol, scale, k, y, out, one):
    """vol [b, C, D, H, W] -> y = blur(clamp(vol, 0, 1)) and out = clamp(scale[b] y, 0, 1)."""
    nb, C, D, H, W = vol.shape
    K = k.shape[0]
    r = (K - 1) // 2
    Wp = W + 2 * r
    L = H * Wp
    zero = one - one
    Pf = np.zeros(L + 2 * r, vol.dtype)
    Qpad = np.zeros(L + 2 * r * Wp, vol.dtype)
    Bt = np.empty((D, L), vol.dtype)
    acc = np.empty(L, vol.dtype)
    for b in range(nb):
        s = scale[b]
        for c in range(C):
            for d in range(D):
                for h in range(H):
                    src = vol[b, c, d, h]
                    pr = Pf[h * Wp + r : h * Wp + r + W]
                    for w in range(W):
                        v = src[w]
                        v = v if v > zero else zero
                        pr[w] = v if v < one else one
                _wh_slice(Pf, Qpad, k, L, Wp, Bt[d])
            for d in range(D):
                _d_row(Bt, k, d, acc)
                for h in range(H):
                    yr = y[b, c, d, h]
                    orow = out[b, c, d, h]
                    ar = acc[h * Wp : h * Wp + W]
                    for w in range(W):
                        v = ar[w]
                        yr[w] = v
                        z = v * s
                        z = z if z > zero else zero
                        orow[w] = z if z < one else one


@njit
def _blur_occ_bwd(vol, y, scale, g, k, g_vol, g_scale, one):
    """Backward of :func:`_blur_occ_fwd`. Output clip: torch's clamp passes the gradient
    where ``0 <= s y <= 1`` (bounds included); g_scale[b] = sum of g * y there. Then the
    (self-adjoint) blur, then the input clip's mask ``0 <= vol <= 1``."""
    nb, C, D, H, W = vol.shape
    K = k.shape[0]
    r = (K - 1) // 2
    Wp = W + 2 * r
    L = H * Wp
    zero = one - one
    Pf = np.zeros(L + 2 * r, vol.dtype)
    Qpad = np.zeros(L + 2 * r * Wp, vol.dtype)
    Bt = np.empty((D, L), vol.dtype)
    acc = np.empty(L, vol.dtype)
    for b in range(nb):
        s = scale[b]
        gs = zero
        for c in range(C):
            for d in range(D):
                for h in range(H):
                    yr = y[b, c, d, h]
                    gr = g[b, c, d, h]
                    pr = Pf[h * Wp + r : h * Wp + r + W]
                    for w in range(W):
                        z = yr[w] * s
                        if z >= zero and z <= one:
                            gs += gr[w] * yr[w]
                            pr[w] = gr[w] * s
                        else:
                            pr[w] = zero
                _wh_slice(Pf, Qpad, k, L, Wp, Bt[d])
            for d in range(D):
                _d_row(Bt, k, d, acc)
                for h in range(H):
                    vr = vol[b, c, d, h]
                    gv = g_vol[b, c, d, h]
                    ar = acc[h * Wp : h * Wp + W]
                    for w in range(W):
                        v = vr[w]
                        gv[w] = ar[w] if (v >= zero and v <= one) else zero
        g_scale[b] = gs


@njit
def _blur_plain(vol, k, out):
    """out = blur(vol) for vol [b, C, D, H, W] (no clipping)."""
    nb, C, D, H, W = vol.shape
    K = k.shape[0]
    r = (K - 1) // 2
    Wp = W + 2 * r
    L = H * Wp
    Pf = np.zeros(L + 2 * r, vol.dtype)
    Qpad = np.zeros(L + 2 * r * Wp, vol.dtype)
    Bt = np.empty((D, L), vol.dtype)
    acc = np.empty(L, vol.dtype)
    for b in range(nb):
        for c in range(C):
            for d in range(D):
                for h in range(H):
                    src = vol[b, c, d, h]
                    pr = Pf[h * Wp + r : h * Wp + r + W]
                    for w in range(W):
                        pr[w] = src[w]
                _wh_slice(Pf, Qpad, k, L, Wp, Bt[d])
            for d in range(D):
                _d_row(Bt, k, d, acc)
                for h in range(H):
                    orow = out[b, c, d, h]
                    ar = acc[h * Wp : h * Wp + W]
                    for w in range(W):
                        orow[w] = ar[w]


def _taps(sigma: float, kernel_size: int, like: Tensor):
    return np_(gaussian_kernel1d(sigma, kernel_size, dtype=like.dtype))


class BlurOccupancyCPU(torch.autograd.Function):
    """``clamp(scale * blur(clamp(volume, 0, 1)), 0, 1)`` with a hand-written backward.
    Saves the input and the blurred volume before the scale."""

    @staticmethod
    def forward(ctx, volume: Tensor, scale: Tensor | None, sigma: float, kernel_size: int):
        volume = volume.contiguous()
        B = volume.shape[0]
        k = _taps(sigma, kernel_size, volume)
        y = torch.empty_like(volume)
        out = torch.empty_like(volume)
        s = scale if scale is not None else volume.new_ones(B)
        one = scalar(volume, 1.0)
        run_batches(_blur_occ_fwd, B, np_(volume), np_(s), k, np_(y), np_(out), extra=(one,))
        ctx.save_for_backward(volume, y, s)
        ctx.k = k
        ctx.has_scale = scale is not None
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        volume, y, s = ctx.saved_tensors
        B = volume.shape[0]
        g_vol = torch.empty_like(volume)
        g_scale = volume.new_empty(B)
        one = scalar(volume, 1.0)
        run_batches(
            _blur_occ_bwd,
            B,
            np_(volume),
            np_(y),
            np_(s),
            np_(g),
            ctx.k,
            np_(g_vol),
            np_(g_scale),
            extra=(one,),
        )
        return (
            g_vol if ctx.needs_input_grad[0] else None,
            g_scale if ctx.has_scale and ctx.needs_input_grad[1] else None,
            None,
            None,
        )


class Blur3dCPU(torch.autograd.Function):
    """Plain separable blur; the backward is the same blur (symmetric kernel)."""

    @staticmethod
    def forward(ctx, volume: Tensor, sigma: float, kernel_size: int):
        k = _taps(sigma, kernel_size, volume)
        ctx.k = k
        volume = volume.contiguous()
        out = torch.empty_like(volume)
        run_batches(_blur_plain, volume.shape[0], np_(volume), k, np_(out))
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous()
        out = torch.empty_like(g)
        run_batches(_blur_plain, g.shape[0], np_(g), ctx.k, np_(out))
        return out, None, None


def blur3d_cpu(volume: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """CPU path of :func:`kernels.blur3d` (validated inputs): ``[B, C, D, H, W]``."""
    if not HAVE_NUMBA:
        return blur3d_ref(volume, sigma, kernel_size)
    return Blur3dCPU.apply(volume, float(sigma), int(kernel_size))


def blur_occupancy_cpu(
    volume: Tensor, sigma: float, kernel_size: int, scale: Tensor | None = None
) -> Tensor:
    """CPU path of :func:`kernels.blur_occupancy` (validated inputs): ``[B, C, D, H, W]``."""
    if not HAVE_NUMBA:
        return blur_occupancy_ref(volume, sigma, kernel_size, scale)
    sc = scale.to(volume.dtype).contiguous() if scale is not None else None
    return BlurOccupancyCPU.apply(volume, sc, float(sigma), int(kernel_size))
