"""The fast CPU path (kernels/cpu, numba) against the reference: forward and backward,
float32 and float64, awkward shapes and edge cases, float64 gradcheck of every
autograd Function, and thread-count independence."""

from __future__ import annotations

import pytest
import torch

import kernels
from dpc.render import PointCloudRenderer, RenderSettings
from kernels._utils import select_backend
from kernels.cpu import _jit

pytestmark = pytest.mark.skipif(not _jit.HAVE_NUMBA, reason="numba is not installed")

DTYPES = [torch.float32, torch.float64]


def tol(dtype):
    return dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-11)


def grads(outs, inputs, seed=0):
    """Gradients of sum(out * w) with fixed random weights w, for every non-None out."""
    g = torch.Generator().manual_seed(seed)
    loss = sum(
        (o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs if o is not None
    )
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def close(a, b, dtype):
    for x, y in zip(a, b):
        if x is None and y is None:
            continue
        # An input an output does not depend on: None from autograd, or zeros.
        x = torch.zeros_like(y) if x is None else x
        y = torch.zeros_like(x) if y is None else y
        torch.testing.assert_close(x, y, **tol(dtype))


def test_auto_selects_cpu_for_cpu_float_tensors():
    assert select_backend("auto", torch.zeros(2)) == "cpu"
    assert select_backend("auto", torch.zeros(2, dtype=torch.float64)) == "cpu"
    assert select_backend("reference", torch.zeros(2)) == "reference"


# ---------------------------------------------------------------- splat


def splat_points_cases(dtype, B, N, size, g):
    """Random points plus the awkward ones: outside the grid, exactly on cell faces (grid
    units integral), exactly on the far face (+0.5) and the near face (-0.5)."""
    D, H, W = size
    pts = torch.rand(B, N, 3, generator=g, dtype=dtype) * 1.3 - 0.65  # some outside
    if N >= 6:
        dims = torch.tensor([D - 1, H - 1, W - 1], dtype=dtype)
        cell = torch.randint(0, min(size), (B, 1, 3), generator=g).to(dtype)
        pts[:, 0] = (cell[:, 0] / dims - 0.5).to(dtype)  # on a cell corner
        pts[:, 1] = 0.5  # far corner
        pts[:, 2, 0] = 0.5  # on the far face in depth only
        pts[:, 3] = -0.5  # near corner
        pts[:, 4, 1] = 0.5000001  # just outside
        pts[:, 5, 2] = -0.7  # outside
    return pts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,N,size,C",
    [(1, 1, (2, 2, 2), 0), (3, 40, (5, 6, 7), 0), (2, 64, (9, 4, 3), 3), (1, 7, (3, 8, 5), 1)],
)
def test_splat_matches_reference(dtype, B, N, size, C):
    g = torch.Generator().manual_seed(B * 100 + N)
    pts = splat_points_cases(dtype, B, N, size, g).requires_grad_()
    feats = None
    if C:
        feats = torch.rand(B, N, C, generator=g, dtype=dtype).requires_grad_()
    occ, feat = kernels.splat_points(pts, size, feats, backend="cpu")
    ro, rf = kernels.splat_points(pts, size, feats, backend="reference")
    assert occ.shape == (B, 1, *size) and (feat is None) == (C == 0)
    close((occ, feat), (ro, rf), dtype)
    inputs = (pts,) if feats is None else (pts, feats)
    close(grads((occ, feat), inputs), grads((ro, rf), inputs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_splat_far_face_skips_corner_and_its_gradient(dtype):
    # A point exactly on the far face puts its mass in the last cell; the corner beyond
    # is skipped in the forward and the backward, as in the reference.
    pts = torch.tensor([[[0.5, 0.5, 0.5], [0.5, 0.1, -0.2]]], dtype=dtype, requires_grad=True)
    occ, _ = kernels.splat_points(pts, (4, 5, 6), backend="cpu")
    ro, _ = kernels.splat_points(pts, (4, 5, 6), backend="reference")
    assert occ[0, 0, 3, 4, 5] == 1.0
    close((occ,), (ro,), dtype)
    close(grads((occ,), (pts,)), grads((ro,), (pts,)), dtype)


def test_splat_gradcheck():
    g = torch.Generator().manual_seed(1)
    # Points away from cell faces: the trilinear weights are smooth there.
    pts = (torch.rand(2, 9, 3, generator=g, dtype=torch.float64) * 0.8 - 0.4).requires_grad_()
    feats = torch.rand(2, 9, 2, generator=g, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(
        lambda p, f: kernels.splat_points(p, (4, 5, 3), f, backend="cpu"), (pts, feats)
    )
    torch.autograd.gradcheck(lambda p: kernels.splat_points(p, (4, 5, 3), backend="cpu")[0], (pts,))


# ---------------------------------------------------------------- blur


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,K",
    [((1, 1, 2, 2, 2), 1), ((2, 1, 5, 6, 7), 3), ((3, 2, 7, 4, 9), 5), ((1, 1, 3, 4, 2), 9)],
)
@pytest.mark.parametrize("with_scale", [False, True])
def test_blur_occupancy_matches_reference(dtype, shape, K, with_scale):
    g = torch.Generator().manual_seed(K + shape[2])
    # Values below 0, inside and above 1, so both clips act; scales up to 1.9 saturate.
    vol = (torch.rand(shape, generator=g, dtype=dtype) * 2.4 - 0.4).requires_grad_()
    scale = None
    if with_scale:
        scale = (torch.rand(shape[0], generator=g, dtype=dtype) * 1.5 + 0.4).requires_grad_()
    out = kernels.blur_occupancy(vol, 1.3, K, scale, backend="cpu")
    ref = kernels.blur_occupancy(vol, 1.3, K, scale, backend="reference")
    close((out,), (ref,), dtype)
    inputs = (vol,) if scale is None else (vol, scale)
    close(grads((out,), inputs), grads((ref,), inputs), dtype)


def test_blur_occupancy_scale_dtype_follows_volume():
    vol = torch.rand(2, 1, 4, 4, 4, dtype=torch.float64)
    scale = torch.rand(2, dtype=torch.float32, requires_grad=True)
    out = kernels.blur_occupancy(vol, 1.0, 3, scale, backend="cpu")
    ref = kernels.blur_occupancy(vol, 1.0, 3, scale, backend="reference")
    torch.testing.assert_close(out, ref)
    (gs,) = torch.autograd.grad(out.sum(), scale)
    (gr,) = torch.autograd.grad(ref.sum(), scale)
    assert gs.dtype == torch.float32
    torch.testing.assert_close(gs, gr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,K", [((1, 1, 2, 3, 2), 3), ((2, 3, 6, 5, 4), 5)])
def test_blur3d_matches_reference(dtype, shape, K):
    g = torch.Generator().manual_seed(7)
    vol = torch.randn(shape, generator=g, dtype=dtype).requires_grad_()
    out = kernels.blur3d(vol, 0.9, K, backend="cpu")
    ref = kernels.blur3d(vol, 0.9, K, backend="reference")
    close((out,), (ref,), dtype)
    close(grads((out,), (vol,)), grads((ref,), (vol,)), dtype)


def test_blur_gradcheck():
    g = torch.Generator().manual_seed(2)
    # Inputs and scaled outputs away from the clip bounds 0 and 1 (the kinks), some
    # clipped everywhere around them.
    vol = torch.rand(2, 1, 4, 3, 5, generator=g, dtype=torch.float64) * 0.8 + 0.1
    vol[0, 0, 0, 0] = 1.7
    vol[1, 0, 1, 2] = -0.5
    vol.requires_grad_()
    scale = torch.tensor([0.7, 0.9], dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(
        lambda v, s: kernels.blur_occupancy(v, 1.1, 3, s, backend="cpu"), (vol, scale)
    )
    big = torch.tensor([30.0, 40.0], dtype=torch.float64, requires_grad=True)  # saturates
    torch.autograd.gradcheck(
        lambda v, s: kernels.blur_occupancy(v, 1.1, 3, s, backend="cpu"), (vol, big)
    )
    v3 = torch.randn(1, 2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda v: kernels.blur3d(v, 0.8, 5, backend="cpu"), (v3,))


# ---------------------------------------------------------------- projection


def occupancy_cases(shape, dtype, g):
    """Random occupancy with whole slices and single rays at o = 0 and o = 1."""
    occ = torch.rand(shape, generator=g, dtype=dtype)
    D = shape[2]
    occ[:, :, 0, 0] = 0.0  # first slice, first row: o = 0
    if D > 1:
        occ[:, :, 1, :, 0] = 1.0  # o = 1 mid-ray
    occ[:, :, -1, -1] = 1.0  # last slice: o = 1
    if shape[0] > 1:
        occ[1] = 0.0  # a wholly empty volume: every ray escapes
    return occ


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,C", [((1, 1, 1, 1, 1), 0), ((2, 1, 5, 6, 7), 3), ((3, 1, 8, 3, 2), 1)]
)
@pytest.mark.parametrize("return_depth,return_probs", [(True, True), (False, False), (True, False)])
def test_ray_project_matches_reference(dtype, shape, C, return_depth, return_probs):
    g = torch.Generator().manual_seed(shape[2] * 10 + C)
    occ = occupancy_cases(shape, dtype, g).requires_grad_()
    cols = None
    if C:
        cols = torch.rand(shape[0], C, *shape[2:], generator=g, dtype=dtype).requires_grad_()
    args = (occ, cols, 2.0, 10.0, 1.0, return_depth, return_probs)
    out = kernels.ray_project(*args, backend="cpu")
    ref = kernels.ray_project(*args, backend="reference")
    close(out, ref, dtype)
    inputs = (occ,) if cols is None else (occ, cols)
    close(grads(out, inputs), grads(ref, inputs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ray_project_gradient_of_single_outputs(dtype):
    # Gradient from only one of the outputs (the others' incoming gradients are None).
    g = torch.Generator().manual_seed(5)
    occ = occupancy_cases((2, 1, 4, 3, 5), dtype, g).requires_grad_()
    cols = torch.rand(2, 2, 4, 3, 5, generator=g, dtype=dtype).requires_grad_()
    for i in range(4):
        out = kernels.ray_project(occ, cols, return_depth=True, return_probs=True, backend="cpu")
        ref = kernels.ray_project(
            occ, cols, return_depth=True, return_probs=True, backend="reference"
        )
        close(grads((out[i],), (occ, cols)), grads((ref[i],), (occ, cols)), dtype)


def test_ray_project_gradcheck():
    g = torch.Generator().manual_seed(3)
    occ = occupancy_cases((2, 1, 4, 3, 2), torch.float64, g).requires_grad_()
    cols = torch.rand(2, 2, 4, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    torch.autograd.gradcheck(
        lambda o, c: tuple(kernels.ray_project(o, c, 2.0, 10.0, 1.0, True, True, backend="cpu")),
        (occ, cols),
    )
    torch.autograd.gradcheck(
        lambda o: kernels.ray_project(o, return_depth=False, backend="cpu").silhouette, (occ,)
    )


# ---------------------------------------------------------------- renderer, threads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_colors", [False, True])
def test_renderer_cpu_matches_reference(dtype, with_colors):
    g = torch.Generator().manual_seed(11)
    B, N = 3, 300
    pts = ((torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5) * 0.9).requires_grad_()
    q = torch.randn(B, 4, generator=g, dtype=dtype)
    scale = (torch.rand(B, generator=g, dtype=dtype) * 0.5 + 0.5).requires_grad_()
    cols = torch.rand(B, N, 3, generator=g, dtype=dtype).requires_grad_() if with_colors else None
    outs = []
    for backend in ("auto", "reference"):
        r = PointCloudRenderer(
            RenderSettings(vox_size=12, vox_size_z=10, kernel_size=5, backend=backend)
        )
        o = r(pts, q, 1.2, scale, cols, return_depth=True, return_probs=True)
        inputs = (pts, scale) if cols is None else (pts, scale, cols)
        outs.append((o, grads((o.silhouette, o.depth, o.color, o.probs), inputs)))
    (a, ga), (b, gb) = outs
    close(
        (a.silhouette, a.depth, a.color, a.probs), (b.silhouette, b.depth, b.color, b.probs), dtype
    )
    close(ga, gb, dtype)


def test_results_do_not_depend_on_thread_count():
    # The batch is split over threads; each element's arithmetic is the same, so the
    # outputs and gradients must be bitwise equal for 1 and 3 threads.
    g = torch.Generator().manual_seed(4)
    pts = ((torch.rand(5, 200, 3, generator=g) - 0.5) * 0.9).requires_grad_()
    q = torch.randn(5, 4, generator=g)
    scale = torch.rand(5, generator=g).requires_grad_()
    r = PointCloudRenderer(RenderSettings(vox_size=10, kernel_size=3, backend="cpu"))
    res = []
    old = torch.get_num_threads()
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            o = r(pts, q, 1.0, scale, return_depth=True)
            res.append((o.silhouette, o.depth, *grads((o.silhouette, o.depth), (pts, scale))))
    finally:
        torch.set_num_threads(old)
    for x, y in zip(*res):
        assert torch.equal(x, y)
