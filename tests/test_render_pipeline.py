"""The whole renderer (reference backend): camera model, gradients, options, bad input."""

import math

import pytest
import torch

from dpc.camera import view_quat, world_to_grid
from dpc.render import PointCloudRenderer, RenderSettings, dropout_indices, kept_count


def sphere_points(n, radius, generator):
    p = torch.randn(1, n, 3, generator=generator, dtype=torch.float64)
    return radius * p / p.norm(dim=-1, keepdim=True)


def test_sphere_silhouette_size_matches_camera_model():
    """Spheres of radius R at distance d are discs of radius f R / sqrt(d^2 - R^2) on the
    image plane (grid cells 1/(G-1) apart). Without blur, the trilinear footprint adds a
    rim of up to one cell: the equivalent radius is rho + [0.5, 1.5] px, and the rim
    cancels in the difference between two spheres."""
    g = torch.Generator().manual_seed(0)
    G = 64
    q = view_quat(torch.tensor([0.3]), torch.tensor([0.2])).double()
    r = PointCloudRenderer(RenderSettings(vox_size=G, kernel_size=1))
    r_eq, rho = [], []
    for radius in (0.25, 0.4):
        sil = r(sphere_points(30000, radius, g), q, sigma=1.0).silhouette
        r_eq.append(math.sqrt((sil > 0.5).sum().item() / math.pi))
        rho.append(1.875 * radius / math.sqrt(4.0 - radius**2) * (G - 1))
        assert 0.5 < r_eq[-1] - rho[-1] < 1.5, (r_eq, rho)
        # Centred on the image centre, (G-1)/2.
        ii, jj = torch.nonzero(sil[0] > 0.5, as_tuple=True)
        assert abs(ii.double().mean().item() - (G - 1) / 2) < 0.5
        assert abs(jj.double().mean().item() - (G - 1) / 2) < 0.5
    assert abs((r_eq[1] - r_eq[0]) - (rho[1] - rho[0])) < 0.3, (r_eq, rho)


def test_translation_moves_image_right_and_up():
    # camera-frame translation (depth, up, right): grid rows grow downwards, columns right
    pts = torch.zeros(1, 1, 3)
    q = torch.tensor([[1.0, 0, 0, 0]])
    gp = world_to_grid(pts, q, torch.tensor([[0.0, 0.2, 0.2]]))[0, 0]
    assert gp[1] < -0.1 and gp[2] > 0.1  # moved up and right


def test_outputs_shapes_depth_color_and_max_projection():
    g = torch.Generator().manual_seed(2)
    pts = sphere_points(3000, 0.3, g).float().expand(2, -1, -1)
    cols = torch.zeros(2, 3000, 3)
    cols[..., 0] = 1.0  # red
    q = view_quat(torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5]))
    r = PointCloudRenderer(RenderSettings(vox_size=32, kernel_size=5))
    out = r(
        pts,
        q,
        1.0,
        scale=torch.tensor([1.0, 0.5]),
        colors=cols,
        return_depth=True,
        return_voxels=True,
        return_probs=True,
    )
    assert out.silhouette.shape == (2, 32, 32) and out.depth.shape == (2, 32, 32)
    assert out.color.shape == (2, 3, 32, 32) and out.voxels.shape == (2, 1, 32, 32, 32)
    assert out.probs.shape == (2, 33, 32, 32)
    c = out.color[0, :, 16, 16]  # centre of the sphere: red, not white
    assert c[0] > 0.9 and c[1] < 0.2 and c[2] < 0.2
    assert out.color[0, :, 0, 0].min() > 0.99  # corner: white background
    # Front surface of the sphere at depth ~ d - R.
    assert abs(out.depth[0, 16, 16].item() - 1.7) < 0.15
    # A smaller occupancy scale gives a fainter silhouette.
    assert out.silhouette[1].sum() < out.silhouette[0].sum()
    rmax = PointCloudRenderer(RenderSettings(vox_size=32, kernel_size=5, projection="max"))
    assert rmax(pts, q, 1.0).silhouette.shape == (2, 32, 32)


