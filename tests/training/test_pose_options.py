"""The unsupervised pose options of issue 20 (docs/training.md, "The one-sided solution"):
the ``pose_spread`` diagnostic, the exact object flip (``model.pose_flip_axis=object``) and
candidate heads started on a ring (``model.pose_candidates_init=ring``)."""

import math

import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import flip_about_image_up, look_at_quat, view_quat
from dpc.training.pose_spread import camera_directions, winner_spread


def test_camera_directions_point_at_the_camera():
    pos = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, -3.0], [1.0, 1.0, 1.0]])
    d = camera_directions(look_at_quat(pos) * 2.5)  # any norm
    torch.testing.assert_close(d, pos / pos.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)


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


def test_winner_spread_known_answers():
    # one direction: 1; a full ring: 0; half a ring at zero elevation: 2 / pi
    q = view_quat(torch.full((4,), 0.3), torch.zeros(4)).view(2, 2, 1, 4)
    assert abs(winner_spread(q, torch.zeros(2, 2, dtype=torch.long)).item() - 1.0) < 1e-6
    ring = view_quat(torch.arange(8) * (2 * math.pi / 8), torch.zeros(8)).view(2, 4, 1, 4)
    assert winner_spread(ring, torch.zeros(2, 4, dtype=torch.long)).item() < 1e-6
    az = (torch.arange(4096) + 0.5) * (math.pi / 4096)
    half = view_quat(az, torch.zeros(4096)).view(64, 64, 1, 4)
    got = winner_spread(half, torch.zeros(64, 64, dtype=torch.long)).item()
    assert abs(got - 2 / math.pi) < 1e-4
    # it reads the winners: candidate 1 (the flips) makes a ring of a one-sided set
    two = torch.cat([ring[..., :1, :], ring[..., :1, :]], dim=2)
    two[:, :, 1] = flip_about_image_up(two[:, :, 1])
    assert winner_spread(two, torch.ones(2, 4, dtype=torch.long)).item() < 1e-6


def test_the_step_logs_the_spread_of_the_winners():
    from dpc.models import build_model
    from dpc.render import build_renderer
    from dpc.runs import normalize_loss_config
    from dpc.training.step import compute_step

    cfg = compose_cfg(TINY)
    normalize_loss_config(cfg.loss)
    torch.manual_seed(0)
    model = build_model(cfg)
    b, K, S, G = 2, 2, 32, 16
    masks = torch.zeros(b, K, G, G)
    masks[..., 4:12, 3:10] = 1.0
    batch = {"image": torch.rand(b, K, 3, S, S), "mask": masks}
    out = compute_step(model, build_renderer(cfg), batch, cfg, 0, 1.0, 1.0, slice(0, b))
    q = model(batch["image"].flatten(0, 1)).pose_candidates.view(b, K, -1, 4)
    want = winner_spread(q, out.winner)
    torch.testing.assert_close(out.terms["pose_spread"], want)


def test_bad_option_values_name_the_key():
    import pytest

    from dpc.camera import with_flipped_candidates
    from dpc.models import build_model

    with pytest.raises(ValueError, match="model.pose_candidates_init"):
        build_model(compose_cfg(TINY + ["model.pose_candidates_init=circle"]))
    with pytest.raises(ValueError, match="model.pose_flip_axis"):
        build_model(compose_cfg(TINY + ["model.pose_flip_axis=up"]))
    with pytest.raises(ValueError, match="model.pose_flip_axis"):
        with_flipped_candidates(torch.zeros(2, 1, 4), "up")


def _view_heads(rng=(-20.0, 40.0), init="random"):
    from dpc.models.pose import PoseHeads

    torch.manual_seed(0)
    return PoseHeads(16, 4, True, init=init, parametrization="view", elevation_range=rng)


def test_view_heads_give_cameras_without_roll_inside_the_elevation_range():
    from dpc.camera import quat_to_matrix

    heads = _view_heads()
    code = torch.randn(64, 16) * 50.0  # large codes drive the raw elevations far out
    cands, student = heads(code)
    q = torch.cat([cands.reshape(-1, 4), student])
    d = camera_directions(q)
    el = torch.rad2deg(torch.asin(d[:, 1]))
    assert el.min().item() >= -20.0 - 1e-3 and el.max().item() <= 40.0 + 1e-3
    assert el.max().item() - el.min().item() > 30.0  # the range is used, not one value
    # no roll: the camera's right axis (row 2 of R) stays horizontal, image up is +y-ward
    R = quat_to_matrix(q)
    assert R[:, 2, 1].abs().max().item() < 1e-5 and R[:, 1, 1].min().item() > 0
    # the paper's heads roll freely
    from dpc.models.pose import PoseHeads

    torch.manual_seed(0)
    free, _ = PoseHeads(16, 4, True)(code)
    assert quat_to_matrix(free.reshape(-1, 4))[:, 2, 1].abs().max().item() > 0.5


def test_view_heads_start_on_a_ring_at_elevation_zero_and_have_gradients():
    heads = _view_heads(init="ring")
    cands, _ = heads(torch.randn(5, 16))
    d = camera_directions(cands)  # [5, 4, 3]
    az = torch.arange(4) * (math.pi / 2)
    want = torch.stack((torch.cos(az), torch.zeros(4), torch.sin(az)), -1)
    assert (d - want).norm(dim=-1).max().item() < 0.1
    heads = _view_heads().double()
    x = torch.randn(3, 16, dtype=torch.float64)
    for head in (heads.candidates[0], heads.student):
        assert torch.autograd.gradcheck(head, (x.clone().requires_grad_(True),))


def test_view_parametrization_trains_and_refits_end_to_end(tmp_path):
    from dpc.train import train

    cfg = compose_cfg(
        TINY + ["trainer.max_steps=2", "trainer.student_refit_steps=5", "model.pose_selector=true",
                "model.pose_parametrization=view", "model.pose_elevation_range=[-20,40]"],
        tmp_path,
    )  # fmt: skip
    summary = train(cfg)
    assert summary["student_refit"]["views"] == 8 * 5
    # the config reaches the network: every pose it gives keeps image up (no roll)
    from dpc.camera import quat_to_matrix
    from dpc.models import build_model

    out = build_model(cfg)(torch.rand(3, 3, 32, 32))
    q = torch.cat([out.pose_candidates.reshape(-1, 4), out.pose_student])
    assert quat_to_matrix(q)[:, 2, 1].abs().max().item() < 1e-5


def test_bad_view_parametrization_values_name_the_key():
    import pytest

    from dpc.models import build_model

    with pytest.raises(ValueError, match="model.pose_parametrization"):
        build_model(compose_cfg(TINY + ["model.pose_parametrization=euler"]))
    for bad in ("[40,-20]", "[-90,40]", "[10,10]", "[10]", "[0,10,20]"):
        with pytest.raises(ValueError, match="model.pose_elevation_range"):
            build_model(compose_cfg(TINY + ["model.pose_parametrization=view",
                                            f"model.pose_elevation_range={bad}"]))  # fmt: skip
