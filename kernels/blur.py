"""Separable 3-D Gaussian blur of volumes, and the renderer's fused occupancy smoothing.

Layers (STYLE.md section 2): ``_blur_pass_kernel`` (one 1-D pass along any axis, with
optional fused prologue / epilogue) -> launchers :func:`blur_fwd` / :func:`blur_bwd` and
:func:`blur_occupancy_fwd` / :func:`blur_occupancy_bwd` -> :class:`Blur3d`,
:class:`BlurOccupancy` (autograd) -> public :func:`blur3d`, :func:`blur_occupancy`.

The kernel is symmetric and the padding is zero, so each 1-D pass is multiplication by a
symmetric banded matrix: the backward of the blur is the same blur of the gradient
(passes in reverse order).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from kernels import cpu
from kernels._utils import (
    Backend,
    check_kernel,
    check_scale,
    check_tensor,
    device_guard,
    has_triton,
    launch_block,
    new_output,
    select_backend,
)
from kernels.reference import blur3d_ref, blur_occupancy_ref

# Epilogue / prologue modes of one pass (constexpr switches of the kernel).
_PLAIN = 0
_CLIP_IN = 1  # forward, first pass: blur clamp(x, 0, 1) (the clip before the blur)
_SCALE_CLIP_OUT = 2  # forward, last pass: also store b, write clamp(scale * b, 0, 1)
_GRAD_SCALE_CLIP_IN = 3  # backward, first pass: blur g * scale * [0 <= scale*b <= 1]
_GRAD_CLIP_OUT = 4  # backward, last pass: multiply by [0 <= x <= 1]

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _blur_pass_kernel(
        out_ptr,  # [M, N] output of this pass
        in_ptr,  # [M, N] input of this pass
        w_ptr,  # [K] normalised Gaussian taps (symmetric)
        aux_out_ptr,  # _SCALE_CLIP_OUT: [M, N] pre-scale blur b
        aux_in_ptr,  # _GRAD_SCALE_CLIP_IN: b; _GRAD_CLIP_OUT: the unclipped input x
        scale_ptr,  # [B] occupancy scale (modes 2, 3)
        part_ptr,  # [M, tiles_n] per-(row, column tile) partial d(loss)/d(scale) (mode 3)
        M,
        N,
        L,  # AXIS 0: length of the blurred axis; rows are (slab, position) pairs
        tiles_n,  # cdiv(N, BLOCK_N)
        rows_per_batch,  # rows of one batch element (for the scale index)
        AXIS: tl.constexpr,  # 0: blur along rows (period L, stride N); 1: along N
        MODE: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        K: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # The volume is viewed as an [M, N] matrix: along W, (M, N) = (B*C*D*H, W) and the
        # taps move along N; along H, (B*C*D*H, W) with the taps moving along rows within
        # each run of L = H rows; along D, (B*C*D, H*W) with L = D. One program owns a
        # BLOCK_M x BLOCK_N output tile and sums K shifted input tiles; tile rows are
        # contiguous in memory (coalesced) and the K-fold re-reads of neighbouring rows or
        # columns hit L1/L2.
        pid = tl.program_id(0)
        rows = (pid // tiles_n) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = (pid % tiles_n) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        in_tile = row_ok[:, None] & (cols[None, :] < N)
        # int64: B * C * D * H * W may exceed 2^31.
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        if AXIS == 0:
            pos = rows % L  # position of each row along the blurred axis
        if HAS_SCALE:
            sc = tl.load(scale_ptr + rows // rows_per_batch, mask=row_ok, other=0.0)[:, None]
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=out_ptr.dtype.element_ty)
        for k in tl.static_range(K):
            wk = tl.load(w_ptr + k)
            if AXIS == 0:
                src = pos + (k - (K - 1) // 2)
                ok = ((src >= 0) & (src < L) & row_ok)[:, None] & (cols[None, :] < N)
                o = offs + (k - (K - 1) // 2) * N
            else:
                src = cols + (k - (K - 1) // 2)
                ok = row_ok[:, None] & ((src >= 0) & (src < N))[None, :]
                o = offs + (k - (K - 1) // 2)
            x = tl.load(in_ptr + o, mask=ok, other=0.0)
            if MODE == 1:  # _CLIP_IN
                x = tl.minimum(tl.maximum(x, 0.0), 1.0)
            if MODE == 3:  # _GRAD_SCALE_CLIP_IN: clamp backward (inclusive bounds, as torch)
                bb = tl.load(aux_in_ptr + o, mask=ok, other=0.0)
                if HAS_SCALE:
                    # The scale of the source row: same batch element (blur along D stays
                    # inside one (b, c) slab).
                    y = bb * sc
                    x = tl.where((y >= 0.0) & (y <= 1.0), x * sc, 0.0)
                else:
                    x = tl.where((bb >= 0.0) & (bb <= 1.0), x, 0.0)
            acc += wk * x
        if MODE == 2:  # _SCALE_CLIP_OUT
            tl.store(aux_out_ptr + offs, acc, mask=in_tile)
            if HAS_SCALE:
                acc = acc * sc
            acc = tl.minimum(tl.maximum(acc, 0.0), 1.0)
        if MODE == 3:
            if HAS_SCALE:
                # d loss / d scale = sum g * b over cells where the output clip is not
                # saturated: this tile's own cells reduced per row and stored (no
                # atomics: the launcher sums the partials in a fixed order, so the
                # gradient is deterministic).
                g = tl.load(in_ptr + offs, mask=in_tile, other=0.0)
                bb = tl.load(aux_in_ptr + offs, mask=in_tile, other=0.0)
                y = bb * sc
                part = tl.sum(tl.where((y >= 0.0) & (y <= 1.0), g * bb, 0.0), 1)
                tl.store(part_ptr + rows.to(tl.int64) * tiles_n + pid % tiles_n, part, mask=row_ok)
        if MODE == 4:  # _GRAD_CLIP_OUT: clamp(x, 0, 1) backward
            xin = tl.load(aux_in_ptr + offs, mask=in_tile, other=0.0)
            acc = tl.where((xin >= 0.0) & (xin <= 1.0), acc, 0.0)
        tl.store(out_ptr + offs, acc, mask=in_tile)


def _pass(
    out: Tensor,
    inp: Tensor,
    taps: Tensor,
    view: tuple[int, int, int],  # (M, N, L)
    axis: int,
    mode: int = _PLAIN,
    aux_out: Tensor | None = None,
    aux_in: Tensor | None = None,
    scale: Tensor | None = None,
    rows_per_batch: int = 1,
) -> Tensor | None:
    """Launch one 1-D blur pass over the [M, N] view of contiguous ``inp``. In mode
    ``_GRAD_SCALE_CLIP_IN`` with a scale, returns the d(scale) partials ``[M, tiles_n]``."""
    M, N, L = view
    BLOCK_M, BLOCK_N = pass_tile(M, N, mode)
    tiles_n = triton.cdiv(N, BLOCK_N)
    part = None
    if mode == _GRAD_SCALE_CLIP_IN and scale is not None:
        part = new_output(inp, M, tiles_n)
    if M * N == 0:
        return part
    dummy = inp
    with device_guard(inp):
        _blur_pass_kernel[(triton.cdiv(M, BLOCK_M) * tiles_n,)](
            out,
            inp,
            taps,
            aux_out if aux_out is not None else dummy,
            aux_in if aux_in is not None else dummy,
            scale if scale is not None else dummy,
            part if part is not None else dummy,
            M,
            N,
            L,
            tiles_n,
            rows_per_batch,
            AXIS=axis,
            MODE=mode,
            HAS_SCALE=scale is not None,
            K=taps.numel(),
            BLOCK_M=BLOCK_M,
            BLOCK_N=BLOCK_N,
            num_warps=PASS_WARPS,
        )
    return part


# GPU tile of one pass: 128 contiguous columns (coalesced 512 B rows) x 16 rows, 8 warps
# (8 elements per thread). The former 32 x 128 tile with 4 warps needed a 5.7 KB stack
# per thread (register spills) in the 21-tap backward pass on sm_90: ptxas keeps all K
# shifted loads in flight, K x elements-per-thread registers. The backward's first pass
# (two loads per tap: gradient and saved blur) still spilled at 16 rows, so it uses 8.
# profiling/compile_check.py checks that no float32 pass spills. A 21-tap pass along rows
# re-reads (16 + 20) / 16 = 2.25x its tile, from L1/L2. Unmeasured on a GPU.
PASS_TILE = (16, 128)
PASS_TILE_GRAD_SCALE = (8, 128)
PASS_WARPS = 8


def pass_tile(M: int, N: int, mode: int = _PLAIN) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of a pass over an [M, N] view (one big block when interpreting)."""
    gm, gn = PASS_TILE_GRAD_SCALE if mode == _GRAD_SCALE_CLIP_IN else PASS_TILE
    BLOCK_N = launch_block(gn, N, interpret_cap=1 << 14)
    BLOCK_M = launch_block(gm, M, interpret_cap=max(1, (1 << 16) // BLOCK_N))
    return BLOCK_M, BLOCK_N


def _views(shape) -> tuple[tuple[int, int, int], ...]:
    """(M, N, L) matrix views of a [B, C, D, H, W] volume for the W, H and D passes."""
    B, C, D, H, W = shape
    return (B * C * D * H, W, W), (B * C * D * H, W, H), (B * C * D, H * W, D)


@functools.lru_cache(maxsize=64)
def _taps_cached(sigma: float, kernel_size: int, dtype: torch.dtype, device: torch.device):
    # Built on the device, with the reference's formula and op order
    # (kernels.reference.gaussian_kernel1d): a few tiny kernels, no host-to-device copy
    # (a pageable copy can synchronise the stream, and a CUDA graph cannot capture one).
    # sigma enters through a fill, not a copy. The annealed sigma changes every step,
    # hence a bounded LRU rather than a dict.
    r = (kernel_size - 1) // 2
    i = torch.arange(-r, r + 1, dtype=dtype, device=device)
    s = torch.full((), sigma, dtype=dtype, device=device)
    k = torch.exp(-(i * i) / (2.0 * s * s))
    return k / k.sum()


def taps_for(sigma: float, kernel_size: int, like: Tensor) -> Tensor:
    """Normalised Gaussian taps ``[K]`` in ``like``'s dtype on its device, cached per
    (K, sigma, dtype, device): no device work or host sync when sigma repeats."""
    return _taps_cached(float(sigma), int(kernel_size), like.dtype, like.device)


def blur_fwd(volume: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """Blur contiguous ``volume`` [B, C, D, H, W] along W, H, D (three passes)."""
    taps = taps_for(sigma, kernel_size, volume)
    vw, vh, vd = _views(volume.shape)
    t1 = new_output(volume, *volume.shape)
    t2 = new_output(volume, *volume.shape)
    _pass(t1, volume, taps, vw, 1)
    _pass(t2, t1, taps, vh, 0)
    _pass(t1, t2, taps, vd, 0)
    return t1


def blur_bwd(grad: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """Backward of :func:`blur_fwd`: the transposed passes in reverse order (D, H, W); each
    banded matrix is symmetric, so that is the same blur."""
    taps = taps_for(sigma, kernel_size, grad)
    vw, vh, vd = _views(grad.shape)
    t1 = new_output(grad, *grad.shape)
    t2 = new_output(grad, *grad.shape)
    _pass(t1, grad, taps, vd, 0)
    _pass(t2, t1, taps, vh, 0)
    _pass(t1, t2, taps, vw, 1)
    return t1


def blur_occupancy_fwd(
    volume: Tensor, sigma: float, kernel_size: int, scale: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Fused ``clamp(scale * blur(clamp(volume, 0, 1)), 0, 1)`` in three passes: the
    first clip rides on the W pass's loads, scale and last clip on the D pass's stores.
    Returns the output and the pre-scale blur ``b`` (saved for the backward)."""
    B, C, D = volume.shape[:3]
    taps = taps_for(sigma, kernel_size, volume)
    vw, vh, vd = _views(volume.shape)
    t1 = new_output(volume, *volume.shape)
    t2 = new_output(volume, *volume.shape)
    out = new_output(volume, *volume.shape)
    _pass(t1, volume, taps, vw, 1, _CLIP_IN)
    _pass(t2, t1, taps, vh, 0)
    # D pass: rows are (b, c, d) triples, so the batch of row r is r // (C * D).
    _pass(out, t2, taps, vd, 0, _SCALE_CLIP_OUT, aux_out=t1, scale=scale, rows_per_batch=C * D)
    return out, t1


def blur_occupancy_bwd(
    grad: Tensor,
    volume: Tensor,
    blurred: Tensor,
    sigma: float,
    kernel_size: int,
    scale: Tensor | None,
) -> tuple[Tensor, Tensor | None]:
    """Backward of :func:`blur_occupancy_fwd`: returns d(volume) and d(scale) ``[B]``."""
    B, C, D = grad.shape[:3]
    taps = taps_for(sigma, kernel_size, grad)
    vw, vh, vd = _views(grad.shape)
    t1 = new_output(grad, *grad.shape)
    t2 = new_output(grad, *grad.shape)
    part = _pass(
        t1,
        grad,
        taps,
        vd,
        0,
        _GRAD_SCALE_CLIP_IN,
        aux_in=blurred,
        scale=scale,
        rows_per_batch=C * D,
    )
    _pass(t2, t1, taps, vh, 0)
    _pass(t1, t2, taps, vw, 1, _GRAD_CLIP_OUT, aux_in=volume)
    # Second stage of the d(scale) reduction: the rows of batch element b are the
    # contiguous block b * C * D ... (b + 1) * C * D - 1; a plain sum in a fixed order.
    grad_scale = part.view(B, -1).sum(1) if part is not None else None
    return t1, grad_scale


class Blur3d(torch.autograd.Function):
    """Autograd glue for the Triton blur (validated, contiguous input)."""

    @staticmethod
    def forward(ctx, volume: Tensor, sigma: float, kernel_size: int):
        ctx.sigma, ctx.kernel_size = sigma, kernel_size
        return blur_fwd(volume, sigma, kernel_size)

    @staticmethod
    def backward(ctx, grad: Tensor):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        return blur_bwd(grad.contiguous(), ctx.sigma, ctx.kernel_size), None, None


class BlurOccupancy(torch.autograd.Function):
    """Autograd glue for the fused clip -> blur -> scale -> clip (Triton)."""

    @staticmethod
    def forward(ctx, volume: Tensor, scale: Tensor | None, sigma: float, kernel_size: int):
        out, blurred = blur_occupancy_fwd(volume, sigma, kernel_size, scale)
        ctx.sigma, ctx.kernel_size = sigma, kernel_size
        ctx.save_for_backward(volume, blurred, scale)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        volume, blurred, scale = ctx.saved_tensors
        if not any(ctx.needs_input_grad[:2]):
            return None, None, None, None
        gv, gs = blur_occupancy_bwd(
            grad.contiguous(), volume, blurred, ctx.sigma, ctx.kernel_size, scale
        )
        return (
            gv if ctx.needs_input_grad[0] else None,
            gs if ctx.needs_input_grad[1] else None,
            None,
            None,
        )


def blur3d(
    volume: Tensor,  # [B, C, D, H, W]
    sigma: float,
    kernel_size: int,
    backend: Backend = "auto",
) -> Tensor:
    """Blur ``volume`` along D, H and W with a normalised ``kernel_size``-tap Gaussian of
    standard deviation ``sigma`` cells, zero padding; returns ``[B, C, D, H, W]``.
    Differentiable w.r.t. ``volume``."""
    check_tensor("volume", volume, ndim=5)
    check_kernel(sigma, kernel_size)
    path = select_backend(backend, volume)
    if path == "triton":
        return Blur3d.apply(volume.contiguous(), float(sigma), kernel_size)
    if path == "cpu":
        return cpu.blur3d_cpu(volume, float(sigma), kernel_size)
    return blur3d_ref(volume, float(sigma), kernel_size)


def blur_occupancy(
    volume: Tensor,  # [B, C, D, H, W] raw splatted occupancy
    sigma: float,
    kernel_size: int,
    scale: Tensor | None = None,  # [B] occupancy scale, None = 1
    backend: Backend = "auto",
) -> Tensor:
    """The renderer's smoothing step: ``clamp(scale * blur3d(clamp(volume, 0, 1)), 0, 1)``.

    One fused op on the Triton path (3 passes instead of 3 blur passes plus 3 elementwise
    passes); the reference path is the plain composition of torch ops. Differentiable
    w.r.t. ``volume`` and ``scale``. Returns ``[B, C, D, H, W]``.
    """
    check_tensor("volume", volume, ndim=5)
    check_kernel(sigma, kernel_size)
    check_scale(scale, volume.shape[0])
    path = select_backend(backend, volume)
    if path == "triton":
        sc = scale.to(volume.dtype).contiguous() if scale is not None else None
        return BlurOccupancy.apply(volume.contiguous(), sc, float(sigma), kernel_size)
    if path == "cpu":
        return cpu.blur_occupancy_cpu(volume, float(sigma), kernel_size, scale)
    return blur_occupancy_ref(volume, float(sigma), kernel_size, scale)
