"""The loss terms of dpc.training.terms, each on its own with a known answer, and the
step's loss as exactly their weighted sum (a term dropped from the sum, or from TERMS,
fails here)."""

import math

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import CAMERA_DISTANCE, quat_from_axis_angle, random_quat
from dpc.data.images import mask_distance_maps
from dpc.models import ModelOutput, build_model
from dpc.render import RenderOutput, build_renderer
from dpc.runs import normalize_loss_config
from dpc.training import terms as T
from dpc.training.step import compute_step

G = 9  # grid: pixel i at i / 8 - 0.5, pixel 4 is the image centre


def _ctx(cfg=None, points=None, batch=None, render=None, quats=None, student=None, step=0):
    """A one-object, one-view, one-candidate context: the identity pose, one point at
    the origin (it projects onto the image centre, grid depth 0)."""
    points = torch.zeros(1, 1, 3) if points is None else points
    quats = torch.tensor([1.0, 0, 0, 0]).view(1, 1, 1, 4) if quats is None else quats
    mask = torch.ones(1, 1, G, G)
    batch = {"mask": mask, "image": torch.full((1, 1, 3, G, G), 0.5), **(batch or {})}
    out = ModelOutput(points, torch.ones(1), None, quats.view(1, -1, 4), student)
    cfg = cfg or compose_cfg(TINY)
    render = render or RenderOutput(mask.view(1, G, G).clone(), None, None, None, None)
    return T.StepContext(cfg, step, batch, out, quats, points, None, CAMERA_DISTANCE, 1.875,
                         render)  # fmt: skip


def test_projection_is_half_the_squared_error_of_the_silhouette():
    sil = torch.ones(1, G, G)
    sil[0, 2, 3] = 0.0  # one pixel off by 1, another by 0.5
    sil[0, 5, 5] = 0.5
    ctx = _ctx(render=RenderOutput(sil, None, None, None, None))
    assert T.Projection()(ctx).shape == (1, 1, 1)
    assert T.Projection()(ctx).item() == pytest.approx(0.5 * (1.0 + 0.25))


def test_color_compares_with_the_input_image_resized_to_the_grid():
    col = torch.full((1, 3, G, G), 0.25)
    ctx = _ctx(render=RenderOutput(torch.ones(1, G, G), None, col, None, None))
    assert T.Color()(ctx).item() == pytest.approx(0.5 * 3 * G * G * 0.25**2)
    with pytest.raises(ValueError, match="pc_rgb"):
        T.Color()(_ctx())


def test_depth_compares_with_the_depth_maps():
    dep = torch.full((1, G, G), 2.0)
    ctx = _ctx(
        batch={"depth": torch.full((1, 1, G, G), 1.5)},
        render=RenderOutput(torch.ones(1, G, G), dep, None, None, None),
    )
    assert T.Depth()(ctx).item() == pytest.approx(0.5 * G * G * 0.25)


def test_silhouette_distance_sums_the_distance_map_at_the_points():
    pts = torch.zeros(1, 3, 3)  # three points at the centre
    ctx = _ctx(points=pts, batch={"mask_distance": torch.full((1, 1, G, G), 3.0)})
    assert T.SilhouetteDistance()(ctx).item() == pytest.approx(9.0)
    cfg = compose_cfg(TINY + ["loss.silhouette_distance_from_step=10",
                              "loss.silhouette_distance_weight=0.5"])  # fmt: skip
    assert T.SilhouetteDistance().weight(cfg, 9) == 0.0
    assert T.SilhouetteDistance().weight(cfg, 10) == 0.5


def test_surface_depth_is_the_depth_residual_in_cells():
    # the surface 0.1 behind the point at the origin (depth maps hold camera distances)
    depth = torch.full((1, 1, G, G), CAMERA_DISTANCE + 0.1)
    ctx = _ctx(batch={"depth": depth})
    assert T.SurfaceDepth()(ctx).item() == pytest.approx(0.1 * (G - 1), rel=1e-4)
    # the full-resolution maps win when the batch has them (loss.surface_full_res)
    full = torch.full((1, 1, 2 * G, 2 * G), CAMERA_DISTANCE + 0.2)
    ctx = _ctx(batch={"depth": depth, "depth_full": full, "mask_full": torch.ones_like(full)})
    assert T.SurfaceDepth()(ctx).item() == pytest.approx(0.2 * (G - 1), rel=1e-4)


def test_depth_coverage_is_the_distance_from_the_surface_pixels_to_the_nearest_point():
    mask = torch.zeros(1, 1, G, G)
    mask[..., 4, 6] = 1.0  # one surface pixel: row 0, col 6 / 8 - 0.5 = 0.25; grid depth 0
    ctx = _ctx(batch={"mask": mask, "depth": torch.full((1, 1, G, G), CAMERA_DISTANCE)})
    ctx.render = RenderOutput(torch.ones(1, G, G), None, None, None, None)
    assert T.DepthCoverage()(ctx).item() == pytest.approx(0.25 * (G - 1), rel=1e-4)


def test_hull_surface_is_the_inner_distance_at_the_points():
    ctx = _ctx(batch={"mask_inner_distance": torch.full((1, 1, G, G), 2.0)})
    assert T.HullSurface()(ctx).item() == pytest.approx(2.0)
    cfg = compose_cfg(TINY + ["loss.hull_surface_from_step=7", "loss.hull_surface_weight=3"])
    assert T.HullSurface().weight(cfg, 6) == 0.0
    assert T.HullSurface().weight(cfg, 7) == 3.0
    assert T.batch_targets(cfg) == {"mask_inner_distance"}  # loaded from the start