def test_point_dropout_keeps_fraction_and_is_seeded():
    a = dropout_indices(0.075, 100, (2,), generator=torch.Generator().manual_seed(0))
    b = dropout_indices(0.075, 100, (2,), generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 8)  # ceil(7.5)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a[0].sort().values, a[1].sort().values)  # a subset per row
    assert kept_count(0.075, 100, per_view=True) == 7 and kept_count(0.29, 100, True) == 29
    assert dropout_indices(1.0, 100, (2,)) is None
    with pytest.raises(ValueError, match="keep_fraction"):
        dropout_indices(0.0, 100, (2,))
    # the renderer's keep_fraction renders that subset
    pts = torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(1)) - 0.5
    q = torch.tensor([[1.0, 0, 0, 0]]).expand(2, 4)
    r = PointCloudRenderer(RenderSettings(vox_size=16, kernel_size=3, backend="reference"))
    got = r(pts, q, 1.0, keep_fraction=0.075, generator=torch.Generator().manual_seed(0))
    sub = torch.gather(pts, 1, a[..., None].expand(-1, -1, 3))
    torch.testing.assert_close(got.silhouette, r(sub, q, 1.0).silhouette)


@pytest.mark.slow
def test_gradcheck_whole_renderer_points_quat_scale():
    g = torch.Generator().manual_seed(3)
    pts = (torch.rand(2, 5, 3, generator=g, dtype=torch.float64) * 0.6 - 0.3).requires_grad_()
    q = torch.tensor(
        [[0.9, 0.1, 0.3, -0.2], [0.5, -0.5, 0.4, 0.1]], dtype=torch.float64, requires_grad=True
    )
    s = torch.tensor([0.7, 0.4], dtype=torch.float64, requires_grad=True)
    r = PointCloudRenderer(RenderSettings(vox_size=6, kernel_size=3))

    def f(p, qq, ss):
        out = r(p, qq, 0.9, scale=ss, return_depth=True)
        return out.silhouette, out.depth

    torch.autograd.gradcheck(f, (pts, q, s))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(quat=torch.tensor([[1.0, 0, 0]])), "quat"),
        (dict(quat=torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])), "quat"),
        (dict(points=torch.zeros(1, 1, 2)), "points"),
        (dict(sigma=0.0), "sigma"),
        (dict(scale=torch.tensor([1.0, 1.0])), "scale"),
        (dict(colors=torch.zeros(1, 2, 3)), "colors"),
    ],
)
def test_renderer_bad_input(kwargs, match):
    args = dict(points=torch.zeros(1, 1, 3), quat=torch.tensor([[1.0, 0, 0, 0]]), sigma=1.0)
    args.update(kwargs)
    r = PointCloudRenderer(RenderSettings(vox_size=8, kernel_size=3))
    with pytest.raises(ValueError, match=match):
        r(**args)


def test_renderer_non_finite_inputs_reach_the_loss_not_an_error():
    """No finiteness checks (they sync the host every step): a non-finite scale, pose or
    point makes that view's images NaN (not an empty silhouette, which a dropped NaN point
    would give), for the training loop's non-finite-loss check to catch."""
    r = PointCloudRenderer(RenderSettings(vox_size=8, kernel_size=3))
    pts = torch.zeros(2, 2, 3)
    q = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    bad_q = torch.tensor([[1.0, 0, 0, 0], [math.inf, 0, 0, 0]])
    bad_p = pts.clone()
    bad_p[1, 1, 0] = math.nan
    for kw in (
        dict(points=pts, quat=q, scale=torch.tensor([1.0, math.nan])),
        dict(points=pts, quat=bad_q),
        dict(points=bad_p, quat=q, return_depth=True),
    ):
        out = r(sigma=1.0, **kw)
        assert torch.isfinite(out.silhouette[0]).all() and torch.isnan(out.silhouette[1]).any()
        if out.depth is not None:
            assert torch.isnan(out.depth[1]).all()


def test_renderer_rejects_even_kernel_size():
    with pytest.raises(ValueError, match="kernel_size"):
        PointCloudRenderer(RenderSettings(kernel_size=4))
