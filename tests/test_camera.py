"""Quaternion and camera utilities against closed forms."""

import math

import numpy as np
import pytest
import torch

from dpc import camera as C
from dpc.data.images import resize_masks


def test_quat_rotate_90_deg_about_y():
    q = C.quat_from_axis_angle(torch.tensor([0.0, 1.0, 0.0]), torch.tensor(math.pi / 2))
    p = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]])
    out = C.quat_rotate(q[None], p)
    # Right-handed rotation about +y by 90 deg: x -> -z, z -> x, y fixed.
    expected = torch.tensor([[[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_q_and_minus_q_are_the_same_rotation():
    g = torch.Generator().manual_seed(0)
    q = C.random_quat(16, g)
    p = torch.randn(16, 10, 3, generator=g)
    torch.testing.assert_close(C.quat_rotate(q, p), C.quat_rotate(-q, p))
    assert C.quat_angle(q, -q).abs().max() < 1e-3  # acos near 1 is ill-conditioned in fp32


def test_rotate_matches_matrix_and_sandwich_product():
    g = torch.Generator().manual_seed(1)
    q = C.random_quat(8, g, dtype=torch.float64)
    p = torch.randn(8, 5, 3, generator=g, dtype=torch.float64)
    R = C.quat_to_matrix(q)
    torch.testing.assert_close(C.quat_rotate(q, p), p @ R.transpose(1, 2))
    pq = torch.cat((torch.zeros(8, 5, 1, dtype=torch.float64), p), -1)
    sandwich = C.quat_mul(C.quat_mul(q[:, None], pq), C.quat_conj(q)[:, None])
    torch.testing.assert_close(sandwich[..., 1:], C.quat_rotate(q, p))
    torch.testing.assert_close(sandwich[..., 0], torch.zeros(8, 5, dtype=torch.float64))


def test_matrix_round_trip_and_orthonormal():
    g = torch.Generator().manual_seed(2)
    q = C.random_quat(256, g, dtype=torch.float64)
    # Include rotations by ~180 degrees, where the trace formula alone breaks down.
    q[:4] = C.quat_normalize(
        torch.tensor(
            [[0.0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-9, 1, 1, 0]], dtype=torch.float64
        )
    )
    R = C.quat_to_matrix(q)
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(256, dtype=torch.float64))
    q2 = C.matrix_to_quat(R)
    assert C.quat_angle(q, q2).max() < 1e-6
    torch.testing.assert_close(C.quat_to_matrix(q2), R)


def test_quat_mul_composes_rotations_and_conj_inverts():
    g = torch.Generator().manual_seed(3)
    a, b = C.random_quat(4, g, torch.float64), C.random_quat(4, g, torch.float64)
    p = torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        C.quat_rotate(C.quat_mul(a, b), p), C.quat_rotate(a, C.quat_rotate(b, p))
    )
    torch.testing.assert_close(C.quat_rotate(C.quat_conj(a), C.quat_rotate(a, p)), p)


def test_quat_angle_known_values():
    axis = torch.tensor([0.3, -1.0, 0.5])
    for deg in (0.0, 10.0, 90.0, 179.0):
        q = C.quat_from_axis_angle(axis, torch.tensor(math.radians(deg), dtype=torch.float64))
        ident = torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)
        assert abs(math.degrees(C.quat_angle(ident, q).item()) - deg) < 1e-5
    # 270 deg about an axis is 90 deg about the opposite one.
    q = C.quat_from_axis_angle(
        axis.double(), torch.tensor(math.radians(270.0), dtype=torch.float64)
    )
    assert (
        abs(math.degrees(C.quat_angle(torch.tensor([1.0, 0, 0, 0]).double(), q).item()) - 90) < 1e-5
    )


def test_view_quat_camera_position_and_axes():
    az = torch.tensor([0.0, 0.7, 2.0, -2.5])
    el = torch.tensor([0.0, 0.3, -0.4, 1.2])
    q = C.view_quat(az, el)
    pos = C.camera_position(q, 2.0)
    expected = 2.0 * torch.stack(
        (torch.cos(el) * torch.cos(az), torch.sin(el), torch.cos(el) * torch.sin(az)), -1
    )
    torch.testing.assert_close(pos, expected, atol=1e-5, rtol=0)
    # The camera-frame image of the camera centre is (-d, 0, 0); the origin projects to the
    # image centre; +y projects upwards (row < 0) for moderate elevation.
    cam = C.quat_rotate(q, pos[:, None])
    torch.testing.assert_close(
        cam[:, 0], torch.tensor([[-2.0, 0, 0]]).expand(4, 3), atol=1e-5, rtol=0
    )
    up = C.world_to_grid(torch.tensor([[[0.0, 0.3, 0.0]]]).expand(4, 1, 3), q)
    assert (up[:3, 0, 1] < 0).all()


def test_image_not_mirrored():
    # Camera at -x looking towards +x with y up: a viewer there sees +z on the right
    # (x forward, y up -> right = forward x up = +z).
    q = C.look_at_quat(torch.tensor([[-2.0, 0.0, 0.0]]))
    g = C.world_to_grid(torch.tensor([[[0.0, 0.0, 0.2]]]), q)
    assert g[0, 0, 2] > 0  # col > 0: right half of the image
    torch.testing.assert_close(q, torch.tensor([[1.0, 0, 0, 0]]), atol=1e-6, rtol=0)


def test_perspective_transform_closed_form():
    p = torch.tensor([[[0.5, 0.2, -0.1], [0.0, 0.0, 0.0]]])
    out = C.perspective_transform(p, 2.0, 1.875)
    expected = torch.tensor([[[0.5, -1.875 * 0.2 / 2.5, 1.875 * -0.1 / 2.5], [0.0, 0.0, 0.0]]])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("size", [32, 64])
def test_resize_masks_aligned_corners(size):
    m = torch.zeros(1, 128, 128)
    m[0, 0, 0] = 1.0
    m[0, -1, -1] = 1.0
    r = resize_masks(m, size)
    assert r.shape == (1, size, size)
    assert r[0, 0, 0] == 1.0 and r[0, -1, -1] == 1.0  # corner pixels map onto corners


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fast", [True, False])
def test_world_to_grid_matrix_path_matches_quaternion_product(dtype, fast, monkeypatch):
    # world_to_grid rotates with 3x3 matrices: on CPU in one numba pass (fast), else one
    # bmm; the quaternion cross-product formula (quat_rotate) is the oracle, values and
    # gradients (points, q, translation), for non-unit q too.
    if not fast:
        monkeypatch.setattr(C, "_fast_cpu", lambda *a: False)
    g = torch.Generator().manual_seed(3)
    B, N = 5, 37
    pts = (torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5).requires_grad_()
    q = (torch.randn(B, 4, generator=g, dtype=dtype) * 2).requires_grad_()
    t = torch.randn(B, 3, generator=g, dtype=dtype) * 0.1
    t.requires_grad_()
    out = C.world_to_grid(pts, q, t)
    ref = C.perspective_transform(C.quat_rotate(C.quat_normalize(q), pts) + t[:, None])
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, ref, **tol)
    w = torch.randn(out.shape, generator=g, dtype=dtype)
    ga = torch.autograd.grad((out * w).sum(), (pts, q, t))
    gb = torch.autograd.grad((ref * w).sum(), (pts, q, t))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **tol)


