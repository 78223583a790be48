"""Networks (shapes, ranges, paper inits), losses (known answers) and schedules."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from dpc.camera import quat_mul, quat_normalize, random_quat
from dpc.data.images import mask_distance_maps, resize_masks
from dpc.losses import per_view_l2, silhouette_distance, student_loss, winner_takes_all
from dpc.models import DPCModel
from dpc.training import schedules
from dpc.training.optim import decay_parameters, l2_weight_decay


@pytest.mark.parametrize("S,M,student,rgb", [(32, 4, True, False), (64, 1, False, True)])
def test_model_shapes_and_ranges(S, M, student, rgb):
    torch.manual_seed(0)
    m = DPCModel(
        image_size=S,
        num_points=100,
        base_channels=4,
        fc_dim=32,
        rgb=rgb,
        num_candidates=M,
        student=student,
    )
    out = m(torch.rand(3, 3, S, S))
    assert out.points.shape == (3, 100, 3) and out.points.abs().max() <= 0.5
    assert out.scale.shape == (3,) and ((out.scale > 0) & (out.scale < 1)).all()
    assert out.pose_candidates.shape == (3, M, 4)
    torch.testing.assert_close(out.pose_candidates.norm(dim=-1), torch.ones(3, M))
    assert (out.pose_student is not None) == student
    assert (out.colors is not None) == rgb
    if rgb:
        assert out.colors.shape == (3, 100, 3) and ((out.colors > 0) & (out.colors < 1)).all()
    # shape decoded from selected rows only (the training loop's first view per object)
    o2 = m(torch.rand(4, 3, S, S), shape_index=torch.tensor([0, 2]))
    assert o2.points.shape == (2, 100, 3) and o2.pose_candidates.shape == (4, M, 4)


def test_encoder_reaches_4x4_and_point_init_std():
    torch.manual_seed(0)
    m = DPCModel(image_size=128, num_points=8000)
    assert m.encoder.fc1.in_features == 256 * 16  # 16 -> 32, 64, 128, 256 channels at 4x4
    w = m.decoder.fc_points.weight
    # truncated normal of stddev 0.025 cut at 2 std, as TF's truncated_normal: the actual
    # std is 0.88 * 0.025
    assert abs(w.std().item() - 0.88 * 0.025) < 0.0005
    assert m.pose_heads is not None and len(m.pose_heads.candidates) == 4
    assert [l.out_features for l in m.pose_heads.candidates[0] if hasattr(l, "out_features")] == [
        32,
        32,
        4,
    ]
    with pytest.raises(ValueError, match="image_size"):
        DPCModel(image_size=100)
    with pytest.raises(ValueError, match="images must be"):
        DPCModel(image_size=32, num_points=10, fc_dim=16)(torch.rand(1, 3, 64, 64))


def test_per_view_l2_known_answer():
    pred = torch.zeros(2, 3, 4, 4)
    target = torch.ones(2, 3, 4, 4)
    torch.testing.assert_close(per_view_l2(pred, target), torch.full((2, 3), 8.0))
    col = per_view_l2(torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 2.0), image_dims=3)
    torch.testing.assert_close(col, torch.full((2,), 96.0))


def test_mask_distance_maps_known_answer():
    m = torch.zeros(2, 9, 9)
    m[0, 2:4, 2:4] = 1.0  # 2x2 square, rows/cols 2-3
    d = mask_distance_maps(m, 9)
    assert d.shape == (2, 9, 9) and d.dtype == torch.float32
    assert d[0, 2:4, 2:4].abs().max() == 0
    assert d[0, 3, 8].item() == pytest.approx(5.0)  # 5 pixels right of the square
    assert d[0, 8, 8].item() == pytest.approx(math.hypot(5, 5))
    assert d[1].abs().max() == 0  # empty silhouette: no pull
    # at a coarser size the distances are in the output's pixels (8 px of 9 -> 4 px of 5)
    m2 = torch.zeros(1, 9, 9)
    m2[0, :, 0] = 1.0
    assert mask_distance_maps(m2, 5)[0, 2, 4].item() == pytest.approx(4.0)
    # a one-pixel-wide part of the full-resolution mask still counts at the coarse size
    m3 = torch.zeros(1, 9, 9)
    m3[0, :, 5] = 1.0  # column 5 falls between the coarse grid's samples (cols 4, 6)
    assert resize_masks(m3, 5).abs().max() == 0  # the resized mask loses it
    torch.testing.assert_close(mask_distance_maps(m3, 5)[0, :, 2:4], torch.full((5, 2), 0.5))


def test_silhouette_distance_known_answer_and_gradient():
    G = 5
    mask = torch.zeros(1, G, G).index_fill_(2, torch.tensor([0, 1]), 1.0)  # columns 0-1
    dist = mask_distance_maps(mask, G)
    # points in grid coordinates (depth, row, col): col -0.5 is pixel 0, col 0.5 pixel 4
    pts = torch.tensor([[[0.1, 0.1, -0.4], [0.0, 0.2, 0.0], [0.0, 0.0, 0.75]]])
    sd = silhouette_distance(pts, dist)
    # distances 0, 1 and 3 + 0.25 * 4 (beyond the border) pixels
    assert sd.shape == (1,)
    assert sd.item() == pytest.approx(0 + 1 + 4, rel=1e-5)
    p = pts.clone().requires_grad_()
    silhouette_distance(p, dist).sum().backward()
    assert p.grad[0, 0].abs().max() == 0  # inside: no force
    # descent moves the others left, towards the silhouette: 4 px per grid unit
    torch.testing.assert_close(p.grad[0, 1:, 2], torch.tensor([4.0, 4.0]))
    assert p.grad[0, :, 0].abs().max() == 0  # depth does not matter
    torch.autograd.gradcheck(
        lambda x: silhouette_distance(x, dist.double()),
        (
            torch.tensor(
                [[[0.0, 0.13, 0.31], [0.0, -0.2, 0.61]]], dtype=torch.float64, requires_grad=True
            ),
        ),
    )


def _fit_points_with_strays(silhouette_weight: float, steps: int = 200):
    """Fit a cube of points plus 4 strays to 3 silhouettes of the cube by moving the points
    (Adam); returns (strays outside a silhouette [4] bool, cube points outside [216])."""
    from dpc.camera import view_quat, world_to_grid
    from dpc.eval.metrics import outside_silhouettes
    from dpc.render import PointCloudRenderer

    G, V = 16, 3
    r = PointCloudRenderer(vox_size=G, kernel_size=5, backend="reference")
    q = view_quat(torch.tensor([0.3, 1.9, 3.5]), torch.tensor([0.2, 0.5, 0.1]))
    ax = torch.linspace(-0.15, 0.15, 6)
    cube = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    with torch.no_grad():
        mask = (r(cube[None].expand(V, -1, -1), q, sigma=1.0).silhouette > 0.5).float()
    dist = mask_distance_maps(mask, G)
    strays = torch.tensor(
        [[0.4, 0.35, -0.3], [-0.35, 0.4, 0.38], [0.3, -0.4, 0.4], [-0.4, -0.3, -0.4]]
    )
    p = torch.cat([cube, strays]).requires_grad_()
    opt = torch.optim.Adam([p], lr=0.005)
    for _ in range(steps):
        opt.zero_grad()
        pts = p[None].expand(V, -1, -1)
        loss = per_view_l2(r(pts, q, sigma=1.0).silhouette, mask).mean()
        if silhouette_weight:
            sd = silhouette_distance(world_to_grid(pts, q), dist)
            loss = loss + silhouette_weight * sd.mean()
        loss.backward()
        opt.step()
    out = outside_silhouettes(p.detach()[None], dist, q, 0.5)[0]
    return out[-4:], out[:-4]


def test_silhouette_distance_pulls_strays_the_projection_loss_leaves():
    strays_out, cube_out = _fit_points_with_strays(0.0)
    assert strays_out.all() and not cube_out.any()  # the problem: strays stay out
    strays_out, cube_out = _fit_points_with_strays(0.1)
    assert not strays_out.any() and not cube_out.any()


def test_winner_takes_all_gradient_goes_to_winner_only():
    per = torch.tensor([[[3.0, 1.0, 2.0], [0.5, 4.0, 9.0]]], requires_grad=True)  # [1, 2, 3]
    r = winner_takes_all(per)
    assert r.winner.tolist() == [[1, 0]]
    assert r.loss.item() == pytest.approx((1.0 + 0.5) / 2)
    r.loss.backward()
    assert per.grad.tolist() == [[[0, 0.5, 0], [0.5, 0, 0]]]


def test_student_loss_known_answers():
    q = random_quat(5, generator=torch.Generator().manual_seed(0))
    assert student_loss(q, q).item() == pytest.approx(0.0, abs=1e-6)
    assert student_loss(-q, q).item() == pytest.approx(0.0, abs=1e-6)  # same rotation
    # rotation by angle a between them: 1 - cos^2(a/2) = sin^2(a/2)
    a = 0.7
    rot = torch.tensor([math.cos(a / 2), 0.0, math.sin(a / 2), 0.0]).expand(5, 4)
    s = quat_normalize(quat_mul(rot, q))
    assert student_loss(s, q).item() == pytest.approx(math.sin(a / 2) ** 2, rel=1e-5)
    # the teacher is held constant
    qs, qt = q.clone().requires_grad_(), s.clone().requires_grad_()
    student_loss(qs, qt).backward()
    assert qt.grad is None and qs.grad is not None


def test_weight_decay_counts_weights_not_biases():
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(100.0)
    assert float(l2_weight_decay(lin, 1e-3).detach()) == pytest.approx(0.5 * 1e-3 * 6 * 4.0)
    assert l2_weight_decay(lin, 0.0) == 0.0


def test_schedules_linear_and_clamped():
    cfg = OmegaConf.create(
        {
            "trainer": {"max_steps": 100},
            "render": {
                "pc_relative_sigma": 3.0,
                "pc_relative_sigma_end": 0.2,
                "sigma_anneal_steps": None,
                "pc_point_dropout_scheduled": True,
                "pc_point_dropout_start": 0.07,
                "pc_point_dropout_anneal_steps": 50,
            },
        }
    )
    assert schedules.blur_sigma(0, cfg) == 3.0
    assert schedules.blur_sigma(50, cfg) == pytest.approx(1.6)
    assert schedules.blur_sigma(100, cfg) == pytest.approx(0.2)
    assert schedules.blur_sigma(1000, cfg) == pytest.approx(0.2)
    assert schedules.keep_fraction(0, cfg) == pytest.approx(0.07)
    assert schedules.keep_fraction(25, cfg) == pytest.approx(0.535)
    assert schedules.keep_fraction(60, cfg) == 1.0
    cfg.render.pc_point_dropout_scheduled = False
    assert schedules.keep_fraction(0, cfg) == 1.0


def test_weight_decay_gradient_matches_l2_term():
    torch.manual_seed(0)
    m = DPCModel(image_size=16, num_points=10, base_channels=2, fc_dim=8, num_candidates=2)
    x = torch.rand(2, 3, 16, 16)
    f = lambda o: o.points.sum() + o.scale.sum() + o.pose_candidates.sum() + o.pose_student.sum()
    f(m(x)).backward()
    decay = {id(p) for p in decay_parameters(m)}
    # what Adam's weight_decay adds for the decayed parameter group (dpc.training.optim)
    g1 = [p.grad + 1e-2 * p.detach() if id(p) in decay else p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    (f(m(x)) + l2_weight_decay(m, 1e-2)).backward()
    for a, p in zip(g1, m.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_fixed_occupancy_scale_has_no_head_and_returns_the_maximum():
    """pc_learn_occupancy_scaling=false: scale is the constant maximum, with no parameters."""
    torch.manual_seed(0)
    learned = DPCModel(image_size=32, num_points=50, fc_dim=64, predict_pose=False)
    fixed = DPCModel(
        image_size=32,
        num_points=50,
        fc_dim=64,
        predict_pose=False,
        max_scale=0.7,
        learn_scale=False,
    )
    x = torch.rand(3, 3, 32, 32)
    out = fixed(x)
    assert torch.equal(out.scale, torch.full((3,), 0.7))
    assert (
        sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in fixed.parameters())
        == 64 + 1
    )  # the scale head's FC weights and bias
    assert not torch.equal(learned(x).scale, torch.full((3,), 1.0))
