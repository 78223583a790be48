"""The renderer's smoothing and ray projection fused into two kernels per direction
(``RenderSettings.kernel_variant = "fused"``): less memory traffic than
:func:`kernels.blur_occupancy` followed by :func:`kernels.ray_project`.

Layers (STYLE.md section 2): ``_plane_blur_kernel``, ``_depth_project_fwd_kernel``,
``_depth_project_bwd_kernel`` (Triton) -> launchers :func:`plane_blur`,
:func:`depth_project_fwd`, :func:`depth_project_bwd` -> :class:`BlurRayProject`
(autograd) -> public :func:`blur_ray_project`; reference
:func:`kernels.reference.blur_ray_project_ref`.

Forward (V = one volume's bytes):

1. plane pass: blur each (H, W) plane along W then H in one program, clip on load:
   ``t = blur_HW(clamp(x, 0, 1))`` (reads x, writes t: 2 V). The W taps are K shifted
   loads of the plane (L1); the H pass is a banded matrix product on chip (``tl.dot``,
   IEEE fp32 / fp64: no TF32).
2. depth + projection: each program walks its rays near to far; at cell k it forms the
   depth blur ``b_k = sum_j w_j t_{k+j-r}`` from a K-slice window (L1 re-reads), then
   ``o_k = clamp(scale * b_k, 0, 1)`` and the ray-termination step (reads t: 1 V). The
   occupancy volume is never written.

Backward:

3. depth + projection backward: each program holds its rays' whole columns in registers
   (``[D, BLOCK]`` tiles, rows in far-to-near order): recomputes b and o, the
   transmittance ``T_k`` (a product scan), the suffix value ``R_k`` (an associative scan
   of affine maps, see :mod:`kernels.project` for the recursion), ``dL/do_k = T_k (v_k -
   R_k)``, the clip and scale backward, a per-program d(scale) partial (summed in a fixed
   order: deterministic), and the depth-blur backward as a banded product on chip; writes
   d(t) (reads t, writes d(t): 2 V). No scratch volume.
4. plane pass backward: the same plane blur of d(t) times the input clip mask (reads
   d(t) and x, writes d(x): 3 V).

Only the training path is fused: silhouette and optionally depth, no colours, no
per-cell probabilities, no occupancy output; the renderer uses the separate kernels for
anything else.
"""

from __future__ import annotations

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
    next_pow2,
    select_backend,
)
from kernels.blur import blur_occupancy, taps_for
from kernels.project import ray_project
from kernels.reference import RayProjection, blur_ray_project_ref