def test_rotate_project_cpu_gradcheck():
    from kernels.cpu import rotate_project_cpu

    g = torch.Generator().manual_seed(4)
    pts = (torch.rand(2, 5, 3, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    R = C.quat_to_matrix(torch.randn(2, 4, generator=g, dtype=torch.float64))
    R = (R + 0.1 * torch.randn(2, 3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    t = (0.1 * torch.randn(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    torch.autograd.gradcheck(lambda p, r, tt: rotate_project_cpu(p, r, tt, 2.0, 1.875), (pts, R, t))
    torch.autograd.gradcheck(lambda p, r: rotate_project_cpu(p, r, None, 2.0, 1.875), (pts, R))


def test_silhouette_twin_is_the_view_from_180_minus_az_at_minus_el():
    from dpc.camera import quat_angle, silhouette_twin, view_quat

    g = torch.Generator().manual_seed(0)
    az = torch.rand(50, generator=g, dtype=torch.float64) * 2 * math.pi
    el = (torch.rand(50, generator=g, dtype=torch.float64) - 0.5) * 2.0
    q = view_quat(az, el)
    tw = silhouette_twin(q)
    assert quat_angle(tw, view_quat(math.pi - az, -el)).max() < 1e-6
    assert quat_angle(silhouette_twin(tw), q).max() < 1e-6  # its own inverse
    # a large error in general (none at the side views, az = +-90 degrees, el = 0)
    assert torch.rad2deg(quat_angle(tw, q)).median() > 60


def test_silhouette_twin_has_the_same_silhouette_far_away():
    """Seen from far (nearly orthographic), a cloud mirror-symmetric across z = 0 renders
    the same silhouette from a view and from its twin; with one side removed it does not.
    At dpc's camera (distance 2) perspective separates the two."""
    from dpc.camera import silhouette_twin, view_quat
    from dpc.render import PointCloudRenderer, RenderSettings

    rng = np.random.default_rng(0)
    half = rng.uniform(-0.4, 0.4, (600, 3)) * [1.0, 0.3, 0.5]
    half[:, 2] = np.abs(half[:, 2])
    half[:, 0] += 0.3 * half[:, 2]  # swept back: no other symmetry
    sym = torch.tensor(np.concatenate([half, half * [1, 1, -1]]), dtype=torch.float32)
    one = torch.tensor(np.concatenate([half, half]), dtype=torch.float32)
    q = view_quat(torch.tensor([0.6, 2.0, 4.0]), torch.tensor([0.3, -0.2, 0.5]))
    qq = torch.cat([q, silhouette_twin(q)])

    def diff(pts, distance):
        r = PointCloudRenderer(RenderSettings(vox_size=32, kernel_size=5,
                                              camera_distance=distance,
                                              focal_length=1.875 * distance / 2))  # fmt: skip
        s = r(pts[None].expand(6, -1, -1), qq, sigma=0.7, scale=torch.full((6,), 0.3)).silhouette
        return float((s[:3] - s[3:]).abs().sum() / s[:3].sum())

    assert diff(sym, 200.0) < 0.02
    assert diff(one, 200.0) > 0.3
    assert diff(sym, 2.0) > 2 * diff(sym, 200.0)


def test_azel_quat_is_view_quat_in_closed_form_and_smooth():
    g = torch.Generator().manual_seed(5)
    az = torch.rand(200, generator=g, dtype=torch.float64) * 8 * math.pi - 4 * math.pi
    el = (torch.rand(200, generator=g, dtype=torch.float64) - 0.5) * 3.1
    q = C.azel_quat(az, el)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(200, dtype=torch.float64))
    assert C.quat_angle(q, C.view_quat(az, el)).max().item() < 1e-6
    # smooth where view_quat's matrix round trip branches: float64 gradcheck
    a = az[:6].clone().requires_grad_(True)
    e = el[:6].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(C.azel_quat, (a, e))
