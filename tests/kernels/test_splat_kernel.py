"""Triton splat vs the reference: forward, backward, awkward points, gradcheck."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, TOL, assert_parity, needs_cuda

from kernels.reference import splat_points_ref
from kernels.splat import SplatPoints, splat_points


def make_points(B: int, N: int, size, gen, dtype, awkward: bool = True) -> torch.Tensor:
    """Random points in [-0.6, 0.6]^3 (some outside the grid); with ``awkward``, also
    points exactly on cell faces, on the grid's faces and corners, and just outside."""
    p = torch.rand(B, N, 3, generator=gen, dtype=torch.float64) * 1.2 - 0.6
    if awkward and N >= 8:
        S = torch.tensor(size, dtype=torch.float64)
        n = N // 4
        # Exactly on interior cell faces: c = k / (S - 1) - 0.5.
        k = torch.floor(torch.rand(B, n, 3, generator=gen, dtype=torch.float64) * S)
        p[:, :n] = k / (S - 1) - 0.5
        # Grid faces and corners, and points a hair outside.
        edge = torch.tensor([-0.5, 0.5], dtype=torch.float64)
        m = min(N - n, 8)
        idx = torch.randint(0, 2, (B, m, 3), generator=gen)
        p[:, n : n + m] = edge[idx]
        if N - n - m >= 2:
            p[:, n + m, 0] = 0.5 + 1e-6
            p[:, n + m + 1, 2] = -0.5 - 1e-6
    return p.to(dtype).to(DEVICE)


