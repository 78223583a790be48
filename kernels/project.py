"""Ray-termination projection of occupancy volumes along depth (DRC), and the PTN
max-projection baseline.

Layers (STYLE.md section 2): ``_project_fwd_kernel`` / ``_project_bwd_kernel`` (Triton) ->
launchers :func:`project_fwd` / :func:`project_bwd` -> :class:`RayProject` (autograd) ->
public :func:`ray_project` (validation + dispatch), and :func:`max_project`.

Each program owns a block of rays (pixels) of one batch element and walks the depth
cells near to far, so every load of a depth slice is coalesced across the block.

Backward without the ``[B, D+1, H, W]`` probabilities: with per-cell "values"
``v_k = g_depth d_k + sum_c g_color_c c_ck (+ g_probs_k)`` and the escape value
``v_E = g_depth max_depth + sum_c g_color_c background - g_sil (+ g_probs_E)``, the
loss is ``L = sum_k o_k T_k v_k + T_{D+1} v_E`` with ``T_k = prod_{j<k} (1 - o_j)``.
The suffix value ``R_k`` (what the ray is worth after cell k, per unit of transmittance)
obeys ``R_D = v_E``, ``R_{k-1} = o_k v_k + (1 - o_k) R_k`` and
``dL/do_k = T_k (v_k - R_k)``: no division, exact at o = 1. The backward program first
walks front to back writing ``T_k`` into the gradient buffer, then back to front
overwriting it with the gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kernels import cpu
from kernels._utils import (
    Backend,
    check_tensor,
    device_guard,
    has_triton,
    launch_block,
    new_output,
    next_pow2,
    select_backend,
)
from kernels.reference import RayProjection, max_project_ref, ray_project_ref

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _cell_depth(k, D, camera_distance, dt: tl.constexpr, BLOCK: tl.constexpr):
        """Depth of cell k as the reference computes it, ``k / D - 0.5 + d``, broadcast
        to [BLOCK] (the loop index is a Python int under the interpreter, a tensor when
        compiled: adding it to a typed zero tensor works for both)."""
        z = tl.zeros([BLOCK], dt)
        return (z + k) / (z + D) - 0.5 + camera_distance

    @triton.jit
    def _project_fwd_kernel(
        sil_ptr,  # [B, H*W]
        depth_ptr,  # [B, H*W] (RETURN_DEPTH)
        color_ptr,  # [B, C, H*W] (HAS_COLOR)
        probs_ptr,  # [B, D+1, H*W] (RETURN_PROBS)
        occ_ptr,  # [B, D, H*W]
        colors_ptr,  # [B, C, D, H*W]
        D: tl.constexpr,  # depth cells: a compile-time loop bound (one build per grid depth)
        HW,
        tiles,  # cdiv(HW, BLOCK)
        C,
        # Compile-time constants, not runtime arguments: Triton passes a Python float
        # argument as fp32 (mangle_type(2.1) == "fp32"), which would round 2.1 in a
        # float64 kernel; a constexpr float meets fp64 tensors as an exact fp64
        # literal. One build per (distance, max depth, background): fixed per renderer.
        camera_distance: tl.constexpr,
        max_depth: tl.constexpr,
        background: tl.constexpr,
        HAS_COLOR: tl.constexpr,
        RETURN_DEPTH: tl.constexpr,
        RETURN_PROBS: tl.constexpr,
        C_BLOCK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // tiles
        pix = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
        pm = pix < HW
        dt = occ_ptr.dtype.element_ty
        occ_b = occ_ptr + b.to(tl.int64) * D * HW  # int64: B * D * H * W may exceed 2^31
        trans = tl.full([BLOCK], 1.0, dt)  # T_k = prod_{j<k} (1 - o_j)
        depth = tl.zeros([BLOCK], dt)
        if HAS_COLOR:
            ch = tl.arange(0, C_BLOCK)
            cm = ch[:, None] < C
            col_b = colors_ptr + b.to(tl.int64) * C * D * HW
            ch_off = ch[:, None].to(tl.int64) * D * HW + pix[None, :]
            color = tl.zeros([C_BLOCK, BLOCK], dt)
        if RETURN_PROBS:
            probs_b = probs_ptr + b.to(tl.int64) * (D + 1) * HW
        for k in range(D):
            o = tl.load(occ_b + k * HW + pix, mask=pm, other=0.0)
            p = o * trans
            if RETURN_DEPTH:
                # Cell depth as the reference: k / D - 0.5 + camera_distance.
                depth += p * _cell_depth(k, D, camera_distance, dt, BLOCK)
            if HAS_COLOR:
                c = tl.load(col_b + ch_off + k * HW, mask=cm & pm[None, :], other=0.0)
                color += p[None, :] * c
            if RETURN_PROBS:
                tl.store(probs_b + k * HW + pix, p, mask=pm)
            trans = trans * (1.0 - o)
        out = b.to(tl.int64) * HW + pix
        tl.store(sil_ptr + out, 1.0 - trans, mask=pm)
        if RETURN_DEPTH:
            tl.store(depth_ptr + out, depth + trans * max_depth, mask=pm)
        if HAS_COLOR:
            color += trans[None, :] * background
            tl.store(
                color_ptr + b.to(tl.int64) * C * HW + ch[:, None] * HW + pix[None, :],
                color,
                mask=cm & pm[None, :],
            )
        if RETURN_PROBS:
            tl.store(probs_b + D * HW + pix, trans, mask=pm)

    @triton.jit
    def _project_bwd_kernel(
        grad_occ_ptr,  # [B, D, H*W] (first holds T_k, then the gradient)
        grad_colors_ptr,  # [B, C, D, H*W] (HAS_COLOR)
        occ_ptr,  # [B, D, H*W]
        colors_ptr,  # [B, C, D, H*W]
        g_sil_ptr,  # [B, H*W]
        g_depth_ptr,  # [B, H*W] (HAS_G_DEPTH)
        g_color_ptr,  # [B, C, H*W] (HAS_COLOR)
        g_probs_ptr,  # [B, D+1, H*W] (HAS_G_PROBS)
        D: tl.constexpr,  # depth cells: a compile-time loop bound (one build per grid depth)
        HW,
        tiles,
        C,
        # Compile-time constants, not runtime arguments: Triton passes a Python float
        # argument as fp32 (mangle_type(2.1) == "fp32"), which would round 2.1 in a
        # float64 kernel; a constexpr float meets fp64 tensors as an exact fp64
        # literal. One build per (distance, max depth, background): fixed per renderer.
        camera_distance: tl.constexpr,
        max_depth: tl.constexpr,
        background: tl.constexpr,
        HAS_COLOR: tl.constexpr,
        HAS_G_DEPTH: tl.constexpr,
        HAS_G_PROBS: tl.constexpr,
        C_BLOCK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // tiles
        pix = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
        pm = pix < HW
        dt = occ_ptr.dtype.element_ty
        vol = b.to(tl.int64) * D * HW
        occ_b = occ_ptr + vol
        gocc_b = grad_occ_ptr + vol
        out = b.to(tl.int64) * HW + pix

        # Pass 1, near to far: store the exclusive transmittance T_k in the grad buffer.
        trans = tl.full([BLOCK], 1.0, dt)
        for k in range(D):
            o = tl.load(occ_b + k * HW + pix, mask=pm, other=0.0)
            tl.store(gocc_b + k * HW + pix, trans, mask=pm)
            trans = trans * (1.0 - o)
        # The same thread reads back what it wrote (same offsets and layout); the barrier
        # is belt and braces.
        tl.debug_barrier()

        # Escape value v_E.
        rest = -tl.load(g_sil_ptr + out, mask=pm, other=0.0)
        if HAS_G_DEPTH:
            gd = tl.load(g_depth_ptr + out, mask=pm, other=0.0)
            rest += gd * max_depth
        if HAS_COLOR:
            ch = tl.arange(0, C_BLOCK)
            cm = ch[:, None] < C
            gc = tl.load(
                g_color_ptr + b.to(tl.int64) * C * HW + ch[:, None] * HW + pix[None, :],
                mask=cm & pm[None, :],
                other=0.0,
            )  # [C_BLOCK, BLOCK]
            rest += tl.sum(gc, axis=0) * background
            ch_off = b.to(tl.int64) * C * D * HW + ch[:, None].to(tl.int64) * D * HW + pix[None, :]
        if HAS_G_PROBS:
            gp_b = g_probs_ptr + b.to(tl.int64) * (D + 1) * HW
            rest += tl.load(gp_b + D * HW + pix, mask=pm, other=0.0)

        # Pass 2, far to near: R_k recursion, gradient T_k (v_k - R_k).
        for kk in range(D):
            k = D - 1 - kk
            o = tl.load(occ_b + k * HW + pix, mask=pm, other=0.0)
            t_k = tl.load(gocc_b + k * HW + pix, mask=pm, other=0.0)
            v = tl.zeros([BLOCK], dt)
            if HAS_G_DEPTH:
                v += gd * _cell_depth(k, D, camera_distance, dt, BLOCK)
            if HAS_COLOR:
                c = tl.load(colors_ptr + ch_off + k * HW, mask=cm & pm[None, :], other=0.0)
                v += tl.sum(gc * c, axis=0)
                tl.store(
                    grad_colors_ptr + ch_off + k * HW,
                    gc * (o * t_k)[None, :],
                    mask=cm & pm[None, :],
                )
            if HAS_G_PROBS:
                v += tl.load(gp_b + k * HW + pix, mask=pm, other=0.0)
            tl.store(gocc_b + k * HW + pix, t_k * (v - rest), mask=pm)
            rest = o * v + (1.0 - o) * rest


# 128 rays per program: one coalesced 512 B row per depth slice (float32). Unmeasured
# choice; see profiling/bench_kernels.py.
_GPU_BLOCK = 128


def project_fwd(
    occ: Tensor,  # [B, 1, D, H, W] contiguous
    colors: Tensor | None,  # [B, C, D, H, W] contiguous
    camera_distance: float,
    max_depth: float,
    background: float,
    return_depth: bool,
    return_probs: bool,
) -> RayProjection:
    """Launch the forward projection; outputs as :func:`ray_project`."""
    B, _, D, H, W = occ.shape
    HW = H * W
    C = 0 if colors is None else colors.shape[1]
    sil = new_output(occ, B, H, W)
    depth = new_output(occ, B, H, W) if return_depth else None
    color = new_output(occ, B, C, H, W) if colors is not None else None
    probs = new_output(occ, B, D + 1, H, W) if return_probs else None
    if B * HW == 0:
        return RayProjection(sil, depth, color, probs)
    BLOCK = launch_block(_GPU_BLOCK, HW, interpret_cap=4096)
    tiles = triton.cdiv(HW, BLOCK)
    with device_guard(occ):
        _project_fwd_kernel[(B * tiles,)](
            sil,
            depth if depth is not None else sil,
            color if color is not None else sil,
            probs if probs is not None else sil,
            occ,
            colors if colors is not None else occ,
            D,
            HW,
            tiles,
            C,
            camera_distance=float(camera_distance),
            max_depth=float(max_depth),
            background=float(background),
            HAS_COLOR=colors is not None,
            RETURN_DEPTH=return_depth,
            RETURN_PROBS=return_probs,
            C_BLOCK=next_pow2(max(C, 1)),
            BLOCK=BLOCK,
        )
    return RayProjection(sil, depth, color, probs)


def project_bwd(
    occ: Tensor,  # [B, 1, D, H, W]
    colors: Tensor | None,  # [B, C, D, H, W]
    g_sil: Tensor,  # [B, H, W]
    g_depth: Tensor | None,  # [B, H, W]
    g_color: Tensor | None,  # [B, C, H, W]
    g_probs: Tensor | None,  # [B, D+1, H, W]
    camera_distance: float,
    max_depth: float,
    background: float,
) -> tuple[Tensor, Tensor | None]:
    """Launch the backward projection; returns d(occupancy) and d(colors)."""
    B, _, D, H, W = occ.shape
    HW = H * W
    C = 0 if colors is None else colors.shape[1]
    grad_occ = new_output(occ, *occ.shape)
    grad_colors = new_output(colors, *colors.shape) if colors is not None else None
    if B * HW == 0:
        return grad_occ, grad_colors
    if colors is not None and g_color is None:
        g_color = colors.new_zeros(B, C, H, W)
    BLOCK = launch_block(_GPU_BLOCK, HW, interpret_cap=4096)
    tiles = triton.cdiv(HW, BLOCK)
    dummy = occ
    with device_guard(occ):
        _project_bwd_kernel[(B * tiles,)](
            grad_occ,
            grad_colors if grad_colors is not None else dummy,
            occ,
            colors if colors is not None else dummy,
            g_sil,
            g_depth if g_depth is not None else dummy,
            g_color if g_color is not None else dummy,
            g_probs if g_probs is not None else dummy,
            D,
            HW,
            tiles,
            C,
            camera_distance=float(camera_distance),
            max_depth=float(max_depth),
            background=float(background),
            HAS_COLOR=colors is not None,
            HAS_G_DEPTH=g_depth is not None,
            HAS_G_PROBS=g_probs is not None,
            C_BLOCK=next_pow2(max(C, 1)),
            BLOCK=BLOCK,
        )
    return grad_occ, grad_colors


class RayProject(torch.autograd.Function):
    """Autograd glue for the Triton projection (validated, contiguous inputs). Saves only
    the inputs: the backward recomputes the transmittance."""

    @staticmethod
    def forward(
        ctx, occ, colors, camera_distance, max_depth, background, return_depth, return_probs
    ):
        out = project_fwd(
            occ, colors, camera_distance, max_depth, background, return_depth, return_probs
        )
        ctx.save_for_backward(occ, colors)
        ctx.params = (camera_distance, max_depth, background)
        return tuple(out)

    @staticmethod
    def backward(ctx, g_sil, g_depth, g_color, g_probs):
        occ, colors = ctx.saved_tensors
        if not any(ctx.needs_input_grad[:2]):
            return (None,) * 7

        def c(t):
            return t.contiguous() if t is not None else None

        if g_sil is None:
            g_sil = occ.new_zeros(occ.shape[0], *occ.shape[3:])
        grad_occ, grad_colors = project_bwd(
            occ, colors, c(g_sil), c(g_depth), c(g_color), c(g_probs), *ctx.params
        )
        return (
            grad_occ if ctx.needs_input_grad[0] else None,
            grad_colors if ctx.needs_input_grad[1] else None,
            None,
            None,
            None,
            None,
            None,
        )


def ray_project(
    occupancy: Tensor,  # [B, 1, D, H, W], values in [0, 1]
    colors: Tensor | None = None,  # [B, C, D, H, W]
    camera_distance: float = 2.0,
    max_depth: float = 10.0,
    background: float = 1.0,
    return_depth: bool = True,
    return_probs: bool = False,
    backend: Backend = "auto",
    logsum_clip: float | None = None,
) -> RayProjection:
    """Project ``occupancy`` along D (near to far) by ray termination.

    Returns :class:`~kernels.reference.RayProjection` with silhouette ``[B, H, W]``,
    expected depth ``[B, H, W]`` (``max_depth`` where the ray escapes), expected colour
    ``[B, C, H, W]`` over ``background`` (if ``colors``), and the per-cell termination
    probabilities ``[B, D+1, H, W]`` if ``return_probs`` (last slice: the ray escapes).
    Differentiable w.r.t. ``occupancy`` and ``colors`` (also through ``probs``).

    ``logsum_clip=c``: the original's log-space form with occupancy clipped to
    ``[c, 1 - c]`` (:func:`~kernels.reference.ray_termination_logsum`, the oracle). The
    Triton and CPU paths get it without a kernel of their own (:func:`_logsum_from_exact`):
    the exact products of the clipped occupancy, with the original's ``exp(c)`` on
    ``p_1`` and the escape added in torch; equal to the reference up to rounding.
    """
    check_tensor("occupancy", occupancy, ndim=5)
    if occupancy.shape[1] != 1:
        raise ValueError(f"occupancy must be [B, 1, D, H, W], got {tuple(occupancy.shape)}")
    if colors is not None:
        check_tensor("colors", colors, ndim=5)
        if colors.shape[0] != occupancy.shape[0] or colors.shape[2:] != occupancy.shape[2:]:
            raise ValueError(
                f"colors must be [B, C, D, H, W] matching occupancy {tuple(occupancy.shape)}, "
                f"got {tuple(colors.shape)}"
            )
    path = select_backend(backend, occupancy, colors)
    if logsum_clip is not None:
        if not 0.0 < logsum_clip < 0.5:
            raise ValueError(f"logsum_clip must be in (0, 0.5), got {logsum_clip}")
        if path == "reference":
            return ray_project_ref(
                occupancy,
                colors,
                camera_distance,
                max_depth,
                background,
                return_depth,
                return_probs,
                logsum_clip,
            )
        clipped = occupancy.clamp(logsum_clip, 1.0 - logsum_clip)
        exact = ray_project(
            clipped,
            colors,
            camera_distance,
            max_depth,
            background,
            return_depth,
            return_probs,
            path,
        )
        return _logsum_from_exact(
            exact, clipped, colors, logsum_clip, camera_distance, max_depth, background,
            return_depth,
        )  # fmt: skip
    if path == "triton":
        out = RayProject.apply(
            occupancy.contiguous(),
            colors.contiguous() if colors is not None else None,
            float(camera_distance),
            float(max_depth),
            float(background),
            bool(return_depth),
            bool(return_probs),
        )
        return RayProjection(*out)
    if path == "cpu":
        return cpu.ray_project_cpu(
            occupancy, colors, camera_distance, max_depth, background, return_depth, return_probs
        )
    return ray_project_ref(
        occupancy, colors, camera_distance, max_depth, background, return_depth, return_probs
    )


def _logsum_from_exact(
    exact: RayProjection,  # ray_project of the clipped occupancy
    clipped: Tensor,  # [B, 1, D, H, W] occupancy clipped to [c, 1 - c]
    colors: Tensor | None,
    c: float,
    camera_distance: float,
    max_depth: float,
    background: float,
    return_depth: bool,
) -> RayProjection:
    """The original's log-space outputs from the exact products of the clipped occupancy.

    ``exp(sum of logs)`` of the clipped values is their product, so only the original's
    log-space "unity" differs: it pads with ``c`` (not 0), which puts a factor ``exp(c)``
    on ``p_1`` and on the escape ``p_{D+1}``, and its silhouette is ``sum_k p_k``. With
    ``f = exp(c) - 1``, ``o_1`` the first cell and ``E = 1 - silhouette`` the exact
    escape: silhouette ``+ f o_1``, depth ``+ f (o_1 d_1 + E max_depth)``, colour
    ``+ f (o_1 c_1 + E background)``.
    """
    f = math.expm1(c)
    o1 = clipped[:, 0, 0]  # [B, H, W]
    escape = 1.0 - exact.silhouette
    sil = exact.silhouette + f * o1
    depth = None
    if return_depth:
        d1 = camera_distance - 0.5  # depth of the first cell (depth_values)
        depth = exact.depth + f * (o1 * d1 + escape * max_depth)
    color = None
    if colors is not None:
        color = exact.color + f * (o1[:, None] * colors[:, :, 0] + escape[:, None] * background)
    probs = exact.probs
    if probs is not None:
        probs = torch.cat((probs[:, :1] * (1 + f), probs[:, 1:-1], probs[:, -1:] * (1 + f)), 1)
    return RayProjection(sil, depth, color, probs)


def max_project(occupancy: Tensor) -> Tensor:
    """PTN baseline: silhouette ``[B, H, W]`` = max over depth of ``[B, 1, D, H, W]``.

    Always the reference: a single reduction that torch already does at bandwidth."""
    check_tensor("occupancy", occupancy, ndim=5)
    return max_project_ref(occupancy)
