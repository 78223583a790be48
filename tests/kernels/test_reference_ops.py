"""The pure-PyTorch reference ops: known answers, invariants, gradcheck, bad input."""

import math

import pytest
import torch

import kernels
from kernels.reference import (
    _banded,
    blur3d_ref,
    depth_values,
    gaussian_kernel1d,
    max_project_ref,
    ray_project_ref,
    splat_points_ref,
)


def grid_coord(u, size):
    """Grid coordinate c in [-0.5, 0.5] whose grid unit is u on an axis of ``size`` cells."""
    return u / (size - 1) - 0.5


def test_single_point_lands_in_exact_cells_with_exact_weights():
    D, H, W = 6, 7, 8
    u = (2.25, 3.5, 4.0)  # fractional parts 0.25, 0.5, 0.0
    p = torch.tensor(
        [[[grid_coord(u[0], D), grid_coord(u[1], H), grid_coord(u[2], W)]]], dtype=torch.float64
    )
    occ, _ = splat_points_ref(p, (D, H, W))
    expected = torch.zeros(1, 1, D, H, W, dtype=torch.float64)
    expected[0, 0, 2, 3, 4] = 0.75 * 0.5
    expected[0, 0, 3, 3, 4] = 0.25 * 0.5
    expected[0, 0, 2, 4, 4] = 0.75 * 0.5
    expected[0, 0, 3, 4, 4] = 0.25 * 0.5
    torch.testing.assert_close(occ, expected, atol=1e-12, rtol=0)


def test_points_on_far_faces_and_corners_keep_unit_mass():
    # A point exactly at +0.5 has u = S-1: its "+1" corners are beyond the grid with weight 0.
    p = torch.tensor([[[0.5, 0.5, 0.5], [-0.5, -0.5, -0.5], [0.5, -0.5, 0.0]]])
    occ, _ = splat_points_ref(p, (5, 5, 5))
    assert occ[0, 0, 4, 4, 4] == 1.0 and occ[0, 0, 0, 0, 0] == 1.0
    torch.testing.assert_close(occ.sum(), torch.tensor(3.0))


def test_outside_and_nonfinite_points_are_dropped_whole():
    p = torch.tensor([[[0.51, 0.0, 0.0], [0.0, -0.5001, 0.0], [0.0, 0.0, 0.1]]])
    occ, feat = splat_points_ref(p, (9, 9, 9), features=torch.ones(1, 3, 2))
    torch.testing.assert_close(occ.sum(), torch.tensor(1.0))  # only the third point
    torch.testing.assert_close(feat.sum(), torch.tensor(2.0))


def test_trilinear_weights_sum_to_one_per_point_and_features_weighted():
    g = torch.Generator().manual_seed(0)
    B, N, C = 3, 50, 2
    p = torch.rand(B, N, 3, generator=g, dtype=torch.float64) - 0.5
    f = torch.rand(B, N, C, generator=g, dtype=torch.float64)
    occ, feat = splat_points_ref(p, (17, 9, 12), f)
    torch.testing.assert_close(
        occ.sum(dim=(1, 2, 3, 4)), torch.full((B,), float(N), dtype=torch.float64)
    )
    torch.testing.assert_close(feat.sum(dim=(2, 3, 4)), f.sum(1))
    # Single points, one at a time: each sums to 1.
    for n in range(5):
        o1, _ = splat_points_ref(p[:1, n : n + 1], (17, 9, 12))
        assert abs(o1.sum().item() - 1.0) < 1e-12


def test_gaussian_kernel_sums_to_one_and_is_symmetric():
    for K, s in ((1, 1.0), (7, 0.5), (21, 3.0), (21, 0.2)):
        k = gaussian_kernel1d(s, K, dtype=torch.float64)
        assert k.shape == (K,)
        assert abs(k.sum().item() - 1.0) < 1e-12
        torch.testing.assert_close(k, k.flip(0))
    k = gaussian_kernel1d(1.0, 5, dtype=torch.float64)
    e = torch.exp(-torch.tensor([4.0, 1.0, 0.0, 1.0, 4.0], dtype=torch.float64) / 2)
    torch.testing.assert_close(k, e / e.sum())


def test_blur_matches_direct_convolution_and_preserves_mass_inside():
    g = torch.Generator().manual_seed(1)
    v = torch.rand(2, 2, 9, 10, 11, generator=g, dtype=torch.float64)
    out = blur3d_ref(v, 1.3, 5)
    k = gaussian_kernel1d(1.3, 5, dtype=torch.float64)
    w3 = k[:, None, None] * k[None, :, None] * k[None, None, :]
    direct = torch.nn.functional.conv3d(v.reshape(4, 1, 9, 10, 11), w3[None, None], padding=2)
    torch.testing.assert_close(out, direct.reshape(2, 2, 9, 10, 11))
    # Mass away from the borders is preserved.
    spike = torch.zeros(1, 1, 15, 15, 15, dtype=torch.float64)
    spike[0, 0, 7, 7, 7] = 2.0
    assert abs(blur3d_ref(spike, 1.0, 7).sum().item() - 2.0) < 1e-12
    # Non-cubic depth size.
    assert blur3d_ref(torch.rand(1, 1, 5, 8, 8), 1.0, 3).shape == (1, 1, 5, 8, 8)


def test_banded_matrix_zero_padding():
    k = torch.tensor([0.25, 0.5, 0.25])
    M = _banded(k, 4)
    expected = torch.tensor(
        [[0.5, 0.25, 0, 0], [0.25, 0.5, 0.25, 0], [0, 0.25, 0.5, 0.25], [0, 0, 0.25, 0.5]]
    )
    torch.testing.assert_close(M, expected)


