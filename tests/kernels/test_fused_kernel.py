"""Fused smoothing + projection (kernels/fused.py) vs the reference composition."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, TOL, assert_parity, needs_cuda, occupancy_input

from kernels.blur import taps_for
from kernels.fused import BlurRayProject, blur_ray_project, plane_blur
from kernels.reference import _banded, blur_ray_project_ref, gaussian_kernel1d

CASES = [
    # (shape [B, 1, D, H, W], sigma, K): odd sizes, D != H != W, K > axis length, K = 1,
    # H > 64 (row bands with halos), W > 32 (several column tiles).
    ((2, 1, 9, 7, 11), 1.3, 5),
    ((1, 1, 20, 18, 5), 2.5, 21),
    ((3, 1, 4, 4, 4), 1.0, 1),
    ((1, 1, 3, 67, 35), 0.8, 3),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_scale,return_depth", [(True, True), (False, False)])
@pytest.mark.parametrize("shape,sigma,K", CASES)
def test_blur_ray_project_parity(shape, sigma, K, with_scale, return_depth, dtype, gen):
    x = occupancy_input(shape, gen, dtype).requires_grad_()
    inputs, scale = [x], None
    if with_scale:
        # Scales > 1 saturate the output clip somewhere, < 1 leave it inactive.
        scale = (torch.rand(shape[0], generator=gen, dtype=dtype) * 3.0 + 0.2).to(DEVICE)
        inputs.append(scale.requires_grad_())
    kw = dict(camera_distance=2.1, max_depth=9.7, return_depth=return_depth)
    out = blur_ray_project(x, sigma, K, scale, backend="triton", **kw)
    ref = blur_ray_project_ref(x, sigma, K, scale, **kw)
    assert out.color is None and out.probs is None
    loss = loss_r = 0.0
    for name, a, r in zip(("silhouette", "depth"), out, ref):
        if r is None:
            assert a is None, name
            continue
        assert_parity(a, r, *TOL[dtype]["fwd"], name=name)
        v = torch.randn(r.shape, generator=gen, dtype=dtype).to(DEVICE)
        loss, loss_r = loss + (a * v).sum(), loss_r + (r * v).sum()
    grads = torch.autograd.grad(loss, inputs)
    grads_r = torch.autograd.grad(loss_r, inputs)
    for name, g, g_r in zip(("grad_volume", "grad_scale"), grads, grads_r):
        assert_parity(g, g_r, *TOL[dtype]["bwd"], name=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plane_blur_is_the_in_plane_blur(dtype, gen):
    """The plane pass alone (mode 0) is the W and H passes of the reference blur."""
    x = torch.randn(2, 3, 2, 19, 37, generator=gen, dtype=dtype).to(DEVICE)
    taps = taps_for(1.4, 7, x)
    y = plane_blur(x.contiguous(), taps, 0)
    k = gaussian_kernel1d(1.4, 7, dtype=dtype, device=x.device)
    ref = _banded(k, 19) @ (x @ _banded(k, 37))
    assert_parity(y, ref, *TOL[dtype]["fwd"], name="plane")


def test_fused_many_programs(gpu_blocks, gen):
    """GPU block sizes: many programs per image, a partial last block, d(scale) partials
    of several programs per batch element summed in a fixed order."""
    x = occupancy_input((2, 1, 6, 13, 23), gen, torch.float64).requires_grad_()
    s = (torch.rand(2, generator=gen, dtype=torch.float64) * 2 + 0.3).to(DEVICE)
    s.requires_grad_()
    out = blur_ray_project(x, 1.1, 5, s, 2.0, 10.0, True, backend="triton")
    ref = blur_ray_project_ref(x, 1.1, 5, s, 2.0, 10.0, True)
    vs = [torch.randn_like(r) for r in ref[:2]]
    for name, a, r in zip(("silhouette", "depth"), out, ref):
        assert_parity(a, r, *TOL[torch.float64]["fwd"], name=name)
    loss = sum((a * v).sum() for a, v in zip(out, vs))
    g = torch.autograd.grad(loss, (x, s), retain_graph=True)
    g_r = torch.autograd.grad(sum((r * v).sum() for r, v in zip(ref, vs)), (x, s))
    assert_parity(g[0], g_r[0], *TOL[torch.float64]["bwd"], name="grad_volume")
    assert_parity(g[1], g_r[1], *TOL[torch.float64]["bwd"], name="grad_scale")
    g2 = torch.autograd.grad(loss, (x, s))
    assert torch.equal(g[0], g2[0]) and torch.equal(g[1], g2[1])


def test_fused_renderer_matches_passes(gen):
    """The renderer's two Triton variants agree (training path: silhouette + depth)."""
    from dpc.render import PointCloudRenderer, RenderSettings

    pts = (torch.rand(2, 300, 3, generator=gen) - 0.5).to(DEVICE).requires_grad_()
    q = torch.randn(2, 4, generator=gen).to(DEVICE)
    s = (torch.rand(2, generator=gen) + 0.5).to(DEVICE).requires_grad_()
    outs = []
    for variant in ("passes", "fused"):
        r = PointCloudRenderer(
            RenderSettings(vox_size=16, kernel_size=5, backend="triton", kernel_variant=variant)
        )
        o = r(pts, q, 1.2, scale=s, return_depth=True)
        assert o.voxels is None and o.probs is None
        g = torch.autograd.grad(o.silhouette.sum() + 0.1 * o.depth.sum(), (pts, s))
        outs.append((o.silhouette, o.depth, *g))
    for name, a, b in zip(("silhouette", "depth", "grad_points", "grad_scale"), *outs):
        assert_parity(a, b, 1e-5, 1e-4, name=name)


