"""Whole renderer: backend="triton" vs backend="reference", forward and backward."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, HAS_CUDA, assert_parity, needs_cuda

from dpc.render import PointCloudRenderer, RenderSettings


def _render_both(settings: dict, B: int, N: int, C: int, dtype, gen, **call):
    pts = (torch.rand(B, N, 3, generator=gen, dtype=dtype) - 0.5).to(DEVICE).requires_grad_()
    quat = torch.randn(B, 4, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
    scale = (torch.rand(B, generator=gen, dtype=dtype) + 0.5).to(DEVICE).requires_grad_()
    inputs = [pts, quat, scale]
    colors = None
    if C:
        colors = torch.rand(B, N, C, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
        inputs.append(colors)
    results = []
    for backend in ("reference", "triton"):
        r = PointCloudRenderer(RenderSettings(backend=backend, **settings))
        out = r(
            pts,
            quat,
            1.5,
            scale=scale,
            colors=colors,
            return_depth=True,
            return_voxels=True,
            **call,
        )
        results.append(out)
    ref, tri = results
    loss = loss_r = 0.0
    for name in ("silhouette", "depth", "color", "voxels"):
        a, b = getattr(tri, name), getattr(ref, name)
        if b is None:
            assert a is None, name
            continue
        yield name, a, b
        v = torch.randn(b.shape, generator=gen, dtype=dtype).to(DEVICE)
        loss = loss + (a * v).sum()
        loss_r = loss_r + (b * v).sum()
    g = torch.autograd.grad(loss, inputs)
    g_r = torch.autograd.grad(loss_r, inputs)
    for name, x, y in zip(("grad_points", "grad_quat", "grad_scale", "grad_colors"), g, g_r):
        yield name, x, y


# Tolerances of whole-renderer outputs (float32): a chain of four ops, each within its
# own tolerance, and a few points that round to a neighbouring cell can move mass.
REL_L2 = {torch.float32: 1e-5, torch.float64: 1e-11}
MAX_ABS = {torch.float32: 1e-4, torch.float64: 1e-9}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C", [0, 3])
def test_renderer_parity(C, dtype, gen):
    settings = dict(vox_size=17, vox_size_z=13, kernel_size=5)
    for name, a, b in _render_both(settings, 2, 400, C, dtype, gen):
        assert_parity(a, b, REL_L2[dtype], MAX_ABS[dtype], name=name)


def test_renderer_parity_dropout(gen):
    """Point dropout draws the same subset for both backends (same generator seed)."""
    settings = dict(vox_size=16, kernel_size=3)
    seed = int(torch.randint(0, 2**31 - 1, (), generator=gen))
    outs = []
    for backend in ("reference", "triton"):
        r = PointCloudRenderer(RenderSettings(backend=backend, **settings))
        pts = torch.rand(2, 300, 3, generator=torch.Generator().manual_seed(seed)) - 0.5
        q = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.3, 0.0]])
        outs.append(
            r(
                pts.to(DEVICE),
                q.to(DEVICE),
                1.0,
                keep_fraction=0.3,
                generator=torch.Generator().manual_seed(seed),
            ).silhouette
        )
    assert_parity(outs[1], outs[0], REL_L2[torch.float32], MAX_ABS[torch.float32])


@pytest.mark.skipif(HAS_CUDA, reason="auto picks Triton on CUDA")
def test_auto_on_cpu_is_the_cpu_path(gen):
    # backend="auto" on CPU tensors is the fast CPU path (kernels/cpu), which matches the
    # reference to float32 rounding (tests/kernels/test_cpu_ops.py checks it in depth).
    pts = torch.rand(2, 200, 3, generator=gen) - 0.5
    q = torch.randn(2, 4, generator=gen)
    s = torch.rand(2, generator=gen) + 0.5
    a = PointCloudRenderer(vox_size=12, kernel_size=5, backend="auto")(pts, q, 1.0, scale=s)
    c = PointCloudRenderer(vox_size=12, kernel_size=5, backend="cpu")(pts, q, 1.0, scale=s)
    b = PointCloudRenderer(vox_size=12, kernel_size=5, backend="reference")(pts, q, 1.0, scale=s)
    assert torch.equal(a.silhouette, c.silhouette)
    torch.testing.assert_close(a.silhouette, b.silhouette, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@needs_cuda
def test_renderer_parity_paper_scale_cuda():
    gen = torch.Generator().manual_seed(0)
    settings = dict(vox_size=64, kernel_size=21)
    for name, a, b in _render_both(settings, 16, 8000, 0, torch.float32, gen):
        assert_parity(a, b, REL_L2[torch.float32], MAX_ABS[torch.float32], name=name)