def test_repulsion_is_the_shortfall_below_the_radius_of_each_nearest_neighbour():
    # three points on a line, 0.25 and 0.75 apart; radius 0.5, one neighbour each:
    # 0 and 1 see each other at 0.25 -> (0.25 / 0.5)^2 each; 2's nearest is at 0.75 -> 0
    pts = torch.tensor([[[0.0, 0, 0], [0.25, 0, 0], [1.0, 0, 0]]])
    cfg = compose_cfg(TINY + ["loss.repulsion_radius=0.5", "loss.repulsion_neighbors=1",
                              "loss.repulsion_queries=3"])  # fmt: skip
    assert T.Repulsion()(_ctx(cfg, points=pts)).item() == pytest.approx(0.5 / 3)
    assert not T.Repulsion().per_candidate  # one value per cloud, whatever the pose
    assert T.Repulsion().weight(cfg, 0) == 0.0  # off by default
    cfg = compose_cfg(TINY + ["loss.repulsion_from_step=7", "loss.repulsion_weight=3"])
    assert T.Repulsion().weight(cfg, 6) == 0.0
    assert T.Repulsion().weight(cfg, 7) == 3.0


def test_student_is_one_minus_w_squared_of_the_winner():
    cfg = compose_cfg(TINY)
    normalize_loss_config(cfg.loss)
    teacher = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]).view(1, 1, 2, 4)
    quarter = quat_from_axis_angle(torch.tensor([0.0, 0, 1]), torch.tensor(math.pi / 2))
    ctx = _ctx(cfg, quats=teacher, student=quarter.view(1, 4))
    assert T.Student().applies(ctx)
    ctx.winner = torch.tensor([[0]])  # 90 degrees from the student: w^2 = 1/2
    assert T.Student()(ctx).item() == pytest.approx(0.5)
    ctx.winner = torch.tensor([[1]])  # 180 degrees about x vs 90 about z: w = 0
    assert T.Student()(ctx).item() == pytest.approx(1.0)
    assert not T.Student().applies(_ctx(compose_cfg(TINY + ["model=camera_supervision"])))


# ---- the step: the loss is the weighted sum of the terms ------------------------------------

ALL = {
    "loss.color_weight": 0.3,
    "loss.depth_weight": 0.7,
    "loss.silhouette_distance_weight": 0.11,
    "loss.surface_depth_weight": 0.13,
    "loss.depth_coverage_weight": 0.17,
    "loss.hull_surface_weight": 0.19,
    "loss.pose_predictor_student_loss_weight": 2.0,
    "loss.repulsion_weight": 0.23,
}


def _step_with_every_term(overrides=()):
    cfg = compose_cfg(TINY + ["model.pc_rgb=true", "model.pose_predict_num_candidates=2",
                              "loss.repulsion_radius=0.5"]  # every point has close neighbours
                      + [f"{k}={v}" for k, v in ALL.items()] + list(overrides))  # fmt: skip
    normalize_loss_config(cfg.loss)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(2, 2, 16, 16)  # 2 objects, 2 views, grid 16
    m[0, :, 4:12, 3:11] = 1.0  # around the image centre, where the first clouds are
    m[1, :, 1:6, 1:6] = 1.0  # off it (points outside: silhouette distance)
    batch = dict(image=torch.rand(2, 2, 3, 32, 32, generator=g), mask=m,
                 depth=torch.where(m > 0, CAMERA_DISTANCE - 0.1, 10.0),
                 mask_distance=mask_distance_maps(m, 16),
                 mask_inner_distance=mask_distance_maps(m, 16, inside=True),
                 quat=random_quat(4, generator=g).view(2, 2, 4))  # fmt: skip
    out = compute_step(build_model(cfg), build_renderer(cfg), batch, cfg, 3, 1.0, 0.5, slice(0, 2))
    return cfg, out


def test_the_step_loss_is_the_weighted_sum_of_every_term():
    cfg, out = _step_with_every_term()
    weights = {t.name: t.weight(cfg, 3) for t in T.TERMS}
    names = {t.name for t in T.TERMS}
    assert names == {"projection_loss", "color_loss", "depth_loss", "silhouette_distance",
                     "surface_depth", "depth_coverage", "hull_surface", "student_loss",
                     "repulsion"}  # fmt: skip
    assert set(out.terms) == names | {"data_loss", "pose_spread"}
    assert all(out.terms[n].item() > 0 for n in names)
    expect = sum(weights[n] * out.terms[n] for n in names)
    torch.testing.assert_close(out.loss, expect)
    torch.testing.assert_close(out.terms["data_loss"], out.loss)
    # and each term reaches the gradient: its weight changes the loss
    for n in names - {"projection_loss"}:
        key = next(t.key for t in T.TERMS if t.name == n)
        _, other = _step_with_every_term([f"loss.{key}={2 * weights[n]}"])
        assert (other.loss - out.loss).abs().item() > 1e-6, n


def test_camera_supervision_has_no_winner_and_no_student():
    cfg, out = _step_with_every_term(["model=camera_supervision", "model.pc_rgb=true"])
    assert out.winner is None and "student_loss" not in out.terms
    assert out.silhouette.shape[2] == 1
