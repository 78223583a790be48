"""Triton ray projection vs the reference, including o == 0 and o == 1 exactly."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, TOL, assert_parity, needs_cuda

from kernels.project import RayProject, ray_project
from kernels.reference import ray_project_ref


def make_occupancy(shape, gen, dtype) -> torch.Tensor:
    """Occupancy in [0, 1] with exact zeros and exact ones (rays that stop dead)."""
    o = torch.rand(shape, generator=gen, dtype=torch.float64)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    o = torch.where(u < 0.3, 0.0, o)
    o = torch.where(u > 0.9, 1.0, o)
    return o.to(dtype).to(DEVICE)


CASES = [
    # (B, C, D, H, W): D = 1, non-cubic, odd sizes, no colours / 1 / 3 channels.
    (1, 0, 1, 3, 5),
    (2, 3, 9, 17, 13),
    (1, 1, 33, 17, 17),
    (3, 0, 17, 5, 7),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,C,D,H,W", CASES)
@pytest.mark.parametrize("return_depth,return_probs", [(True, True), (False, False)])
def test_project_parity(B, C, D, H, W, return_depth, return_probs, dtype, gen):
    occ = make_occupancy((B, 1, D, H, W), gen, dtype).requires_grad_()
    inputs = [occ]
    colors = None
    if C:
        colors = torch.rand(B, C, D, H, W, generator=gen, dtype=dtype).to(DEVICE)
        colors.requires_grad_()
        inputs.append(colors)
    kw = dict(
        camera_distance=2.0,
        max_depth=10.0,
        background=0.75,
        return_depth=return_depth,
        return_probs=return_probs,
    )
    out = ray_project(occ, colors, backend="triton", **kw)
    ref = ray_project_ref(occ, colors, **kw)
    loss = loss_r = 0.0
    for name, a, r in zip(("silhouette", "depth", "color", "probs"), out, ref):
        if r is None:
            assert a is None, name
            continue
        assert_parity(a, r, *TOL[dtype]["fwd"], name=name)
        v = torch.randn(r.shape, generator=gen, dtype=dtype).to(DEVICE)
        loss = loss + (a * v).sum()
        loss_r = loss_r + (r * v).sum()
    grads = torch.autograd.grad(loss, inputs)
    grads_r = torch.autograd.grad(loss_r, inputs)
    for name, g, g_r in zip(("grad_occupancy", "grad_colors"), grads, grads_r):
        assert_parity(g, g_r, *TOL[dtype]["bwd"], name=name)


def test_project_silhouette_only_grad(gen):
    """Only the silhouette used (the training loss): unused outputs get no gradient."""
    occ = make_occupancy((2, 1, 6, 4, 5), gen, torch.float32).requires_grad_()
    s = ray_project(occ, return_depth=True, backend="triton").silhouette
    s_r = ray_project_ref(occ).silhouette
    v = torch.randn(s.shape, generator=gen).to(DEVICE)
    (g,) = torch.autograd.grad((s * v).sum(), occ)
    (g_r,) = torch.autograd.grad((s_r * v).sum(), occ)
    assert_parity(g, g_r, *TOL[torch.float32]["bwd"], name="grad_occupancy")


def test_project_full_and_empty_rays():
    """o == 1 everywhere: silhouette 1, depth of the first cell, gradient finite (only
    the first cell matters); o == 0: silhouette 0, depth max_depth, colour background."""
    ones = torch.ones(1, 1, 4, 2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    out = ray_project(ones, backend="triton")
    assert torch.all(out.silhouette == 1.0)
    torch.testing.assert_close(out.depth, torch.full_like(out.depth, 2.0 - 0.5))
    (g,) = torch.autograd.grad(out.depth.sum() + out.silhouette.sum(), ones)
    (g_r,) = torch.autograd.grad(sum(x.sum() for x in ray_project_ref(ones)[:2]), ones)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_r)
    zeros = torch.zeros(1, 1, 4, 2, 3, dtype=torch.float64, device=DEVICE)
    col = torch.rand(1, 2, 4, 2, 3, dtype=torch.float64, device=DEVICE)
    out = ray_project(zeros, col, background=0.25, backend="triton")
    assert torch.all(out.silhouette == 0.0)
    assert torch.all(out.depth == 10.0)
    assert torch.all(out.color == 0.25)


def test_project_many_tiles(gpu_blocks, gen):
    """GPU block size (128 rays): several programs per image and a partial last block."""
    occ = make_occupancy((2, 1, 5, 13, 23), gen, torch.float64).requires_grad_()
    col = torch.rand(2, 2, 5, 13, 23, generator=gen, dtype=torch.float64).to(DEVICE)
    col.requires_grad_()
    out = ray_project(occ, col, return_probs=True, backend="triton")
    ref = ray_project_ref(occ, col, return_probs=True)
    vs = [torch.randn_like(r) for r in ref]
    for name, a, r in zip(("silhouette", "depth", "color", "probs"), out, ref):
        assert_parity(a, r, *TOL[torch.float64]["fwd"], name=name)
    g = torch.autograd.grad(sum((a * v).sum() for a, v in zip(out, vs)), (occ, col))
    g_r = torch.autograd.grad(sum((r * v).sum() for r, v in zip(ref, vs)), (occ, col))
    assert_parity(g[0], g_r[0], *TOL[torch.float64]["bwd"], name="grad_occupancy")
    assert_parity(g[1], g_r[1], *TOL[torch.float64]["bwd"], name="grad_colors")


@pytest.mark.slow
def test_project_gradcheck(gen):
    occ = make_occupancy((2, 1, 5, 3, 4), gen, torch.float64).requires_grad_()
    col = torch.rand(2, 2, 5, 3, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    col.requires_grad_()

    def f(o, c):
        return RayProject.apply(o, c, 2.0, 10.0, 0.5, True, True)

    # The projection is a polynomial in o, so o == 0 or 1 exactly is no kink.
    assert torch.autograd.gradcheck(f, (occ, col), fast_mode=True)


@pytest.mark.cuda
@needs_cuda
def test_project_parity_full_size_cuda():
    gen = torch.Generator().manual_seed(0)
    occ = make_occupancy((32, 1, 64, 64, 64), gen, torch.float32).requires_grad_()
    col = torch.rand(32, 3, 64, 64, 64, generator=gen).cuda().requires_grad_()
    out = ray_project(occ, col, return_probs=True, backend="triton")
    ref = ray_project_ref(occ, col, return_probs=True)
    vs = [torch.randn_like(r) for r in ref]
    for name, a, r in zip(("silhouette", "depth", "color", "probs"), out, ref):
        assert_parity(a, r, *TOL[torch.float32]["fwd"], name=name)
    g = torch.autograd.grad(sum((a * v).sum() for a, v in zip(out, vs)), (occ, col))
    g_r = torch.autograd.grad(sum((r * v).sum() for r, v in zip(ref, vs)), (occ, col))
    assert_parity(g[0], g_r[0], *TOL[torch.float32]["bwd"], name="grad_occupancy")
    assert_parity(g[1], g_r[1], *TOL[torch.float32]["bwd"], name="grad_colors")