CASES = [
    # (B, N, (D, H, W), C): N = 1, N not a multiple of the block, grids 17 / 33, D != H.
    (1, 1, (17, 17, 17), 0),
    (2, 1000, (9, 17, 13), 3),
    (3, 5000, (33, 17, 17), 0),
    (1, 300, (5, 33, 33), 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,N,size,C", CASES)
def test_splat_parity(B, N, size, C, dtype, gen):
    pts = make_points(B, N, size, gen, dtype).requires_grad_()
    feats = None
    if C:
        feats = torch.rand(B, N, C, generator=gen, dtype=dtype).to(DEVICE).requires_grad_()
    occ, feat = splat_points(pts, size, feats, backend="triton")
    occ_r, feat_r = splat_points_ref(pts, size, feats)
    assert occ.shape == (B, 1, *size)
    assert_parity(occ, occ_r, *TOL[dtype]["fwd"], name="occupancy")
    if C:
        assert_parity(feat, feat_r, *TOL[dtype]["fwd"], name="features")
    else:
        assert feat is None and feat_r is None

    # Backward with shared random cotangents.
    v_occ = torch.randn(occ.shape, generator=gen, dtype=dtype).to(DEVICE)
    loss = (occ * v_occ).sum()
    loss_r = (occ_r * v_occ).sum()
    inputs = [pts]
    if C:
        v_feat = torch.randn(feat.shape, generator=gen, dtype=dtype).to(DEVICE)
        loss = loss + (feat * v_feat).sum()
        loss_r = loss_r + (feat_r * v_feat).sum()
        inputs.append(feats)
    grads = torch.autograd.grad(loss, inputs)
    grads_r = torch.autograd.grad(loss_r, inputs)
    for name, g, gr in zip(("grad_points", "grad_features"), grads, grads_r):
        assert_parity(g, gr, *TOL[dtype]["bwd"], name=name)


def test_splat_known_answer():
    """One point at a cell centre puts mass 1 in that cell; one on the far corner in the
    last cell; one outside adds nothing."""
    size = (5, 6, 7)
    pts = torch.tensor(
        [[[1 / 4 - 0.5, 2 / 5 - 0.5, 3 / 6 - 0.5], [0.5, 0.5, 0.5], [0.0, 0.51, 0.0]]],
        dtype=torch.float64,
        device=DEVICE,
    )
    occ, _ = splat_points(pts, size, backend="triton")
    expect = torch.zeros(1, 1, *size, dtype=torch.float64)
    expect[0, 0, 1, 2, 3] = 1.0
    expect[0, 0, 4, 5, 6] = 1.0
    torch.testing.assert_close(occ.cpu(), expect, rtol=0, atol=1e-12)


def test_splat_drops_nan_points_like_reference(gen):
    """The public op rejects NaN; the kernel itself drops NaN points whole, as the
    reference does (a guard for callers of the autograd Function)."""
    size = (6, 7, 8)
    pts = make_points(2, 50, size, gen, torch.float32)
    pts[0, 3, 1] = float("nan")
    pts[1, 7] = float("nan")
    occ = SplatPoints.apply(pts.contiguous(), None, size)
    occ_r, _ = splat_points_ref(pts, size)
    assert_parity(occ, occ_r, *TOL[torch.float32]["fwd"], name="occupancy")


def test_splat_rejects_bad_dtype():
    pts = torch.zeros(1, 4, 3, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="float32/float64"):
        splat_points(pts, (4, 4, 4), backend="triton")


@pytest.mark.slow
def test_splat_gradcheck(gen):
    size = (5, 6, 7)
    B, N, C = 2, 12, 2
    # Points away from cell faces: the splat is piecewise linear in the points, and a
    # finite difference across a face would measure a kink.
    S = torch.tensor(size, dtype=torch.float64) - 1
    cell = torch.floor(torch.rand(B, N, 3, generator=gen, dtype=torch.float64) * S)
    frac = 0.1 + 0.8 * torch.rand(B, N, 3, generator=gen, dtype=torch.float64)
    pts = ((cell + frac) / S - 0.5).to(DEVICE).requires_grad_()
    feats = torch.rand(B, N, C, generator=gen, dtype=torch.float64).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda p, f: SplatPoints.apply(p, f, size),
        (pts, feats),
        eps=1e-6,
        atol=1e-6,
        fast_mode=True,  # random projections v^T J u: 2 backward calls, not one per output
    )


@pytest.mark.cuda
@needs_cuda
def test_splat_parity_full_size_cuda():
    gen = torch.Generator().manual_seed(0)
    size = (64, 64, 64)
    pts = make_points(16, 8000, size, gen, torch.float32).requires_grad_()
    feats = torch.rand(16, 8000, 3, generator=gen).cuda().requires_grad_()
    occ, feat = splat_points(pts, size, feats, backend="triton")
    occ_r, feat_r = splat_points_ref(pts, size, feats)
    assert_parity(occ, occ_r, *TOL[torch.float32]["fwd"], name="occupancy")
    assert_parity(feat, feat_r, *TOL[torch.float32]["fwd"], name="features")
    v = torch.randn_like(occ)
    vf = torch.randn_like(feat)
    g = torch.autograd.grad((occ * v).sum() + (feat * vf).sum(), (pts, feats))
    gr = torch.autograd.grad((occ_r * v).sum() + (feat_r * vf).sum(), (pts, feats))
    assert_parity(g[0], gr[0], *TOL[torch.float32]["bwd"], name="grad_points")
    assert_parity(g[1], gr[1], *TOL[torch.float32]["bwd"], name="grad_features")


def test_splat_many_blocks(gpu_blocks, gen):
    """GPU block size (256 points): several programs per batch element, a partial last
    block, atomics from different programs into the same cells."""
    size = (9, 10, 11)
    pts = make_points(2, 700, size, gen, torch.float64).requires_grad_()
    feats = torch.rand(2, 700, 2, generator=gen, dtype=torch.float64).to(DEVICE)
    feats.requires_grad_()
    occ, feat = splat_points(pts, size, feats, backend="triton")
    occ_r, feat_r = splat_points_ref(pts, size, feats)
    assert_parity(occ, occ_r, *TOL[torch.float64]["fwd"], name="occupancy")
    assert_parity(feat, feat_r, *TOL[torch.float64]["fwd"], name="features")
    v, vf = torch.randn_like(occ), torch.randn_like(feat)
    g = torch.autograd.grad((occ * v).sum() + (feat * vf).sum(), (pts, feats))
    g_r = torch.autograd.grad((occ_r * v).sum() + (feat_r * vf).sum(), (pts, feats))
    assert_parity(g[0], g_r[0], *TOL[torch.float64]["bwd"], name="grad_points")
    assert_parity(g[1], g_r[1], *TOL[torch.float64]["bwd"], name="grad_features")
