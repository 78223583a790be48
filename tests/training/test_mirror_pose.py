"""Mirror consistency of the pose (``loss.mirror_pose_weight``, docs/training.md, "Mirror
consistency"): the mirrored camera, the term's known answers, and the step feeding it the
poses of the mirrored images."""

import math

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import (
    mirror_camera,
    quat_angle,
    quat_from_axis_angle,
    random_quat,
    view_quat,
    world_to_grid,
)
from dpc.models import ModelOutput, build_model
from dpc.render import build_renderer
from dpc.runs import normalize_loss_config
from dpc.training import terms as T
from dpc.training.step import compute_step


def test_the_mirrored_camera_renders_the_mirrored_object_as_the_mirror_image():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 40, 3, generator=g, dtype=torch.float64) * 0.3
    q = random_quat(5, generator=g, dtype=torch.float64) * 1.7  # any norm
    a = world_to_grid(x, q)
    b = world_to_grid(x * x.new_tensor([1.0, 1.0, -1.0]), mirror_camera(q))  # z mirrored
    torch.testing.assert_close(b[..., :2], a[..., :2])  # depth and row unchanged
    torch.testing.assert_close(b[..., 2], -a[..., 2])  # columns mirrored
    torch.testing.assert_close(mirror_camera(q).norm(dim=-1), q.norm(dim=-1))
    # on the viewing sphere: azimuth -> -azimuth, the same elevation; an involution
    az = torch.rand(9, generator=g, dtype=torch.float64) * 2 * math.pi
    el = torch.rand(9, generator=g, dtype=torch.float64) - 0.5
    assert quat_angle(mirror_camera(view_quat(az, el)), view_quat(-az, el)).max() < 1e-6
    assert quat_angle(mirror_camera(mirror_camera(q)), q).max() < 1e-6


def _ctx(student, mirrored_student, heads=None, mirrored_heads=None, overrides=()):
    cfg = compose_cfg(TINY + list(overrides))
    normalize_loss_config(cfg.loss)
    n = student.shape[0]
    heads = student[:, None] if heads is None else heads
    mirrored_heads = mirrored_student[:, None] if mirrored_heads is None else mirrored_heads
    out = ModelOutput(torch.zeros(n, 1, 3), torch.ones(n), None, heads, student)
    ctx = T.StepContext(cfg, 0, {}, out, heads.view(n, 1, -1, 4), out.points, None, 2.0, 1.875)
    ctx.mirror = ModelOutput(None, None, None, mirrored_heads, mirrored_student)
    return ctx


def test_mirror_pose_known_answers():
    q = random_quat(6, generator=torch.Generator().manual_seed(0))
    # the mirrored image got the mirrored pose: 0
    assert T.MirrorPose()(_ctx(q, mirror_camera(q))).item() == pytest.approx(0.0, abs=1e-6)
    # the identity is its own mirror; a quarter turn off gives 1 - cos^2(45 deg) = 1/2
    one = torch.tensor([[1.0, 0, 0, 0]])
    quarter = quat_from_axis_angle(torch.tensor([0.0, 0, 1]), torch.tensor(math.pi / 2))
    assert T.MirrorPose()(_ctx(one, quarter.view(1, 4))).item() == pytest.approx(0.5)
    # the same camera for a view and its mirror image (a side view read as the other
    # side) costs: azimuth 90 mirrored is -90, half a turn away -> 1
    side = view_quat(torch.tensor([math.pi / 2]), torch.tensor([0.0]))
    assert T.MirrorPose()(_ctx(side, side)).item() == pytest.approx(1.0, abs=1e-6)
    # both sides get the gradient (away from the maximum, where it is 0)
    a, b = q[:2].clone().requires_grad_(), q[2:4].clone().requires_grad_()
    T.MirrorPose()(_ctx(a, b)).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="mirror"):
        ctx = _ctx(one, one)
        ctx.mirror = None
        T.MirrorPose()(ctx)


def test_mirror_pose_heads_pair_head_k_with_head_minus_k():
    assert T.mirror_pairs(4) == [0, 3, 2, 1]
    assert T.mirror_pairs(1) == [0]
    M = 4
    ring = view_quat(torch.arange(M) * (2 * math.pi / M), torch.zeros(M))  # the ring init
    heads = ring.view(1, M, 4)
    mirrored = mirror_camera(ring)[T.mirror_pairs(M)].view(1, M, 4)
    # the ring is mirrored onto itself: 0 for every pair
    assert quat_angle(mirrored, heads).max().item() < 1e-5
    over = ["model.pose_predict_num_candidates=4", "loss.mirror_pose_heads=true"]
    one = torch.tensor([[1.0, 0, 0, 0]])
    ctx = _ctx(one, one, heads, heads, over)
    assert T.MirrorPose()(ctx).item() == pytest.approx(0.0, abs=1e-6)
    # every head the same camera on both images: student 0, heads k and -k disagree
    same = heads[:, :1].expand(1, M, 4)
    ctx = _ctx(one, one, heads, same, over)
    want = [1 - torch.dot(mirror_camera(ring[k]), ring[0]).item() ** 2 for k in range(M)]
    assert T.MirrorPose()(ctx).item() == pytest.approx(sum(want) / (M + 1), abs=1e-6)
    # without the heads option the heads are not read
    ctx = _ctx(one, one, heads, same, over[:1])
    assert T.MirrorPose()(ctx).item() == pytest.approx(0.0, abs=1e-6)


def test_the_step_feeds_the_term_the_poses_of_the_mirrored_images():
    cfg = compose_cfg(TINY + ["loss.mirror_pose_weight=3.0"])
    normalize_loss_config(cfg.loss)
    g = torch.Generator().manual_seed(1)
    m = torch.zeros(2, 2, 16, 16)
    m[:, :, 4:12, 3:11] = 1.0
    batch = dict(image=torch.rand(2, 2, 3, 32, 32, generator=g), mask=m)
    torch.manual_seed(0)
    model = build_model(cfg)
    out = compute_step(model, build_renderer(cfg), batch, cfg, 0, 1.0, 1.0, slice(0, 2))
    with torch.no_grad():
        flat = batch["image"].flatten(0, 1)
        s = model(flat).pose_student
        sm = model(flat.flip(-1)).pose_student
    want = T.mirror_loss(mirror_camera(s), sm)
    assert want.item() > 1e-4  # an untrained model is not mirror-consistent
    torch.testing.assert_close(out.terms["mirror_pose"], want)
    # the weighted term is in the loss: dropping it from the step changes the loss by it
    cfg0 = compose_cfg(TINY)
    normalize_loss_config(cfg0.loss)
    out0 = compute_step(model, build_renderer(cfg0), batch, cfg0, 0, 1.0, 1.0, slice(0, 2))
    assert "mirror_pose" not in out0.terms
    torch.testing.assert_close(out.loss - out0.loss, 3.0 * want, rtol=1e-4, atol=1e-5)