def test_termination_probabilities_sum_to_one():
    g = torch.Generator().manual_seed(2)
    o = torch.rand(2, 1, 13, 4, 5, generator=g, dtype=torch.float64)
    o[0, 0, 3] = 1.0
    o[1, 0, :2] = 0.0
    r = ray_project_ref(o, return_probs=True)
    assert r.probs.shape == (2, 14, 4, 5)
    torch.testing.assert_close(r.probs.sum(1), torch.ones(2, 4, 5, dtype=torch.float64))
    torch.testing.assert_close(r.silhouette, 1 - r.probs[:, -1])
    assert (r.probs >= 0).all()


def test_opaque_first_cell_and_empty_volume():
    D = 8
    o = torch.zeros(2, 1, D, 3, 3)
    o[0, 0, 0] = 1.0  # fully opaque first cell everywhere in batch 0
    o[0, 0, 4] = 0.7  # hidden behind it
    colors = torch.rand(2, 3, D, 3, 3)
    r = ray_project_ref(o, colors, camera_distance=2.0, max_depth=10.0, background=1.0)
    torch.testing.assert_close(r.silhouette[0], torch.ones(3, 3))
    torch.testing.assert_close(r.depth[0], torch.full((3, 3), 2.0 - 0.5))  # d + 0/D - 0.5
    torch.testing.assert_close(r.color[0], colors[0, :, 0])
    torch.testing.assert_close(r.silhouette[1], torch.zeros(3, 3))
    torch.testing.assert_close(r.depth[1], torch.full((3, 3), 10.0))
    torch.testing.assert_close(r.color[1], torch.ones(3, 3, 3))  # white background


def test_depth_values_match_original_grid():
    dv = depth_values(4, 2.0, 10.0, torch.float64, "cpu")
    torch.testing.assert_close(dv, torch.tensor([1.5, 1.75, 2.0, 2.25, 10.0], dtype=torch.float64))


def test_projection_gradients_finite_at_zero_and_one():
    o = torch.rand(2, 1, 6, 3, 3, dtype=torch.float64)
    o[0, 0, 1] = 1.0
    o[0, 0, 4] = 1.0
    o[1] = 0.0
    o.requires_grad_(True)
    r = ray_project_ref(o, torch.rand(2, 3, 6, 3, 3, dtype=torch.float64))
    (r.silhouette.sum() + r.depth.sum() + r.color.sum()).backward()
    assert torch.isfinite(o.grad).all()
    # The projection is a polynomial in o: gradcheck holds even at exact 0 and 1.
    torch.autograd.gradcheck(lambda x: ray_project_ref(x).depth, (o.detach().requires_grad_(),))


def test_max_projection():
    o = torch.zeros(1, 1, 4, 2, 2)
    o[0, 0, 2, 0, 1] = 0.6
    o[0, 0, 1, 0, 1] = 0.3
    torch.testing.assert_close(max_project_ref(o), torch.tensor([[[0.0, 0.6], [0.0, 0.0]]]))


@pytest.mark.slow
def test_gradcheck_each_op_float64():
    g = torch.Generator().manual_seed(3)
    p = (torch.rand(2, 6, 3, generator=g, dtype=torch.float64) * 0.9 - 0.45).requires_grad_()
    f = torch.rand(2, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda a, b: splat_points_ref(a, (5, 6, 7), b), (p, f))
    v = torch.rand(1, 2, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x: blur3d_ref(x, 0.8, 3), (v,))
    o = torch.rand(2, 1, 5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.rand(2, 3, 5, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(
        lambda a, b: tuple(t for t in ray_project_ref(a, b, return_probs=True) if t is not None),
        (o, c),
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: kernels.splat_points(torch.rand(2, 5), (4, 4, 4)), "points"),
        (lambda: kernels.splat_points(torch.rand(1, 5, 2), (4, 4, 4)), "points"),
        (lambda: kernels.splat_points(torch.rand(1, 5, 3), (4, 4)), "size"),
        (
            lambda: kernels.splat_points(torch.rand(1, 5, 3), (4, 4, 4), torch.rand(1, 4, 3)),
            "features",
        ),
        (lambda: kernels.blur3d(torch.rand(1, 1, 4, 4, 4), 1.0, 4), "kernel_size"),
        (lambda: kernels.blur3d(torch.rand(1, 1, 4, 4, 4), 1.0, 0), "kernel_size"),
        (lambda: kernels.blur3d(torch.rand(1, 1, 4, 4, 4), 0.0, 3), "sigma"),
        (lambda: kernels.blur3d(torch.rand(1, 1, 4, 4, 4), -1.0, 3), "sigma"),
        (lambda: kernels.blur3d(torch.rand(1, 4, 4, 4), 1.0, 3), "volume"),
        (lambda: kernels.ray_project(torch.rand(1, 2, 4, 4, 4)), "occupancy"),
        (
            lambda: kernels.ray_project(torch.rand(1, 1, 4, 4, 4), torch.rand(1, 3, 5, 4, 4)),
            "colors",
        ),
        (lambda: kernels.blur3d(torch.rand(1, 1, 4, 4, 4), 1.0, 3, backend="cuda"), "backend"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("backend", ["reference", "cpu", "auto"])
def test_nan_points_are_dropped_not_rejected(backend):
    """No finiteness check on the training path (it would sync the host): a NaN point is
    dropped whole like a point outside the grid, on every backend."""
    p = torch.tensor([[[0.1, 0.2, -0.3], [math.nan, 0.0, 0.0], [0.0, math.inf, 0.0]]])
    occ, _ = kernels.splat_points(p, (5, 6, 7), backend=backend)
    occ1, _ = kernels.splat_points(p[:, :1], (5, 6, 7), backend=backend)
    assert torch.equal(occ, occ1)
