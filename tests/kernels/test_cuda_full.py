"""Full-size checks that only a GPU can run (``-m cuda``; profiling/gpu_check.sh runs
them): the paper's batch of 128 views, 128^3 grids, plain blur3d and float64 at full
size, float64 scalars not exact in fp32, repeated backward equality, KeOps Chamfer.
The second-device check is in test_launch_contract.py."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import TOL, assert_parity, needs_cuda

import kernels
from kernels.reference import blur3d_ref, chamfer_distance_ref

pytestmark = [pytest.mark.cuda, needs_cuda]


def _render(variant, backend, dtype, B, N, G, K, cd=2.0, bg=1.0, colors=False, seed=0):
    """Silhouette, depth (and colour) of one render and the gradients of a random
    projection of them w.r.t. points, scale (and colours)."""
    from dpc.render import PointCloudRenderer, RenderSettings

    g = torch.Generator().manual_seed(seed)
    pts = ((torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5) * 0.8).cuda().requires_grad_()
    q = torch.randn(B, 4, generator=g, dtype=dtype).cuda()
    s = (torch.rand(B, generator=g, dtype=dtype) * 0.5 + 0.5).cuda().requires_grad_()
    col = torch.rand(B, N, 3, generator=g, dtype=dtype).cuda().requires_grad_() if colors else None
    st = RenderSettings(
        vox_size=G,
        kernel_size=K,
        backend=backend,
        kernel_variant=variant,
        camera_distance=cd,
        background=bg,
    )
    out = PointCloudRenderer(st)(pts, q, 3.0, scale=s, colors=col, return_depth=True)
    outs = [t for t in (out.silhouette, out.depth, out.color) if t is not None]
    vs = [torch.randn(t.shape, generator=g, dtype=dtype).cuda() for t in outs]
    loss = sum((t * v).sum() for t, v in zip(outs, vs))
    inputs = [pts, s] + ([col] if colors else [])
    return [t.detach() for t in outs], torch.autograd.grad(loss, inputs)


# Whole-renderer tolerances (a chain of four ops; see test_render_triton.py).
REL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-11, 1e-9)}


@pytest.mark.parametrize(
    "variant,dtype,B,G",
    [
        ("passes", torch.float32, 128, 64),  # the paper's step: 128 views of 64^3
        ("fused", torch.float32, 128, 64),
        ("passes", torch.float32, 128, 128),  # 128^3
        ("fused", torch.float32, 128, 128),
        ("passes", torch.float64, 128, 64),  # float64 at full size
        ("fused", torch.float64, 128, 64),
    ],
)
def test_renderer_full_size(variant, dtype, B, G):
    outs, grads = _render(variant, "triton", dtype, B, 8000, G, 21)
    outs_r, grads_r = _render(variant, "reference", dtype, B, 8000, G, 21)
    for name, a, r in zip(("silhouette", "depth"), outs, outs_r):
        assert_parity(a, r, *REL[dtype], name=name)
    for name, a, r in zip(("grad_points", "grad_scale"), grads, grads_r):
        # Splat atomics sum in any order, and points near cell faces amplify that.
        assert_parity(a, r, REL[dtype][0] * 10, REL[dtype][1] * 10, name=name)


@pytest.mark.parametrize("variant", ["passes", "fused"])
def test_float64_scalars_not_exact_in_fp32_cuda(variant):
    """Camera distance 2.1 and background 0.1 in float64: depth and colour to float64
    precision (an fp32 scalar would put depth off by ~1e-7)."""
    for colors in (False, True):
        kw = dict(cd=2.1, bg=0.1, colors=colors)
        outs, grads = _render(variant, "triton", torch.float64, 16, 4000, 64, 21, **kw)
        outs_r, grads_r = _render(variant, "reference", torch.float64, 16, 4000, 64, 21, **kw)
        for name, a, r in zip(("silhouette", "depth", "color"), outs, outs_r):
            torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-11, msg=name)
        for a, r in zip(grads, grads_r):
            assert_parity(a, r, 1e-10, 1e-8, name="grad")


@pytest.mark.parametrize("variant", ["passes", "fused"])
def test_repeated_backward_is_bitwise_equal(variant):
    """No float atomics in any backward: the same graph differentiated twice gives the
    same bits (float64 gradcheck's reentrancy tolerance is 0)."""
    from dpc.render import PointCloudRenderer, RenderSettings

    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        pts = (torch.rand(32, 8000, 3, generator=g, dtype=dtype) - 0.5).cuda().requires_grad_()
        q = torch.randn(32, 4, generator=g, dtype=dtype).cuda()
        s = (torch.rand(32, generator=g, dtype=dtype) + 0.5).cuda().requires_grad_()
        r = PointCloudRenderer(RenderSettings(backend="triton", kernel_variant=variant))
        out = r(pts, q, 3.0, scale=s, return_depth=True)
        loss = (out.silhouette * torch.randn_like(out.silhouette)).sum() + out.depth.mean()
        g1 = torch.autograd.grad(loss, (pts, s), retain_graph=True)
        g2 = torch.autograd.grad(loss, (pts, s))
        for a, b in zip(g1, g2):
            assert torch.equal(a, b), f"{variant} {dtype}: backward not deterministic"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blur3d_full_size(dtype):
    g = torch.Generator().manual_seed(0)
    B = 128 if dtype == torch.float32 else 32
    x = torch.randn(B, 1, 64, 64, 64, generator=g, dtype=dtype).cuda().requires_grad_()
    y = kernels.blur3d(x, 3.0, 21, backend="triton")
    y_r = blur3d_ref(x, 3.0, 21)
    assert_parity(y, y_r, *TOL[dtype]["fwd"], name="blur3d")
    v = torch.randn_like(y)
    (gx,) = torch.autograd.grad((y * v).sum(), x)
    (gx_r,) = torch.autograd.grad((y_r * v).sum(), x)
    assert_parity(gx, gx_r, *TOL[dtype]["bwd"], name="grad_volume")


def test_keops_chamfer_cuda():
    from kernels.chamfer import has_keops

    if not has_keops():
        pytest.skip("pykeops not installed")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 8000, 3, generator=g).cuda().requires_grad_()
    y = torch.rand(4, 10000, 3, generator=g).cuda().requires_grad_()
    res = kernels.chamfer_distance(x, y, backend="keops")
    ref = kernels.chamfer_distance(x, y, backend="reference")
    oracle = chamfer_distance_ref(x, y)
    for a, r, o in zip(res[:2], ref[:2], oracle):
        torch.testing.assert_close(a, o, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
    gk = torch.autograd.grad(res.x_to_y.mean() + res.y_to_x.mean(), (x, y))
    go = torch.autograd.grad(oracle[0].mean() + oracle[1].mean(), (x, y))
    for a, b in zip(gk, go):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fused_deep_volume_takes_separate_kernels_cuda():
    """At depth 256 the fused backward's shared memory does not fit (sm_90: 278,528 B vs
    232,448 B): blur_ray_project runs the separate kernels and matches the reference."""
    from kernels import fused
    from kernels.reference import blur_ray_project_ref

    dev = torch.device("cuda")
    assert fused.smem_limit(dev) >= 48 * 1024
    assert not fused.fused_bwd_fits(256, torch.float32, dev)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 1, 256, 24, 40, generator=g) * 0.3).cuda().requires_grad_()
    out = kernels.blur_ray_project(x, 2.0, 21, backend="triton")
    ref = blur_ray_project_ref(x, 2.0, 21)
    assert_parity(out.silhouette, ref.silhouette, *TOL[torch.float32]["fwd"], name="sil")
    (gx,) = torch.autograd.grad(out.silhouette.sum(), x)
    (gr,) = torch.autograd.grad(ref.silhouette.sum(), x)
    assert_parity(gx, gr, *TOL[torch.float32]["bwd"], name="grad_volume")


def test_keops_auto_answers_cuda():
    """``auto`` on CUDA: KeOps, or (if it fails to compile or run here) the reference with
    a warning; either way the oracle's answer."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3000, 3, generator=g).cuda()
    y = torch.rand(2, 2000, 3, generator=g).cuda()
    res = kernels.chamfer_distance(x, y)
    for a, o in zip(res[:2], chamfer_distance_ref(x, y)):
        torch.testing.assert_close(a, o, rtol=1e-5, atol=1e-6)
