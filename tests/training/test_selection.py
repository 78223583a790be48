"""Winner-takes-all selection biases (dpc.training.selection; loss.pose_spread_weight,
loss.pose_student_select_weight): known answers, the winner's own loss is what is
back-propagated, and the step uses them (each test below fails if the step drops one)."""

import math

import torch
from torch import nn
from train_testutils import TINY, compose_cfg

from dpc.camera import flip_about_image_up, look_at_quat, random_quat, view_quat
from dpc.losses import winner_takes_all
from dpc.models.model import ModelOutput
from dpc.render import PointCloudRenderer, RenderSettings
from dpc.runs import normalize_loss_config
from dpc.training.selection import camera_directions, spread_bias, student_bias
from dpc.training.step import compute_step


def test_camera_directions_point_at_the_camera():
    pos = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, -3.0], [1.0, 1.0, 1.0]])
    d = camera_directions(look_at_quat(pos) * 2.5)  # any norm
    torch.testing.assert_close(d, pos / pos.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)


def test_spread_bias_known_answer():
    # 2 objects x 2 views, 2 candidates: the first (winning, lower loss) all at +x, the
    # second its flip at -x: mean direction (1, 0, 0), excess 1 - 0.3
    pos = torch.tensor([2.0, 0.0, 0.0]).expand(2, 2, 3)
    q1 = look_at_quat(pos)
    quats = torch.stack((q1, flip_about_image_up(q1)), dim=2)  # [2, 2, 2, 4]
    per = torch.tensor([0.0, 1.0]).expand(2, 2, 2)
    bias, norm = spread_bias(quats, per, margin=0.3)
    assert abs(norm.item() - 1.0) < 1e-6
    torch.testing.assert_close(bias[..., 0], torch.full((2, 2), 0.7), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[..., 1], torch.full((2, 2), -0.7), atol=1e-6, rtol=0)
    # the winners taken from the losses: with the flips winning the mean points to -x
    bias2, _ = spread_bias(quats, per.flip(-1), margin=0.3)
    torch.testing.assert_close(bias2, -bias, atol=1e-6, rtol=0)


def test_spread_bias_is_zero_for_winners_all_around():
    az = torch.arange(8) * (2 * math.pi / 8)
    q = view_quat(az, torch.zeros(8)).view(2, 4, 1, 4)
    bias, norm = spread_bias(q, torch.zeros(2, 4, 1), margin=0.3)
    assert norm.item() < 1e-5
    assert bias.abs().max().item() == 0.0


