"""Triton splat vs the reference: forward, backward, awkward points, gradcheck."""

from __future__ import annotations

import pytest
import torch
from kernel_testlib import DEVICE, TOL, assert_parity, errors, needs_cuda

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
def test_splat_parity_full_size_cuda(record_property):
    # float32 tolerance (TOL fwd: rel L2 1e-6). The kernel's weights are bitwise the
    # reference's (it launches without FMA contraction, kernels.splat.SPLAT_OPTIONS), so
    # only the order of the fp32 atomic adds differs (torch's CUDA index_add adds
    # atomically too). A cell summing m weights (each in [0, 1]) in another order is off
    # by at most (m - 1) half-ulps of its value, relative (m - 1) eps32 / 2 with eps32 =
    # 2^-23 = 1.19e-7: 1e-6 holds up to m = 17 contributions per cell; here (16 x 8000
    # points, 64^3, a quarter of them on cell corners) cells get a handful. The first H200
    # run measured 2.25e-06 (19 eps32), beyond any ordering: the FMA-contracted
    # r = u - floor(u) then put weights off by up to ulp(u)/2 (ulp(63) = 3.8e-6).
    gen = torch.Generator().manual_seed(0)
    size = (64, 64, 64)
    pts = make_points(16, 8000, size, gen, torch.float32).requires_grad_()
    feats = torch.rand(16, 8000, 3, generator=gen).cuda().requires_grad_()
    occ, feat = splat_points(pts, size, feats, backend="triton")
    occ_r, feat_r = splat_points_ref(pts, size, feats)
    record_property("occupancy_rel_l2_max_abs", errors(occ, occ_r))
    record_property("features_rel_l2_max_abs", errors(feat, feat_r))
    assert_parity(occ, occ_r, *TOL[torch.float32]["fwd"], name="occupancy")
    assert_parity(feat, feat_r, *TOL[torch.float32]["fwd"], name="features")
    v = torch.randn_like(occ)
    vf = torch.randn_like(feat)
    g = torch.autograd.grad((occ * v).sum() + (feat * vf).sum(), (pts, feats))
    gr = torch.autograd.grad((occ_r * v).sum() + (feat_r * vf).sum(), (pts, feats))
    record_property("grad_points_rel_l2_max_abs", errors(g[0], gr[0]))
    assert_parity(g[0], gr[0], *TOL[torch.float32]["bwd"], name="grad_points")
    assert_parity(g[1], gr[1], *TOL[torch.float32]["bwd"], name="grad_features")


def test_splat_launches_without_fp_fusion(monkeypatch):
    """Both splat launches pass enable_fp_fusion=False: with FMA contraction a GPU
    computes r = u - floor(u) from the unrounded u (see kernels.splat.SPLAT_OPTIONS). The
    interpreter ignores the option, so only the launch arguments can be checked here."""
    from kernels import splat

    seen = {}

    class Spy:
        def __init__(self, name, real):
            self.name, self.real = name, real

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen[self.name] = kwargs.get("enable_fp_fusion", "not passed")
                return self.real[grid](*args, **kwargs)

            return launch

    for name in ("_splat_fwd_kernel", "_splat_bwd_kernel"):
        monkeypatch.setattr(splat, name, Spy(name, getattr(splat, name)))
    pts = (torch.rand(1, 50, 3, dtype=torch.float64) - 0.5).to(DEVICE).requires_grad_()
    occ = splat_points(pts, (5, 6, 7), backend="triton")[0]
    occ.sum().backward()
    assert seen == {"_splat_fwd_kernel": False, "_splat_bwd_kernel": False}


_PTX_SCRIPT = """
import sys
sys.path.insert(0, "profiling")
import compile_check as cc
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from kernels import splat

fn = splat._splat_fwd_kernel
sig, cx = cc._source(fn, dict(HAS_FEAT=False, C_BLOCK=4, BLOCK=splat._GPU_BLOCK))
sig = {k: ("*fp32" if v == "PTR" else v) for k, v in sig.items()}
for fusion in (True, False):
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=cx),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": 4, "enable_fp_fusion": fusion})
    print("fma", fusion, k.asm["ptx"].count("fma.rn.f32"))
"""


@pytest.mark.slow
def test_splat_ptx_has_no_fma_without_fp_fusion():
    """Ahead of time for sm_90 (no GPU): Triton's default contracts the splat's
    r = u - floor(u) into fma.rn.f32; with SPLAT_OPTIONS' enable_fp_fusion=False the PTX
    has no fma at all."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from kernels import splat

    pytest.importorskip("triton.backends.nvidia", reason="triton without its CUDA backend")
    assert splat.SPLAT_OPTIONS == {"enable_fp_fusion": False}
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root)
    r = subprocess.run(
        [sys.executable, "-c", _PTX_SCRIPT],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    counts = dict(ln.split()[1:] for ln in r.stdout.splitlines() if ln.startswith("fma "))
    assert int(counts["True"]) >= 6 and int(counts["False"]) == 0, counts


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
