"""Triton blur (plain and fused clip -> blur -> scale -> clip) vs the reference."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, TOL, assert_parity, needs_cuda, occupancy_input

from kernels.blur import Blur3d, BlurOccupancy, blur3d, blur_occupancy
from kernels.reference import blur3d_ref

CASES = [
    # (shape [B, C, D, H, W], sigma, K): odd sizes, D != H != W, K > axis length, K = 1.
    ((1, 1, 17, 17, 17), 1.0, 7),
    ((2, 3, 9, 17, 13), 2.5, 21),
    ((1, 2, 33, 5, 6), 0.7, 3),
    ((3, 1, 4, 4, 4), 1.0, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,sigma,K", CASES)
def test_blur_parity(shape, sigma, K, dtype, gen):
    x = torch.randn(shape, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
    y = blur3d(x, sigma, K, backend="triton")
    y_r = blur3d_ref(x, sigma, K)
    assert_parity(y, y_r, *TOL[dtype]["fwd"], name="blur")
    v = torch.randn(shape, generator=gen, dtype=dtype).to(DEVICE)
    (g,) = torch.autograd.grad((y * v).sum(), x)
    (g_r,) = torch.autograd.grad((y_r * v).sum(), x)
    assert_parity(g, g_r, *TOL[dtype]["bwd"], name="grad_volume")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_scale", [True, False])
@pytest.mark.parametrize("shape,sigma,K", CASES[:3])
def test_blur_occupancy_parity(shape, sigma, K, with_scale, dtype, gen):
    x = occupancy_input(shape, gen, dtype).requires_grad_()
    inputs = [x]
    scale = None
    if with_scale:
        # Scales > 1 saturate the output clip somewhere, < 1 leave it inactive.
        scale = (torch.rand(shape[0], generator=gen, dtype=dtype) * 3.0 + 0.2).to(DEVICE)
        scale.requires_grad_()
        inputs.append(scale)
    y = blur_occupancy(x, sigma, K, scale, backend="triton")
    y_r = blur_occupancy(x, sigma, K, scale, backend="reference")
    assert_parity(y, y_r, *TOL[dtype]["fwd"], name="occupancy")
    v = torch.randn(shape, generator=gen, dtype=dtype).to(DEVICE)
    grads = torch.autograd.grad((y * v).sum(), inputs)
    grads_r = torch.autograd.grad((y_r * v).sum(), inputs)
    for name, g, g_r in zip(("grad_volume", "grad_scale"), grads, grads_r):
        assert_parity(g, g_r, *TOL[dtype]["bwd"], name=name)


def test_blur_occupancy_reference_is_pipeline_composition(gen):
    """The fused op's reference path is exactly the pipeline's clamp/blur/scale/clamp."""
    x = occupancy_input((2, 1, 6, 7, 8), gen, torch.float32)
    s = torch.rand(2, generator=gen)
    y = blur_occupancy(x, 1.2, 5, s, backend="reference")
    y_r = (blur3d_ref(x.clamp(0, 1), 1.2, 5) * s.view(-1, 1, 1, 1, 1)).clamp(0, 1)
    assert torch.equal(y, y_r)


def test_blur_kernel_sums_to_one():
    """A constant volume far from the borders stays constant (normalised taps)."""
    x = torch.ones(1, 1, 9, 9, 9, dtype=torch.float64, device=DEVICE)
    y = blur3d(x, 1.0, 3, backend="triton")
    torch.testing.assert_close(
        y[0, 0, 1:-1, 1:-1, 1:-1].cpu(),
        torch.ones(7, 7, 7, dtype=torch.float64),
        rtol=0,
        atol=1e-14,
    )


@pytest.mark.slow
def test_blur_gradcheck(gen):
    x = torch.randn(1, 2, 5, 6, 4, generator=gen, dtype=torch.float64).to(DEVICE)
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: Blur3d.apply(v, 1.1, 5), (x,), fast_mode=True)


@pytest.mark.slow
def test_blur_occupancy_gradcheck(gen):
    # Values away from the clip kinks at 0 and 1 (inputs and scaled outputs), and some
    # clearly saturated ones: finite differences are only meaningful off the kinks.
    x = torch.rand(2, 1, 5, 6, 4, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    x[0, 0, 2] = 1.7
    x = x.to(DEVICE).requires_grad_()
    s = torch.tensor([0.6, 0.9], dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda v, sc: BlurOccupancy.apply(v, sc, 1.1, 5), (x, s), fast_mode=True
    )


@pytest.mark.cuda
@needs_cuda
def test_blur_occupancy_parity_full_size_cuda():
    gen = torch.Generator().manual_seed(0)
    shape = (32, 1, 64, 64, 64)
    x = occupancy_input(shape, gen, torch.float32).requires_grad_()
    s = (torch.rand(32, generator=gen) + 0.5).cuda().requires_grad_()
    y = blur_occupancy(x, 3.0, 21, s, backend="triton")
    y_r = blur_occupancy(x, 3.0, 21, s, backend="reference")
    assert_parity(y, y_r, *TOL[torch.float32]["fwd"], name="occupancy")
    v = torch.randn_like(y)
    g = torch.autograd.grad((y * v).sum(), (x, s))
    g_r = torch.autograd.grad((y_r * v).sum(), (x, s))
    assert_parity(g[0], g_r[0], *TOL[torch.float32]["bwd"], name="grad_volume")
    # d(scale) sums 64^3 terms per batch element through atomics: looser rel L2.
    assert_parity(g[1], g_r[1], 1e-4, 1e-3, name="grad_scale")


def test_blur_occupancy_many_tiles(gpu_blocks, gen):
    """GPU tile sizes (32 x up-to-128): many programs, partial tiles, rows of one tile
    spanning two batch elements in the d(scale) reduction."""
    shape = (3, 1, 7, 9, 150)  # W = 150 > 128: two column tiles with a partial one
    x = occupancy_input(shape, gen, torch.float64).requires_grad_()
    s = (torch.rand(3, generator=gen, dtype=torch.float64) * 2 + 0.3).to(DEVICE)
    s.requires_grad_()
    y = blur_occupancy(x, 1.5, 5, s, backend="triton")
    y_r = blur_occupancy(x, 1.5, 5, s, backend="reference")
    assert_parity(y, y_r, *TOL[torch.float64]["fwd"], name="occupancy")
    v = torch.randn(shape, generator=gen, dtype=torch.float64).to(DEVICE)
    g = torch.autograd.grad((y * v).sum(), (x, s))
    g_r = torch.autograd.grad((y_r * v).sum(), (x, s))
    assert_parity(g[0], g_r[0], *TOL[torch.float64]["bwd"], name="grad_volume")
    assert_parity(g[1], g_r[1], *TOL[torch.float64]["bwd"], name="grad_scale")
