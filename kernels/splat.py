"""Trilinear point splatting: points -> occupancy (and feature) volumes.

Layers (STYLE.md section 2): ``_splat_fwd_kernel`` / ``_splat_bwd_kernel`` (Triton) ->
launchers :func:`splat_fwd` / :func:`splat_bwd` -> :class:`SplatPoints` (autograd) ->
public :func:`splat_points` (validation + dispatch; the reference is the CPU path).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels import cpu
from kernels._utils import (
    Backend,
    check_size,
    check_tensor,
    device_guard,
    has_triton,
    launch_block,
    new_output,
    next_pow2,
    select_backend,
)
from kernels.reference import splat_points_ref

if has_triton():
    import triton
    import triton.language as tl

    @triton.jit
    def _corner_weight(r0, r1, r2, A: tl.constexpr, B: tl.constexpr, C: tl.constexpr):
        """Trilinear weight of corner (A, B, C) and its partials d/dr0, d/dr1, d/dr2.

        Same association as the reference, ``(w0 * w1) * w2``, so results agree to the
        last bit in the forward pass."""
        w0 = r0 if A == 1 else 1.0 - r0
        w1 = r1 if B == 1 else 1.0 - r1
        w2 = r2 if C == 1 else 1.0 - r2
        s0 = 1.0 if A == 1 else -1.0
        s1 = 1.0 if B == 1 else -1.0
        s2 = 1.0 if C == 1 else -1.0
        return w0 * w1 * w2, s0 * (w1 * w2), s1 * (w0 * w2), s2 * (w0 * w1)

    @triton.jit
    def _splat_coords(points_ptr, b, offs, N, D, H, W):
        """Load a block of points of batch ``b``; return the in-grid mask, the base cell
        indices and the fractional offsets (zeroed for dropped points, as the reference)."""
        m = offs < N
        p = points_ptr + b.to(tl.int64) * N * 3 + offs * 3
        # `other` outside [-0.5, 0.5] marks padding lanes as dropped.
        x0 = tl.load(p + 0, mask=m, other=2.0)
        x1 = tl.load(p + 1, mask=m, other=2.0)
        x2 = tl.load(p + 2, mask=m, other=2.0)
        # NaN fails every comparison, so NaN points are dropped too.
        inside = (x0 >= -0.5) & (x0 <= 0.5) & (x1 >= -0.5) & (x1 <= 0.5)
        inside = inside & (x2 >= -0.5) & (x2 <= 0.5) & m
        x0 = tl.where(inside, x0, 0.0)
        x1 = tl.where(inside, x1, 0.0)
        x2 = tl.where(inside, x2, 0.0)
        # u = (c + 0.5) * (S - 1): add, then multiply, as the reference; r = u - floor(u)
        # from the *rounded* u: the launches pass enable_fp_fusion=False (SPLAT_OPTIONS),
        # else the GPU contracts u - floor(u) into fma((c + 0.5), S - 1, -floor(u)).
        u0 = (x0 + 0.5) * (D - 1).to(x0.dtype)
        u1 = (x1 + 0.5) * (H - 1).to(x1.dtype)
        u2 = (x2 + 0.5) * (W - 1).to(x2.dtype)
        f0 = tl.floor(u0)
        f1 = tl.floor(u1)
        f2 = tl.floor(u2)
        return inside, f0.to(tl.int32), f1.to(tl.int32), f2.to(tl.int32), u0 - f0, u1 - f1, u2 - f2

    @triton.jit
    def _splat_fwd_kernel(
        occ_ptr,  # [B, 1, D, H, W] zero-initialised, accumulated with atomics
        feat_ptr,  # [B, C, D, H, W] zero-initialised (unused without features)
        points_ptr,  # [B, N, 3]
        features_ptr,  # [B, N, C]
        N,
        D,
        H,
        W,
        n_blocks,  # cdiv(N, BLOCK)
        C,
        HAS_FEAT: tl.constexpr,
        C_BLOCK: tl.constexpr,  # next_pow2(C)
        BLOCK: tl.constexpr,
    ):
        # One program owns BLOCK points of one batch element and scatters all 8 corners
        # (and all feature channels) of each: one launch for the whole splat. The atomics
        # are relaxed: only their sum matters, not their order relative to other memory
        # operations (the default acq_rel adds a fence and an L1 invalidate per atomic).
        pid = tl.program_id(0)
        b = pid // n_blocks
        offs = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
        inside, i0, j0, k0, r0, r1, r2 = _splat_coords(points_ptr, b, offs, N, D, H, W)
        DHW = D * H * W
        occ_b = occ_ptr + b.to(tl.int64) * DHW  # int64: B * D * H * W may exceed 2^31
        if HAS_FEAT:
            ch = tl.arange(0, C_BLOCK)
            cm = ch < C
            f = tl.load(
                features_ptr + b.to(tl.int64) * N * C + offs[:, None] * C + ch[None, :],
                mask=inside[:, None] & cm[None, :],
                other=0.0,
            )  # [BLOCK, C_BLOCK]
            feat_b = feat_ptr + b.to(tl.int64) * C * DHW
        for A in tl.static_range(2):
            for Bc in tl.static_range(2):
                for Cc in tl.static_range(2):
                    w, _, _, _ = _corner_weight(r0, r1, r2, A, Bc, Cc)
                    # A corner index == S is only reached with weight 0 (point on the far
                    # face): skip it, as the reference does.
                    ok = inside & (i0 + A < D) & (j0 + Bc < H) & (k0 + Cc < W)
                    idx = ((i0 + A) * H + (j0 + Bc)) * W + (k0 + Cc)
                    tl.atomic_add(occ_b + idx, w, mask=ok, sem="relaxed")
                    if HAS_FEAT:
                        tl.atomic_add(
                            feat_b + ch[None, :].to(tl.int64) * DHW + idx[:, None],
                            w[:, None] * f,
                            mask=ok[:, None] & cm[None, :],
                            sem="relaxed",
                        )

    @triton.jit
    def _splat_bwd_kernel(
        grad_points_ptr,  # [B, N, 3]
        grad_features_ptr,  # [B, N, C]
        grad_occ_ptr,  # [B, 1, D, H, W]
        grad_feat_ptr,  # [B, C, D, H, W]
        points_ptr,  # [B, N, 3]
        features_ptr,  # [B, N, C]
        N,
        D,
        H,
        W,
        n_blocks,
        C,
        HAS_FEAT: tl.constexpr,
        HAS_GRAD_OCC: tl.constexpr,
        HAS_GRAD_FEAT: tl.constexpr,
        C_BLOCK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        # One program owns BLOCK points: gathers the 8 corner gradients (no atomics) and
        # writes d(points) and d(features) for every point, zeros for dropped ones.
        pid = tl.program_id(0)
        b = pid // n_blocks
        offs = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        inside, i0, j0, k0, r0, r1, r2 = _splat_coords(points_ptr, b, offs, N, D, H, W)
        DHW = D * H * W
        g0 = tl.zeros_like(r0)
        g1 = tl.zeros_like(r0)
        g2 = tl.zeros_like(r0)
        if HAS_FEAT:
            ch = tl.arange(0, C_BLOCK)
            cm = ch < C
            f = tl.load(
                features_ptr + b.to(tl.int64) * N * C + offs[:, None] * C + ch[None, :],
                mask=inside[:, None] & cm[None, :],
                other=0.0,
            )
            gf = tl.zeros_like(f)
            gfeat_b = grad_feat_ptr + b.to(tl.int64) * C * DHW
        gocc_b = grad_occ_ptr + b.to(tl.int64) * DHW
        for A in tl.static_range(2):
            for Bc in tl.static_range(2):
                for Cc in tl.static_range(2):
                    w, dw0, dw1, dw2 = _corner_weight(r0, r1, r2, A, Bc, Cc)
                    ok = inside & (i0 + A < D) & (j0 + Bc < H) & (k0 + Cc < W)
                    idx = ((i0 + A) * H + (j0 + Bc)) * W + (k0 + Cc)
                    gw = tl.zeros_like(r0)  # d loss / d (corner weight)
                    if HAS_GRAD_OCC:
                        gw += tl.load(gocc_b + idx, mask=ok, other=0.0)
                    if HAS_FEAT:
                        if HAS_GRAD_FEAT:
                            gc = tl.load(
                                gfeat_b + ch[None, :].to(tl.int64) * DHW + idx[:, None],
                                mask=ok[:, None] & cm[None, :],
                                other=0.0,
                            )  # [BLOCK, C_BLOCK]
                            gw += tl.sum(gc * f, axis=1)
                            gf += tl.where(ok[:, None], w[:, None] * gc, 0.0)
                    g0 += gw * dw0
                    g1 += gw * dw1
                    g2 += gw * dw2
        # r = u - floor(u) with floor held constant: dr/dc = S - 1 inside, 0 for dropped.
        g0 = tl.where(inside, g0 * (D - 1).to(g0.dtype), 0.0)
        g1 = tl.where(inside, g1 * (H - 1).to(g1.dtype), 0.0)
        g2 = tl.where(inside, g2 * (W - 1).to(g2.dtype), 0.0)
        gp = grad_points_ptr + b.to(tl.int64) * N * 3 + offs * 3
        tl.store(gp + 0, g0, mask=m)
        tl.store(gp + 1, g1, mask=m)
        tl.store(gp + 2, g2, mask=m)
        if HAS_FEAT:
            tl.store(
                grad_features_ptr + b.to(tl.int64) * N * C + offs[:, None] * C + ch[None, :],
                gf,
                mask=m[:, None] & cm[None, :],
            )


# Launch options of both splat kernels: no FMA contraction. With it (Triton's default on
# a GPU; the interpreter never fuses) r = u - floor(u) was computed from the unrounded
# product (c + 0.5)(S - 1) while floor(u) used the rounded one: for a point whose u rounds
# up to an integer k, r came out slightly negative (about -ulp(u)/2) instead of the
# reference's exact 0, so its corner k + 1 got a tiny *negative* weight. In an otherwise
# empty cell that makes the occupancy negative, the clip's backward mask [0 <= x <= 1]
# then drops the cell's gradient, and the point's gradient loses a term of size
# (S - 1) |d loss / d occupancy|: first H200 run, 128 views of 128^3 in fp32, grad_points
# rel L2 0.0103 against the reference for both kernel variants, and the occupancy of the
# full-size splat test 2.25e-06 off (weights off by up to ulp(u)/2). Without contraction
# the weights are the reference's to the last bit (only the order of the atomic adds
# differs), and the backward's products and sums round as the reference's do.
SPLAT_OPTIONS = {"enable_fp_fusion": False}

# 256 points per program: 8 x 256 atomics in flight per program (unmeasured choice; a
# GPU sweep belongs in profiling/bench_kernels.py).
_GPU_BLOCK = 256
# Backward: 128 points per program. With features, 256 needed 255 registers and spilled
# (148 B per thread, sm_90, profiling/compile_check.py): 8 corners x [256, C] gathers.
_GPU_BLOCK_BWD = 128


def splat_fwd(
    points: Tensor,  # [B, N, 3] contiguous
    size: tuple[int, int, int],
    features: Tensor | None = None,  # [B, N, C] contiguous
) -> tuple[Tensor, Tensor | None]:
    """Launch the fused splat. Returns occupancy ``[B, 1, D, H, W]`` and feature sums
    ``[B, C, D, H, W]`` (or None)."""
    B, N, _ = points.shape
    D, H, W = size
    C = 0 if features is None else features.shape[-1]
    occ = points.new_zeros(B, 1, D, H, W)
    feat = points.new_zeros(B, C, D, H, W) if features is not None else None
    if B == 0 or N == 0:
        return occ, feat
    BLOCK = launch_block(_GPU_BLOCK, N, interpret_cap=4096)
    n_blocks = triton.cdiv(N, BLOCK)
    with device_guard(points):
        _splat_fwd_kernel[(B * n_blocks,)](
            occ,
            feat if feat is not None else occ,
            points,
            features if features is not None else points,
            N,
            D,
            H,
            W,
            n_blocks,
            C,
            HAS_FEAT=features is not None,
            C_BLOCK=next_pow2(max(C, 1)),
            BLOCK=BLOCK,
            **SPLAT_OPTIONS,
        )
    return occ, feat


def splat_bwd(
    grad_occ: Tensor | None,  # [B, 1, D, H, W]
    grad_feat: Tensor | None,  # [B, C, D, H, W]
    points: Tensor,  # [B, N, 3]
    features: Tensor | None,  # [B, N, C]
) -> tuple[Tensor, Tensor | None]:
    """Launch the splat backward. Returns ``grad_points [B, N, 3]`` and
    ``grad_features [B, N, C]`` (None without features)."""
    B, N, _ = points.shape
    C = 0 if features is None else features.shape[-1]
    grad_points = new_output(points, *points.shape)
    grad_features = new_output(features, *features.shape) if features is not None else None
    if B == 0 or N == 0:
        return grad_points, grad_features
    D, H, W = (grad_occ if grad_occ is not None else grad_feat).shape[2:]
    BLOCK = launch_block(_GPU_BLOCK_BWD, N, interpret_cap=4096)
    n_blocks = triton.cdiv(N, BLOCK)
    dummy = points
    with device_guard(points):
        _splat_bwd_kernel[(B * n_blocks,)](
            grad_points,
            grad_features if grad_features is not None else dummy,
            grad_occ if grad_occ is not None else dummy,
            grad_feat if grad_feat is not None else dummy,
            points,
            features if features is not None else dummy,
            N,
            D,
            H,
            W,
            n_blocks,
            C,
            HAS_FEAT=features is not None,
            HAS_GRAD_OCC=grad_occ is not None,
            HAS_GRAD_FEAT=grad_feat is not None,
            C_BLOCK=next_pow2(max(C, 1)),
            BLOCK=BLOCK,
            **SPLAT_OPTIONS,
        )
    return grad_points, grad_features


class SplatPoints(torch.autograd.Function):
    """Autograd glue for the Triton splat (inputs already validated and contiguous)."""

    @staticmethod
    def forward(ctx, points: Tensor, features: Tensor | None, size: tuple[int, int, int]):
        occ, feat = splat_fwd(points, size, features)
        ctx.save_for_backward(points, features)
        if feat is None:
            return occ
        return occ, feat

    @staticmethod
    def backward(ctx, grad_occ: Tensor, grad_feat: Tensor | None = None):
        points, features = ctx.saved_tensors
        if not any(ctx.needs_input_grad[:2]):
            return None, None, None
        grad_occ = grad_occ.contiguous() if grad_occ is not None else None
        grad_feat = grad_feat.contiguous() if grad_feat is not None else None
        if grad_occ is None and grad_feat is None:
            return None, None, None
        gp, gf = splat_bwd(grad_occ, grad_feat, points, features)
        return (
            gp if ctx.needs_input_grad[0] else None,
            gf if ctx.needs_input_grad[1] else None,
            None,
        )


def splat_points(
    points: Tensor,  # [B, N, 3] grid coordinates (depth, row, col) in [-0.5, 0.5]
    size: tuple[int, int, int],  # (D, H, W)
    features: Tensor | None = None,  # [B, N, C]
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Splat points into a ``[B, 1, D, H, W]`` occupancy volume with trilinear weights.

    Points outside ``[-0.5, 0.5]^3`` are dropped (they add nothing). With ``features``
    (e.g. RGB), also returns ``[B, C, D, H, W]`` weighted feature sums, else None.
    Differentiable w.r.t. ``points`` and ``features``. See
    :func:`kernels.reference.splat_points_ref` for the exact definition. The Triton path
    takes float32 / float64; ``backend="auto"`` sends other dtypes to the reference.
    """
    # No finiteness check (it would synchronise the host): NaN points are dropped like
    # points outside the grid, on every backend.
    check_tensor("points", points, ndim=3, last=3)
    size = check_size(size)
    if features is not None:
        check_tensor("features", features, ndim=3)
        if features.shape[:2] != points.shape[:2]:
            raise ValueError(
                f"features must be [B, N, C] matching points {tuple(points.shape[:2])}, "
                f"got {tuple(features.shape)}"
            )
        if features.dtype != points.dtype:
            raise ValueError(f"features dtype {features.dtype} != points dtype {points.dtype}")
    path = select_backend(backend, points, features)
    if path == "triton":
        pts = points.contiguous()
        if features is None:
            return SplatPoints.apply(pts, None, size), None
        occ, feat = SplatPoints.apply(pts, features.contiguous(), size)
        return occ, feat
    if path == "cpu":
        return cpu.splat_points_cpu(points, size, features)
    return splat_points_ref(points, size, features)
