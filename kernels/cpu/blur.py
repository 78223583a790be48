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
# of the next row: never read back into data columns, because the H pass only mixes
# cells of the same column), and the H pass another, ``R[j] = sum_t k[t] Qpad[j + t Wp]``
# over Q with r zero rows above and below; its data columns go to a compact
# [D + 2r, H*W] buffer (r zero slices at each end), and the D pass runs over blocks of
# pixels of it, all depths of a block before the next (the taps stay in cache). Each
# sum accumulates a block of BS values over all K taps (in L1) before moving on. The
# K-tap sums cost K multiply-adds per cell instead of the G of a banded matmul.
#
# Loops index views with the bare loop variable: numba then drops its negative-index
# wrap-around code and LLVM vectorises them (8x faster than ``a[off + j]``).

BS = 256  # values per accumulation block (1-2 KB: stays in L1 across the K taps)


@njit
def _taps_sum(src, stride, k, acc, n):
    """``acc[j] = sum_t k[t] src[j + t * stride]`` for j < n (src a view at the block).

    The Gaussian is symmetric (``k[t] == k[K-1-t]`` exactly), so mirrored taps share a
    multiply, and two pairs go per sweep over ``acc``: the loop is bound by loads and
    stores of ``acc``, and this does a quarter of them."""
    K = k.shape[0]
    r = (K - 1) // 2
    kc = k[r]
    s = src[r * stride : r * stride + n]
    for j in range(n):
        acc[j] = kc * s[j]
    t = 0
    while t + 1 < r:
        ka = k[t]
        kb = k[t + 1]
        a1 = src[t * stride : t * stride + n]
        a2 = src[(K - 1 - t) * stride : (K - 1 - t) * stride + n]
        b1 = src[(t + 1) * stride : (t + 1) * stride + n]
        b2 = src[(K - 2 - t) * stride : (K - 2 - t) * stride + n]
        for j in range(n):
            acc[j] += ka * (a1[j] + a2[j]) + kb * (b1[j] + b2[j])
        t += 2
    if t < r:
        ka = k[t]
        a1 = src[t * stride : t * stride + n]
        a2 = src[(K - 1 - t) * stride : (K - 1 - t) * stride + n]
        for j in range(n):
            acc[j] += ka * (a1[j] + a2[j])


@njit
def _wh_slice(Pf, Qpad, R, k, H, W, dst):
    """W then H pass of one padded slice ``Pf`` [H * Wp + 2r] into ``dst`` [H * W]
    (compact); ``Qpad`` [(H + 2r) * Wp] (pad rows zero) and ``R`` [H * Wp] are scratch."""
    K = k.shape[0]
    r = (K - 1) // 2
    Wp = W + 2 * r
    L = H * Wp
    off = r * Wp
    for j0 in range(0, L, BS):
        n = min(BS, L - j0)
        _taps_sum(Pf[j0:], 1, k, Qpad[off + j0 : off + j0 + n], n)
    for j0 in range(0, L, BS):
        n = min(BS, L - j0)
        _taps_sum(Qpad[j0:], Wp, k, R[j0 : j0 + n], n)
    for h in range(H):
        d = dst[h * W : h * W + W]
        s = R[h * Wp : h * Wp + W]
        for w in range(W):
            d[w] = s[w]


@njit
def _scratch(D, H, W, K, dtype):
    r = (K - 1) // 2
    Wp = W + 2 * r
    Pf = np.zeros(H * Wp + 2 * r, dtype)  # pad columns stay zero
    Qpad = np.zeros((H + 2 * r) * Wp, dtype)  # pad rows stay zero
    R = np.empty(H * Wp, dtype)
    Bt = np.zeros((D + 2 * r, H * W), dtype)  # r zero slices before and after the volume
    acc = np.empty(BS, dtype)
    return Pf, Qpad, R, Bt, acc


@njit
def _blur_occ_fwd(vol, scale, k, y, out, one):
    """vol [b, C, D, H, W] -> y = blur(clamp(vol, 0, 1)) and out = clamp(scale[b] y, 0, 1)."""
    nb, C, D, H, W = vol.shape
    r = (k.shape[0] - 1) // 2
    Wp = W + 2 * r
    P = H * W
    zero = one - one
    Pf, Qpad, R, Bt, acc = _scratch(D, H, W, k.shape[0], vol.dtype)
    Bf = Bt.reshape(-1)
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
                _wh_slice(Pf, Qpad, R, k, H, W, Bt[r + d])
            yf = y[b, c].reshape(D, P)
            of = out[b, c].reshape(D, P)
            for j0 in range(0, P, BS):
                n = min(BS, P - j0)
                for d in range(D):
                    _taps_sum(Bf[d * P + j0 :], P, k, acc, n)
                    yr = yf[d, j0 : j0 + n]
                    orow = of[d, j0 : j0 + n]
                    for j in range(n):
                        v = acc[j]
                        yr[j] = v
                        z = v * s
                        z = z if z > zero else zero
                        orow[j] = z if z < one else one


@njit
def _blur_occ_bwd(vol, y, scale, g, k, g_vol, g_scale, one):
    """Backward of :func:`_blur_occ_fwd`. Output clip: torch's clamp passes the gradient
    where ``0 <= s y <= 1`` (bounds included); g_scale[b] = sum of g * y there. Then the
    (self-adjoint) blur, then the input clip's mask ``0 <= vol <= 1``."""
    nb, C, D, H, W = vol.shape
    r = (k.shape[0] - 1) // 2
    Wp = W + 2 * r
    P = H * W
    zero = one - one
    Pf, Qpad, R, Bt, acc = _scratch(D, H, W, k.shape[0], vol.dtype)
    Bf = Bt.reshape(-1)
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
                _wh_slice(Pf, Qpad, R, k, H, W, Bt[r + d])
            vf = vol[b, c].reshape(D, P)
            gf = g_vol[b, c].reshape(D, P)
            for j0 in range(0, P, BS):
                n = min(BS, P - j0)
                for d in range(D):
                    _taps_sum(Bf[d * P + j0 :], P, k, acc, n)
                    vr = vf[d, j0 : j0 + n]
                    gv = gf[d, j0 : j0 + n]
                    for j in range(n):
                        v = vr[j]
                        gv[j] = acc[j] if (v >= zero and v <= one) else zero
        g_scale[b] = gs


@njit
def _blur_plain(vol, k, out):
    """out = blur(vol) for vol [b, C, D, H, W] (no clipping)."""
    nb, C, D, H, W = vol.shape
    r = (k.shape[0] - 1) // 2
    Wp = W + 2 * r
    P = H * W
    Pf, Qpad, R, Bt, acc = _scratch(D, H, W, k.shape[0], vol.dtype)
    Bf = Bt.reshape(-1)
    for b in range(nb):
        for c in range(C):
            for d in range(D):
                for h in range(H):
                    src = vol[b, c, d, h]
                    pr = Pf[h * Wp + r : h * Wp + r + W]
                    for w in range(W):
                        pr[w] = src[w]
                _wh_slice(Pf, Qpad, R, k, H, W, Bt[r + d])
            of = out[b, c].reshape(D, P)
            for j0 in range(0, P, BS):
                n = min(BS, P - j0)
                for d in range(D):
                    _taps_sum(Bf[d * P + j0 :], P, k, of[d, j0 : j0 + n], n)


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