_PLANE_CLIP_IN = 1  # forward: blur clamp(x, 0, 1)
_PLANE_GRAD_CLIP_OUT = 4  # backward: multiply by [0 <= x <= 1] (torch's clamp backward)

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _plane_blur_kernel(
        out_ptr,  # [P, H, W] output planes
        in_ptr,  # [P, H, W] input planes
        w_ptr,  # [K] normalised Gaussian taps (symmetric)
        x_ptr,  # MODE 4: [P, H, W] the unclipped forward input (for the clip mask)
        H,
        W,
        n_bands,  # row bands per plane
        n_cols,  # column tiles per plane
        MODE: tl.constexpr,
        K: tl.constexpr,
        BH: tl.constexpr,  # output rows per program
        HWIN: tl.constexpr,  # input rows per program (BH + halo, a power of two >= 16)
        WB: tl.constexpr,  # columns per program (>= 16)
        SHIFT: tl.constexpr,  # window start = first output row - SHIFT (0: whole plane)
    ):
        # One program: output rows [h0, h0 + BH) x columns [w0, w0 + WB) of one plane.
        # W pass: K shifted loads of the input window (zero padding = masked loads; the
        # column halo comes from L1/L2). H pass: [BH, HWIN] banded matrix (taps) times the
        # [HWIN, WB] window, on chip.
        pid = tl.program_id(0)
        plane = pid // (n_bands * n_cols)
        h0 = (pid // n_cols % n_bands) * BH
        w0 = (pid % n_cols) * WB
        R: tl.constexpr = (K - 1) // 2
        base = plane.to(tl.int64) * H * W  # int64: P * H * W may exceed 2^31
        wr = h0 - SHIFT + tl.arange(0, HWIN)  # window rows (may be < 0 or >= H)
        cols = w0 + tl.arange(0, WB)
        row_ok = (wr >= 0) & (wr < H)
        y = tl.zeros([HWIN, WB], dtype=out_ptr.dtype.element_ty)
        for k in tl.static_range(K):
            src = cols + (k - R)
            ok = row_ok[:, None] & ((src >= 0) & (src < W))[None, :]
            x = tl.load(in_ptr + base + wr[:, None] * W + src[None, :], mask=ok, other=0.0)
            if MODE == 1:
                x = tl.minimum(tl.maximum(x, 0.0), 1.0)
            y += tl.load(w_ptr + k) * x
        # Band matrix: output row h0 + i takes window row j with tap (j - SHIFT) - i + R.
        oi = tl.arange(0, BH)
        tap = tl.arange(0, HWIN)[None, :] - SHIFT - oi[:, None] + R
        band = tl.load(w_ptr + tap, mask=(tap >= 0) & (tap < K), other=0.0)
        z = tl.dot(band, y, input_precision="ieee")  # exact fp32 FMAs, not TF32
        orow = h0 + oi
        out_ok = ((oi < BH) & (orow < H))[:, None] & (cols < W)[None, :]
        offs = base + orow[:, None] * W + cols[None, :]
        if MODE == 4:
            xin = tl.load(x_ptr + offs, mask=out_ok, other=0.0)
            z = tl.where((xin >= 0.0) & (xin <= 1.0), z, 0.0)
        tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=out_ok)

    @triton.jit
    def _depth_blur_at(t_b, w_ptr, k, pix, pm, D: tl.constexpr, HW, K: tl.constexpr, dt):
        """``b_k = sum_j w_j t_{k+j-R}`` for a block of rays (zero padding in depth)."""
        R: tl.constexpr = (K - 1) // 2
        acc = tl.zeros(pix.shape, dt)
        for j in tl.static_range(K):
            # As a [BLOCK] tensor: k is a Python int under the interpreter.
            src = tl.zeros_like(pix) + (k + (j - R))
            ok = pm & (src >= 0) & (src < D)
            acc += tl.load(w_ptr + j) * tl.load(t_b + src * HW + pix, mask=ok, other=0.0)
        return acc

    @triton.jit
    def _depth_project_fwd_kernel(
        sil_ptr,  # [B, H*W]
        depth_ptr,  # [B, H*W] (RETURN_DEPTH)
        t_ptr,  # [B, D, H*W] plane-blurred, clipped occupancy
        w_ptr,  # [K] taps
        scale_ptr,  # [B] (HAS_SCALE)
        D: tl.constexpr,
        HW,
        tiles,  # cdiv(HW, BLOCK)
        # Constexprs, as in kernels/project.py: a Python float argument would be fp32.
        camera_distance: tl.constexpr,
        max_depth: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        RETURN_DEPTH: tl.constexpr,
        K: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // tiles
        pix = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
        pm = pix < HW
        dt = t_ptr.dtype.element_ty
        t_b = t_ptr + b.to(tl.int64) * D * HW
        if HAS_SCALE:
            sc = tl.load(scale_ptr + b)
        trans = tl.full([BLOCK], 1.0, dt)
        depth = tl.zeros([BLOCK], dt)
        for k in range(D):
            occ = _depth_blur_at(t_b, w_ptr, k, pix, pm, D, HW, K, dt)
            if HAS_SCALE:
                occ = occ * sc
            occ = tl.minimum(tl.maximum(occ, 0.0), 1.0)
            if RETURN_DEPTH:
                z = tl.zeros([BLOCK], dt)
                depth += (occ * trans) * ((z + k) / (z + D) - 0.5 + camera_distance)
            trans = trans * (1.0 - occ)
        out = b.to(tl.int64) * HW + pix
        tl.store(sil_ptr + out, 1.0 - trans, mask=pm)
        if RETURN_DEPTH:
            tl.store(depth_ptr + out, depth + trans * max_depth, mask=pm)

    @triton.jit
    def _compose(a1, c1, ax1, cx1, a2, c2, ax2, cx2):
        """Scan operator over (map F, exclusive map X), maps x -> a x + c, element 1
        before element 2: F = F2 o F1; X = X2 o F1 (X of a single element: identity)."""
        return a2 * a1, a2 * c1 + c2, ax2 * a1, ax2 * c1 + cx2

    @triton.jit
    def _depth_blur_tile(t_b, w_ptr, kk, ok_rows, pix, pm, D: tl.constexpr, HW, K: tl.constexpr):
        """``b_k`` for a [DB, BLOCK] tile of cells ``kk`` (one per row) and rays ``pix``."""
        R: tl.constexpr = (K - 1) // 2
        acc = tl.zeros([kk.shape[0], pix.shape[0]], t_b.dtype.element_ty)
        for j in tl.static_range(K):
            src = kk + (j - R)
            ok = (ok_rows & (src >= 0) & (src < D))[:, None] & pm[None, :]
            x = tl.load(t_b + src[:, None] * HW + pix[None, :], mask=ok, other=0.0)
            acc += tl.load(w_ptr + j) * x
        return acc

    @triton.jit
    def _depth_project_bwd_kernel(
        grad_t_ptr,  # [B, D, H*W] output d(loss)/d(t)
        part_ptr,  # [B * tiles] per-program d(loss)/d(scale) partials (HAS_SCALE)
        t_ptr,  # [B, D, H*W]
        w_ptr,  # [K]
        scale_ptr,  # [B]
        g_sil_ptr,  # [B, H*W]
        g_depth_ptr,  # [B, H*W] (HAS_G_DEPTH)
        D: tl.constexpr,
        HW,
        tiles,
        camera_distance: tl.constexpr,
        max_depth: tl.constexpr,
        HAS_SCALE: tl.constexpr,
        HAS_G_DEPTH: tl.constexpr,
        K: tl.constexpr,
        DB: tl.constexpr,  # next_pow2(D) >= 16
        BLOCK: tl.constexpr,  # rays per program, >= 16
    ):
        # Rows of every [DB, BLOCK] tile run far to near: row i is cell k = D - 1 - i
        # (rows i >= D are padding with o = 0). Then the suffix value R_k (cells after
        # k) is a *forward* exclusive scan, and T_k a product over rows below: only
        # forward scans of a non-commutative operator are needed.
        pid = tl.program_id(0)
        b = pid // tiles
        pix = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
        pm = pix < HW
        dt = t_ptr.dtype.element_ty
        vol = b.to(tl.int64) * D * HW
        t_b = t_ptr + vol
        i = tl.arange(0, DB)
        kk = D - 1 - i
        valid = i < D
        bk = _depth_blur_tile(t_b, w_ptr, kk, valid, pix, pm, D, HW, K)  # b_k
        bprev = _depth_blur_tile(t_b, w_ptr, kk - 1, valid & (kk >= 1), pix, pm, D, HW, K)
        if HAS_SCALE:
            sc = tl.load(scale_ptr + b)
            y = bk * sc
            yprev = bprev * sc
        else:
            y = bk
            yprev = bprev
        o = tl.minimum(tl.maximum(y, 0.0), 1.0)
        oprev = tl.minimum(tl.maximum(yprev, 0.0), 1.0)  # o_{k-1}; 0 for k = 0
        # T_k = prod_{m<k} (1 - o_m): product over rows >= i of (1 - o_{k-1}).
        trans = tl.cumprod(1.0 - oprev, axis=0, reverse=True)
        # Per-cell value v_k and escape value v_E.
        out = b.to(tl.int64) * HW + pix
        v_e = -tl.load(g_sil_ptr + out, mask=pm, other=0.0)
        if HAS_G_DEPTH:
            gd = tl.load(g_depth_ptr + out, mask=pm, other=0.0)
            v_e += gd * max_depth
            z = tl.zeros([DB, BLOCK], dt)
            dk = (z + kk[:, None]) / (z + D) - 0.5 + camera_distance
            v = tl.where(valid[:, None], gd[None, :] * dk, 0.0)
        else:
            v = tl.zeros([DB, BLOCK], dt)
        # R_k = (f_{k+1} o ... o f_{D-1})(v_E) with f_m(x) = (1 - o_m) x + o_m v_m.
        ones = tl.full([DB, BLOCK], 1.0, dt)
        zeros = tl.zeros([DB, BLOCK], dt)
        _, _, ax, cx = tl.associative_scan((1.0 - o, o * v, ones, zeros), 0, _compose)
        rest = ax * v_e[None, :] + cx
        g_o = tl.where(valid[:, None], trans * (v - rest), 0.0)
        # Output clip backward (inclusive bounds, as torch), then the scale.
        live = (y >= 0.0) & (y <= 1.0)
        if HAS_SCALE:
            g_b = tl.where(live, g_o * sc, 0.0)
            part = tl.sum(tl.sum(tl.where(live, g_o * bk, 0.0), axis=1), axis=0)
            tl.store(part_ptr + pid, part)
        else:
            g_b = tl.where(live, g_o, 0.0)
        # Depth-blur backward (the transposed band is the band: symmetric taps):
        # g_t[i'] = sum_i w[i - i' + R] g_b[i], a [DB, DB] x [DB, BLOCK] product on chip.
        R: tl.constexpr = (K - 1) // 2
        tap = i[None, :] - i[:, None] + R
        band = tl.load(w_ptr + tap, mask=(tap >= 0) & (tap < K), other=0.0)
        g_t = tl.dot(band, g_b, input_precision="ieee")
        ok = valid[:, None] & pm[None, :]
        tl.store(
            grad_t_ptr + vol + kk[:, None] * HW + pix[None, :],
            g_t.to(grad_t_ptr.dtype.element_ty),
            mask=ok,
        )


# Launch configurations (GPU), read by profiling/compile_check.py. Unmeasured on a GPU.
# Plane pass: whole columns of planes up to 64 rows, in tiles of 32 columns (wider
# tiles spill in fp32: the FMA dot layout holds both operands); taller planes in bands of
# 32 output rows with their K - 1 halo rows.
PLANE_WARPS = 8
PLANE_MAX_ROWS = 64
PLANE_BAND = 32
PLANE_COLS = 32
# Depth projection: forward 128 rays per program (one coalesced 512 B row per depth
# step); backward 32 rays x the whole column per program (two [64, 32] tiles per array).
PROJECT_BLOCK = 128
PROJECT_WARPS = 4
PROJECT_BWD_BLOCK = 16
PROJECT_BWD_WARPS = 8


# The backward's depth-blur product stages a [DB, DB] band and a [DB, BLOCK] tile in
# shared memory (DB = next_pow2(D)): at D = 256 in fp32 Triton 3.6 asks for 278,528 B,
# over the 232,448 B (227 KiB) a Hopper block may use, and the launch fails. The
# estimate below is an upper bound of that (profiling/RESULTS.md: measured shared memory
# at 64^3, 128^3 and 256^3); blur_ray_project takes the separate kernels ("passes") for
# volumes whose backward does not fit, and depth_project_bwd refuses them.
SMEM_LIMIT_SM90 = 232_448


def depth_bwd_smem_bytes(D: int, itemsize: int) -> int:
    """Upper bound of the shared memory (bytes) of :func:`depth_project_bwd` at depth D."""
    DB = max(16, next_pow2(D))
    return (DB * DB + DB * PROJECT_BWD_BLOCK) * itemsize


def smem_limit(device: torch.device) -> int:
    """Shared memory one block may use on ``device`` (opt-in maximum); sm_90's off a GPU
    (the interpreter has no limit, but the guard should behave as on the H100/H200)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        limit = getattr(props, "shared_memory_per_block_optin", 0)
        if limit:
            return int(limit)
    return SMEM_LIMIT_SM90


def fused_bwd_fits(D: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether :func:`depth_project_bwd` can launch for depth ``D`` in ``dtype``."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return depth_bwd_smem_bytes(D, itemsize) <= smem_limit(device)


def plane_config(H: int, W: int, K: int) -> tuple[int, int, int, int, int, int]:
    """(BH, HWIN, WB, SHIFT, n_bands, n_cols) of the plane pass for ``H x W`` planes."""
    WB = max(16, min(next_pow2(W), PLANE_COLS))
    n_cols = -(-W // WB)
    HB = max(16, next_pow2(H))
    if HB <= PLANE_MAX_ROWS:
        return HB, HB, WB, 0, 1, n_cols
    r = (K - 1) // 2
    BH = PLANE_BAND
    return BH, max(16, next_pow2(BH + 2 * r)), WB, r, -(-H // BH), n_cols


def plane_blur(inp: Tensor, taps: Tensor, mode: int, x: Tensor | None = None) -> Tensor:
    """Blur every (H, W) plane of contiguous ``inp`` [B, C, D, H, W] along W and H."""
    H, W = inp.shape[-2:]
    P = inp.numel() // max(1, H * W)
    out = new_output(inp, *inp.shape)
    if inp.numel() == 0:
        return out
    BH, HWIN, WB, SHIFT, n_bands, n_cols = plane_config(H, W, taps.numel())
    with device_guard(inp):
        _plane_blur_kernel[(P * n_bands * n_cols,)](
            out,
            inp,
            taps,
            x if x is not None else inp,
            H,
            W,
            n_bands,
            n_cols,
            MODE=mode,
            K=taps.numel(),
            BH=BH,
            HWIN=HWIN,
            WB=WB,
            SHIFT=SHIFT,
            num_warps=PLANE_WARPS,
        )
    return out


def depth_project_fwd(
    t: Tensor,  # [B, 1, D, H, W] plane-blurred clipped occupancy
    taps: Tensor,
    scale: Tensor | None,
    camera_distance: float,
    max_depth: float,
    return_depth: bool,
) -> tuple[Tensor, Tensor | None]:
    """Depth blur, scale, clip and ray termination in one walk per ray."""
    B, _, D, H, W = t.shape
    HW = H * W
    sil = new_output(t, B, H, W)
    depth = new_output(t, B, H, W) if return_depth else None
    if B * HW == 0:
        return sil, depth
    BLOCK = launch_block(PROJECT_BLOCK, HW, interpret_cap=4096)
    tiles = triton.cdiv(HW, BLOCK)
    with device_guard(t):
        _depth_project_fwd_kernel[(B * tiles,)](
            sil,
            depth if depth is not None else sil,
            t,
            taps,
            scale if scale is not None else t,
            D,
            HW,
            tiles,
            camera_distance=float(camera_distance),
            max_depth=float(max_depth),
            HAS_SCALE=scale is not None,
            RETURN_DEPTH=return_depth,
            K=taps.numel(),
            BLOCK=BLOCK,
            num_warps=PROJECT_WARPS,
        )
    return sil, depth


def depth_project_bwd(
    t: Tensor,
    taps: Tensor,
    scale: Tensor | None,
    g_sil: Tensor,  # [B, H, W]
    g_depth: Tensor | None,  # [B, H, W]
    camera_distance: float,
    max_depth: float,
) -> tuple[Tensor, Tensor | None]:
    """Backward of :func:`depth_project_fwd`: d(t) and d(scale) ``[B]`` (or None)."""
    B, _, D, H, W = t.shape
    HW = H * W
    if not fused_bwd_fits(D, t.dtype, t.device):
        need = depth_bwd_smem_bytes(D, t.element_size())
        raise ValueError(
            f"depth_project_bwd: depth {D} in {t.dtype} needs about {need} B of shared "
            f"memory per block, over the {smem_limit(t.device)} B available; use the "
            "separate kernels (blur_ray_project does so itself, kernel_variant='passes')"
        )
    grad_t = new_output(t, *t.shape)
    # At least 16 rays per program: tl.dot needs every dimension >= 16.
    BLOCK = max(16, launch_block(PROJECT_BWD_BLOCK, HW, interpret_cap=4096))
    tiles = triton.cdiv(HW, BLOCK) if HW else 0
    part = new_output(t, B * tiles) if scale is not None else None
    if B * HW == 0:
        return grad_t, (t.new_zeros(B) if scale is not None else None)
    with device_guard(t):
        _depth_project_bwd_kernel[(B * tiles,)](
            grad_t,
            part if part is not None else t,
            t,
            taps,
            scale if scale is not None else t,
            g_sil,
            g_depth if g_depth is not None else g_sil,
            D,
            HW,
            tiles,
            camera_distance=float(camera_distance),
            max_depth=float(max_depth),
            HAS_SCALE=scale is not None,
            HAS_G_DEPTH=g_depth is not None,
            K=taps.numel(),
            DB=max(16, next_pow2(D)),
            BLOCK=BLOCK,
            num_warps=PROJECT_BWD_WARPS,
        )
    # Programs are numbered b * tiles + tile: a fixed-order sum per batch element.
    return grad_t, (part.view(B, tiles).sum(1) if part is not None else None)


class BlurRayProject(torch.autograd.Function):
    """Autograd glue for the fused smoothing + projection (validated, contiguous input).
    Saves the raw volume (for the input clip mask) and the plane-blurred volume."""

    @staticmethod
    def forward(ctx, volume, scale, sigma, kernel_size, camera_distance, max_depth, ret_depth):
        taps = taps_for(sigma, kernel_size, volume)
        t = plane_blur(volume, taps, _PLANE_CLIP_IN)
        sil, depth = depth_project_fwd(t, taps, scale, camera_distance, max_depth, ret_depth)
        ctx.save_for_backward(volume, t, scale)
        ctx.params = (sigma, kernel_size, camera_distance, max_depth)
        return sil, depth

    @staticmethod
    def backward(ctx, g_sil, g_depth):
        volume, t, scale = ctx.saved_tensors
        if not any(ctx.needs_input_grad[:2]):
            return (None,) * 7
        sigma, kernel_size, camera_distance, max_depth = ctx.params
        taps = taps_for(sigma, kernel_size, volume)
        if g_sil is None:
            g_sil = volume.new_zeros(volume.shape[0], *volume.shape[3:])
        g_t, g_scale = depth_project_bwd(
            t,
            taps,
            scale,
            g_sil.contiguous(),
            g_depth.contiguous() if g_depth is not None else None,
            camera_distance,
            max_depth,
        )
        g_vol = plane_blur(g_t, taps, _PLANE_GRAD_CLIP_OUT, x=volume)
        return (
            g_vol if ctx.needs_input_grad[0] else None,
            g_scale if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
            None,
        )


def blur_ray_project(
    volume: Tensor,  # [B, 1, D, H, W] raw splatted occupancy
    sigma: float,
    kernel_size: int,
    scale: Tensor | None = None,  # [B] occupancy scale, None = 1
    camera_distance: float = 2.0,
    max_depth: float = 10.0,
    return_depth: bool = True,
    backend: Backend = "auto",
) -> RayProjection:
    """``ray_project(blur_occupancy(volume, sigma, kernel_size, scale), ...)`` in one op.

    Returns :class:`~kernels.reference.RayProjection` with silhouette ``[B, H, W]`` and
    depth ``[B, H, W]`` (if ``return_depth``; colour and probabilities are None).
    Differentiable w.r.t. ``volume`` and ``scale``. The Triton path is the fused
    kernels, or the two separate Triton ops where the fused backward's shared memory
    would not fit (:func:`fused_bwd_fits`: depth 256 in fp32, above 128 in fp64); the
    CPU and reference paths compose the two ops.
    """
    check_tensor("volume", volume, ndim=5)
    if volume.shape[1] != 1:
        raise ValueError(f"volume must be [B, 1, D, H, W], got {tuple(volume.shape)}")
    check_kernel(sigma, kernel_size)
    check_scale(scale, volume.shape[0])
    path = select_backend(backend, volume)
    if path == "triton" and not fused_bwd_fits(volume.shape[2], volume.dtype, volume.device):
        # The fused backward cannot launch at this depth: the separate Triton kernels.
        occ = blur_occupancy(volume, float(sigma), kernel_size, scale, backend="triton")
        out = ray_project(occ, None, camera_distance, max_depth, 1.0, return_depth, False, "triton")
        return RayProjection(out.silhouette, out.depth, None, None)
    if path == "triton":
        sc = scale.to(volume.dtype).contiguous() if scale is not None else None
        sil, depth = BlurRayProject.apply(
            volume.contiguous(),
            sc,
            float(sigma),
            kernel_size,
            float(camera_distance),
            float(max_depth),
            bool(return_depth),
        )
        return RayProjection(sil, depth, None, None)
    if path == "cpu":
        occ = cpu.blur_occupancy_cpu(volume, float(sigma), kernel_size, scale)
        out = cpu.ray_project_cpu(occ, None, camera_distance, max_depth, 1.0, return_depth, False)
        return RayProjection(out.silhouette, out.depth, None, None)
    return blur_ray_project_ref(
        volume, float(sigma), kernel_size, scale, camera_distance, max_depth, return_depth
    )


def compile_cases(grid: int, K: int, proj: dict):
    """(name, kernel, constexprs, num_warps) at grid^3 and K taps, for compile_check."""
    BH, HWIN, WB, SHIFT, _, _ = plane_config(grid, grid, K)
    for mode, tag in ((_PLANE_CLIP_IN, "clip_in"), (_PLANE_GRAD_CLIP_OUT, "grad_clip_out")):
        c = dict(MODE=mode, K=K, BH=BH, HWIN=HWIN, WB=WB, SHIFT=SHIFT)
        yield f"fused plane_blur {tag}", _plane_blur_kernel, c, PLANE_WARPS
    pr = dict(camera_distance=proj["camera_distance"], max_depth=proj["max_depth"])
    for depth in (False, True):
        tag = "+depth" if depth else ""
        c = dict(D=grid, HAS_SCALE=True, RETURN_DEPTH=depth, K=K, BLOCK=PROJECT_BLOCK, **pr)
        yield f"fused depth_project_fwd{tag}", _depth_project_fwd_kernel, c, PROJECT_WARPS
        c = dict(
            D=grid,
            HAS_SCALE=True,
            HAS_G_DEPTH=depth,
            K=K,
            DB=max(16, next_pow2(grid)),
            BLOCK=PROJECT_BWD_BLOCK,
            **pr,
        )
        yield f"fused depth_project_bwd{tag}", _depth_project_bwd_kernel, c, PROJECT_BWD_WARPS
