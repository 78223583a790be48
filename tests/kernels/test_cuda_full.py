"""Full-size checks that only a GPU can run (``-m cuda``; profiling/gpu_check.sh runs
them): the paper's batch of 128 views, 128^3 grids, plain blur3d and float64 at full
size, float64 scalars not exact in fp32, repeated backward equality, KeOps Chamfer.
The second-device check is in test_launch_contract.py."""

from __future__ import annotations

import contextlib
import functools
import json

import pytest
import torch
from kernel_testlib import TOL, assert_as_close_as_reference, assert_parity, needs_cuda

import kernels
from kernels.reference import blur3d_ref, chamfer_distance_ref

pytestmark = [pytest.mark.cuda, needs_cuda]


@contextlib.contextmanager
def no_tf32():
    """Full fp32 in torch's CUDA matmuls and convolutions (the eager reference's blur is
    three banded matmuls, ``kernels.reference.blur3d_ref``; no convolution): torch's
    defaults (matmul off, cuDNN on) could change, and a TF32 reference (10-bit mantissa)
    would measure TF32, not the kernels. The previous settings are restored."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _full_fp32():
    with no_tf32():
        yield


def _render(variant, backend, dtype, B, N, G, K, cd=2.0, bg=1.0, colors=False, seed=0,
            compute=None):  # fmt: skip
    """Silhouette, depth (and colour) of one render and the gradients of a random
    projection of them w.r.t. points, scale (and colours). Inputs and projection weights
    are drawn in ``dtype`` and computed in ``compute`` (default ``dtype``): float64 with
    float32 inputs is the exact result of the float32 case."""
    from dpc.render import PointCloudRenderer, RenderSettings

    c = compute or dtype
    g = torch.Generator().manual_seed(seed)
    pts = ((torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5) * 0.8).to("cuda", c)
    q = torch.randn(B, 4, generator=g, dtype=dtype).to("cuda", c)
    s = (torch.rand(B, generator=g, dtype=dtype) * 0.5 + 0.5).to("cuda", c)
    col = torch.rand(B, N, 3, generator=g, dtype=dtype).to("cuda", c) if colors else None
    pts.requires_grad_()
    s.requires_grad_()
    if colors:
        col.requires_grad_()
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
    vs = [torch.randn(t.shape, generator=g, dtype=dtype).to("cuda", c) for t in outs]
    loss = sum((t * v).sum() for t, v in zip(outs, vs))
    inputs = [pts, s] + ([col] if colors else [])
    return [t.detach() for t in outs], list(torch.autograd.grad(loss, inputs))


@functools.lru_cache(maxsize=1)
def _eager_fp32_and_exact(B, N, G, K):
    """The eager reference in float32 and in float64 (same float32 inputs), on the CPU:
    shared by both kernel variants (the reference is the same for both)."""
    f32 = _render("passes", "reference", torch.float32, B, N, G, K)
    f64 = _render("passes", "reference", torch.float32, B, N, G, K, compute=torch.float64)
    torch.cuda.empty_cache()
    return tuple([t.cpu() for t in outs + grads] for outs, grads in (f32, f64))


# Whole-renderer tolerances (a chain of four ops; see test_render_triton.py). float64:
# against the eager reference, (rel L2, max abs). float32: against the float64 result of
# the same inputs, at most FP32_FACTOR x the eager float32 reference's error plus a floor
# (the former float32 tolerances), so the test measures the kernels' error, not the
# distance between two float32 computations that round differently; a kernel 1% off
# where the reference is 1e-6 off still fails.
REL = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-11, 1e-9)}
FP32_FACTOR = 4.0
NAMES = ("silhouette", "depth", "grad_points", "grad_scale")


@pytest.mark.parametrize(
    "variant,dtype,B,G",
    [
        ("passes", torch.float32, 128, 64),  # the paper's step: 128 views of 64^3
        ("fused", torch.float32, 128, 64),
        ("passes", torch.float32, 128, 128),  # 128^3
        ("fused", torch.float32, 128, 128),
        ("passes", torch.float64, 128, 64),  # float64 at full size
        ("fused", torch.float64, 128, 64),
        ("passes", torch.float64, 128, 128),  # float64 at 128^3: indexing at 2^28 cells
    ],
)
def test_renderer_full_size(variant, dtype, B, G, record_property):
    outs, grads = _render(variant, "triton", dtype, B, 8000, G, 21)
    if dtype == torch.float64:
        outs_r, grads_r = _render(variant, "reference", dtype, B, 8000, G, 21)
        for name, a, r in zip(("silhouette", "depth"), outs, outs_r):
            assert_parity(a, r, *REL[dtype], name=name)
        for name, a, r in zip(("grad_points", "grad_scale"), grads, grads_r):
            # Splat atomics sum in any order, and points near cell faces amplify that.
            assert_parity(a, r, REL[dtype][0] * 10, REL[dtype][1] * 10, name=name)
        return
    eager, exact = _eager_fp32_and_exact(B, 8000, G, 21)
    found, failures = {}, []
    for i, (name, a) in enumerate(zip(NAMES, outs + grads)):
        floor = REL[dtype] if i < 2 else (REL[dtype][0] * 10, REL[dtype][1] * 10)
        try:
            found[name] = assert_as_close_as_reference(
                a.cpu(), eager[i], exact[i], FP32_FACTOR, floor, name=name
            )
        except AssertionError as e:
            failures.append(str(e))
    # The errors go into the JUnit XML (--junitxml) and onto stdout (-s, or on failure).
    record_property("errors_vs_float64", json.dumps(found))
    print(f"{variant} {G}^3 fp32 errors against float64 (rel L2, max abs): {found}")
    assert not failures, "; ".join(failures)


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
    from kernels.chamfer import keops_status

    # The probe compiles and runs KeOps in a subprocess: a KeOps crash (KeOps 2.3 under
    # CUDA 13.0 segfaulted in its nvrtc compile) skips this test instead of killing the
    # pytest worker.
    ok, why = keops_status("cuda")
    if not ok:
        pytest.skip(f"KeOps cannot run here: {why}")
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
    """``auto`` on CUDA: KeOps, or (if its probe or a call fails here) the reference with
    a warning; either way the oracle's answer, and no crash."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3000, 3, generator=g).cuda()
    y = torch.rand(2, 2000, 3, generator=g).cuda()
    res = kernels.chamfer_distance(x, y)
    for a, o in zip(res[:2], chamfer_distance_ref(x, y)):
        torch.testing.assert_close(a, o, rtol=1e-5, atol=1e-6)