def test_student_bias_known_answer():
    s = random_quat(6, generator=torch.Generator().manual_seed(0)).view(2, 3, 4)
    cands = torch.stack((s, -s * 3.0, flip_about_image_up(s)), dim=2)  # same, same, half turn
    b = student_bias(cands, s)
    torch.testing.assert_close(b[..., :2], torch.zeros(2, 3, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(b[..., 2], torch.ones(2, 3), atol=1e-6, rtol=0)


def test_selection_bias_changes_the_winner_not_the_gradient():
    per = torch.tensor([[[1.0, 1.2, 3.0]]], requires_grad=True)
    r = winner_takes_all(per, selection_bias=torch.tensor([[[0.5, 0.0, 0.0]]]))
    assert r.winner.item() == 1
    assert r.loss.item() == per[0, 0, 1].item()  # the winner's own loss, no bias added
    r.loss.backward()
    torch.testing.assert_close(per.grad, torch.tensor([[[0.0, 1.0, 0.0]]]))
    assert winner_takes_all(per).winner.item() == 0


class _Stub(nn.Module):
    """Fixed cloud, candidates and student per image."""

    def __init__(self, points, cands, student):
        super().__init__()
        self.points, self.cands, self.student = points, cands, student

    def forward(self, images, shape_index=None):
        b = len(shape_index)
        return ModelOutput(self.points.expand(b, -1, -1), torch.ones(b), None, self.cands,
                           self.student)  # fmt: skip


def _step(extra):
    cfg = compose_cfg(TINY + extra)
    normalize_loss_config(cfg.loss)
    b, K, S, G = 2, 2, 32, 16
    g = torch.Generator().manual_seed(0)
    # candidate 0 of every view looks from around +x, candidate 1 from around -x
    az0 = torch.rand(b * K, generator=g) * 0.6 - 0.3 + math.pi / 2
    q0 = view_quat(az0, torch.zeros(b * K))
    q1 = view_quat(az0 + math.pi + 0.2, torch.zeros(b * K))
    cands = torch.stack((q0, q1), dim=1)  # [b*K, 2, 4]
    student = q1.clone()
    points = (torch.rand(1, 300, 3, generator=g) - 0.5) * torch.tensor([0.8, 0.2, 0.3])
    ren = PointCloudRenderer(RenderSettings.from_cfg(cfg))
    with torch.no_grad():  # the targets are rendered from candidate 0: it wins unbiased
        masks = ren(points.expand(b * K, -1, -1), q0, sigma=1.0, scale=torch.ones(b * K))
    batch = {"image": torch.rand(b, K, 3, S, S, generator=g),
             "mask": masks.silhouette.view(b, K, G, G)}  # fmt: skip
    return compute_step(_Stub(points, cands, student), ren, batch, cfg, 0, 1.0, 1.0,
                        slice(0, b))  # fmt: skip


def test_step_uses_the_spread_bias():
    assert (_step([]).winner == 0).all()
    # all winners at +x: a strong spread weight makes the -x candidates win
    out = _step(["loss.pose_spread_weight=1e4", "loss.pose_spread_margin=0.1"])
    assert (out.winner == 1).all()
    assert out.terms["pose_spread"].item() > 0.9
    # and the loss is still the winners' own (the flipped pose fits worse)
    assert out.terms["projection_loss"].item() > _step([]).terms["projection_loss"].item()


def test_step_uses_the_student_bias():
    out = _step(["loss.pose_student_select_weight=1e4"])
    assert (out.winner == 1).all()  # the student sits on candidate 1


def test_object_flip_is_the_view_from_the_opposite_azimuth_at_the_same_elevation():
    from dpc.camera import flip_about_object_up, mean_image_up, quat_angle, with_flipped_candidates

    g = torch.Generator().manual_seed(0)
    az = torch.rand(12, generator=g, dtype=torch.float64) * 2 * math.pi
    el = torch.rand(12, generator=g, dtype=torch.float64) * math.radians(60) - math.radians(20)
    q = view_quat(az, el)
    want = view_quat(az + math.pi, el)
    y = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    assert quat_angle(flip_about_object_up(q, y), want).max().item() < 1e-6
    # the camera-up flip is off by twice the elevation; the object flip is not
    assert quat_angle(flip_about_image_up(q), want).max().item() > math.radians(10)
    # cameras all around at one elevation: their mean image-up is the vertical
    ring = view_quat(torch.arange(8) * (2 * math.pi / 8), torch.full((8,), 0.5))
    torch.testing.assert_close(
        mean_image_up(ring), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0
    )
    # in a rotated model frame the estimate follows the frame: flips land on the ring
    c = with_flipped_candidates(ring.view(8, 1, 4).double() * 2.0, "object")
    assert c.shape == (8, 2, 4)
    torch.testing.assert_close(c[:, 1].norm(dim=-1), torch.full((8,), 2.0, dtype=torch.float64))
    opposite = view_quat(torch.arange(8) * (2 * math.pi / 8) + math.pi, torch.full((8,), 0.5))
    assert quat_angle(c[:, 1], opposite.double()).max().item() < 1e-5


def test_spread_loss_known_answer_and_gradient():
    from dpc.training.selection import spread_loss

    # one direction for every winner: the whole mean is horizontal, |m_h|^2 = 1
    q = view_quat(torch.full((4,), 0.3), torch.zeros(4)).view(2, 2, 1, 4).requires_grad_()
    w = torch.zeros(2, 2, dtype=torch.long)
    v = spread_loss(q, w)
    assert abs(v.item() - 1.0) < 1e-6
    # all around a ring (any elevation): 0
    ring = view_quat(torch.arange(8) * (2 * math.pi / 8), torch.full((8,), 0.4))
    assert spread_loss(ring.view(2, 4, 1, 4), torch.zeros(2, 4, dtype=torch.long)).item() < 1e-10
    # half a ring: |mean of unit vectors over a half circle| = 2 / pi (at zero elevation)
    az = (torch.arange(4096) + 0.5) * (math.pi / 4096)
    half = view_quat(az, torch.zeros(4096)).view(64, 64, 1, 4)
    got = spread_loss(half, torch.zeros(64, 64, dtype=torch.long)).item()
    assert abs(got - (2 / math.pi) ** 2) < 1e-4
    # only the winners get a gradient (two directions: a single one is a maximum)
    q_other = view_quat(torch.full((4,), 1.2), torch.zeros(4)).view(2, 2, 1, 4)
    q2 = torch.cat([q.detach(), torch.cat([q[:1].detach(), q_other[1:]])], dim=2).requires_grad_()
    spread_loss(q2, torch.ones(2, 2, dtype=torch.long)).backward()
    assert q2.grad[:, :, 0].abs().max().item() == 0.0 and q2.grad[:, :, 1].abs().max() > 0


def test_step_adds_the_spread_loss():
    base = _step([])
    out = _step(["loss.pose_spread_loss_weight=7"])
    assert "pose_spread_loss" in out.terms and "pose_spread_loss" not in base.terms
    assert out.terms["pose_spread_loss"].item() > 0.5  # every candidate 0 looks from +x
    torch.testing.assert_close(out.loss, base.loss + 7 * out.terms["pose_spread_loss"])


def test_ring_init_starts_the_heads_around_the_vertical():
    from dpc.models import build_model

    torch.manual_seed(0)
    cfg = compose_cfg(TINY + ["model.pose_candidates_init=ring"])
    model = build_model(cfg)
    out = model(torch.rand(6, 3, 32, 32))
    d = camera_directions(out.pose_candidates)  # [6, M, 3]
    M = d.shape[1]
    az = torch.arange(M) * (2 * math.pi / M)
    want = torch.stack((torch.cos(az), torch.zeros(M), torch.sin(az)), -1)  # view_quat's
    assert (d - want).norm(dim=-1).max().item() < 0.2  # within ~10 degrees
    # with flips the heads cover half the circle and the flips the other half
    cfg = compose_cfg(TINY + ["model.pose_candidates_init=ring", "model.pose_flip_candidates=true",
                              "model.pose_flip_axis=object"])  # fmt: skip
    d = camera_directions(build_model(cfg)(torch.rand(6, 3, 32, 32)).pose_candidates)
    M2 = d.shape[1] // 2
    az = torch.arange(2 * M2) * (math.pi / M2)
    want = torch.stack((torch.cos(az), torch.zeros(2 * M2), torch.sin(az)), -1)
    assert (d - want).norm(dim=-1).max().item() < 0.25
    # the paper's init is the default and is not a ring
    assert compose_cfg(TINY).model.pose_candidates_init == "random"