@pytest.mark.slow
def test_blur_ray_project_gradcheck(gen):
    # Away from the clip kinks (inputs in (0.1, 0.9), scaled blur below 1) plus a few
    # saturated input cells; gradcheck's reentrancy check (tolerance 0) also checks
    # that the backward is deterministic.
    x = torch.rand(2, 1, 5, 6, 4, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    x[0, 0, 2, 1] = 1.7
    x = x.to(DEVICE).requires_grad_()
    s = torch.tensor([0.6, 0.9], dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, sc: BlurRayProject.apply(v, sc, 1.1, 5, 2.1, 9.7, True),
        (x, s),
        fast_mode=True,
    )


@pytest.mark.cuda
@needs_cuda
def test_blur_ray_project_paper_scale_cuda():
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        shape = (32, 1, 64, 64, 64) if dtype == torch.float32 else (8, 1, 64, 64, 64)
        x = occupancy_input(shape, gen, dtype).requires_grad_()
        s = (torch.rand(shape[0], generator=gen, dtype=dtype) + 0.5).cuda().requires_grad_()
        out = blur_ray_project(x, 3.0, 21, s, 2.1, 10.0, True, backend="triton")
        ref = blur_ray_project_ref(x, 3.0, 21, s, 2.1, 10.0, True)
        vs = [torch.randn_like(r) for r in ref[:2]]
        for name, a, r in zip(("silhouette", "depth"), out, ref):
            assert_parity(a, r, *TOL[dtype]["fwd"], name=name)
        loss = sum((a * v).sum() for a, v in zip(out, vs))
        g = torch.autograd.grad(loss, (x, s), retain_graph=True)
        g_r = torch.autograd.grad(sum((r * v).sum() for r, v in zip(ref, vs)), (x, s))
        assert_parity(g[0], g_r[0], *TOL[dtype]["bwd"], name="grad_volume")
        # d(scale) sums 64^3 terms per batch element: looser in float32.
        tol = (1e-4, 1e-3) if dtype == torch.float32 else TOL[dtype]["bwd"]
        assert_parity(g[1], g_r[1], *tol, name="grad_scale")
        g2 = torch.autograd.grad(loss, (x, s))
        assert torch.equal(g[0], g2[0]) and torch.equal(g[1], g2[1]), "not deterministic"


def test_fused_backward_smem_guard():
    """The fused backward's [DB, DB] band does not fit a block's shared memory at depth 256
    in fp32 (278,528 B as compiled for sm_90 vs 232,448 B): the launcher refuses it with a
    clear error before launching, and 128 fits in both dtypes."""
    from kernels import fused

    dev = torch.device(DEVICE)
    assert fused.fused_bwd_fits(128, torch.float32, dev)
    assert fused.fused_bwd_fits(128, torch.float64, dev)
    assert not fused.fused_bwd_fits(256, torch.float32, dev)
    assert not fused.fused_bwd_fits(129, torch.float32, dev)  # rounds up to 256 rows
    assert fused.depth_bwd_smem_bytes(256, 4) >= 278_528
    t = torch.zeros(1, 1, 256, 1, 1, device=DEVICE)
    taps = taps_for(1.0, 3, t)
    with pytest.raises(ValueError, match="shared memory.*passes"):
        fused.depth_project_bwd(t, taps, None, t.new_zeros(1, 1, 1), None, 2.0, 10.0)


def test_fused_falls_back_to_separate_kernels_when_bwd_does_not_fit(monkeypatch, gen):
    """Where the fused backward cannot launch, blur_ray_project takes the separate Triton
    kernels: same values and gradients as the reference, the fused op never runs."""
    from kernels import fused

    monkeypatch.setattr(fused, "smem_limit", lambda device: 1024)  # as if D were too deep
    called = []
    monkeypatch.setattr(BlurRayProject, "apply", lambda *a: called.append(1))
    shape, sigma, K = (2, 1, 9, 7, 11), 1.3, 5
    x = occupancy_input(shape, gen, torch.float64).requires_grad_()
    scale = (torch.rand(2, generator=gen, dtype=torch.float64) * 3.0 + 0.2).to(DEVICE)
    scale.requires_grad_()
    out = blur_ray_project(x, sigma, K, scale, backend="triton")
    ref = blur_ray_project_ref(x, sigma, K, scale)
    assert not called
    torch.testing.assert_close(out.silhouette, ref.silhouette)
    torch.testing.assert_close(out.depth, ref.depth)
    g = torch.autograd.grad(out.silhouette.sum() + out.depth.sum(), (x, scale))
    gr = torch.autograd.grad(ref.silhouette.sum() + ref.depth.sum(), (x, scale))
    for a, b in zip(g, gr):
        torch.testing.assert_close(a, b)
