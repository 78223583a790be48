"""Silhouette twins as pose candidates (model.pose_flip_axis=twin) and the mirror-symmetric
cloud (model.pc_mirror_symmetric): issue 20, RESULTS.md "Round 9"."""

import math

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import (
    azel_quat,
    camera_azel,
    quat_angle,
    silhouette_twin,
    twin_in_range,
    with_flipped_candidates,
)

TWIN = [
    "model.pose_parametrization=view",
    "model.pose_elevation_range=[-20,40]",
    "model.pc_mirror_symmetric=true",
    "model.pose_flip_candidates=true",
    "model.pose_flip_axis=twin",
]


def test_camera_azel_inverts_azel_quat():
    g = torch.Generator().manual_seed(1)
    az = torch.rand(200, generator=g) * 2 * math.pi - math.pi
    el = torch.rand(200, generator=g) * 2.6 - 1.3
    got_az, got_el = camera_azel(azel_quat(az, el))
    assert (torch.remainder(got_az - az + math.pi, 2 * math.pi) - math.pi).abs().max() < 1e-5
    assert (got_el - el).abs().max() < 1e-5


def test_twin_in_range_known_answers():
    d = math.radians
    q = azel_quat(
        torch.tensor([d(30.0), d(90.0), d(0.0)]), torch.tensor([d(10.0), d(-15.0), d(30.0)])
    )
    az, el = camera_azel(twin_in_range(q, (-20.0, 40.0)))
    # (180 - az, -el): (150, -10), (90, 15); (0, 30) -> (180, -30) lies below the range:
    # its elevation is clamped to -20
    off = torch.remainder(torch.rad2deg(az) - torch.tensor([150.0, 90.0, 180.0]) + 180, 360) - 180
    assert off.abs().max() < 1e-3  # azimuths compared on the circle (180 is -180)
    assert torch.allclose(torch.rad2deg(el), torch.tensor([-10.0, 15.0, -20.0]), atol=1e-3)
    # inside the range it is dpc.camera.silhouette_twin (the half turns' composition)
    g = torch.Generator().manual_seed(2)
    az = torch.rand(100, generator=g) * 2 * math.pi
    el = torch.rand(100, generator=g) * d(40.0) - d(20.0)
    q = azel_quat(az, el)
    assert quat_angle(twin_in_range(q, (-20.0, 40.0)), silhouette_twin(q)).max() < 1e-3


def test_twin_in_range_has_gradients():
    az = torch.tensor([0.3, 2.0, -1.0], dtype=torch.float64)
    el = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    q = azel_quat(az, el).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: twin_in_range(x, (-20.0, 40.0)), (q,))


def test_a_symmetric_cloud_has_the_same_silhouette_from_its_twin():
    """The twin is a confusion of the silhouette: a cloud mirror-symmetric across z = 0
    projects, under an orthographic camera, to the same image points from q and from its
    twin (perspective alone tells them apart); a camera off the twin does not."""
    from dpc.camera import quat_rotate

    g = torch.Generator().manual_seed(3)
    half = torch.rand(300, 3, generator=g) - 0.5
    cloud = torch.cat((half, half * torch.tensor([1.0, 1.0, -1.0])))
    q = azel_quat(torch.tensor([0.4]), torch.tensor([0.2]))

    def image_points(cam):  # orthographic: drop the depth axis (camera axis 0)
        return quat_rotate(cam, cloud[None])[0, :, 1:]

    def set_distance(a, b):  # symmetric nearest-neighbour distance between point sets
        dist = torch.cdist(a, b)
        return max(dist.min(0).values.max().item(), dist.min(1).values.max().item())

    assert (
        set_distance(image_points(q), image_points(twin_in_range(q, (-20.0, 40.0)))) < 1e-3
    )  # fp32
    off = azel_quat(torch.tensor([math.pi - 0.4 + 0.3]), torch.tensor([-0.2]))
    assert set_distance(image_points(q), image_points(off)) > 1e-2


def test_mirror_symmetric_cloud_is_symmetric_and_decodes_half():
    from dpc.models import build_model

    model = build_model(compose_cfg(TINY + ["model.pc_mirror_symmetric=true"]))
    n = int(compose_cfg(TINY).model.pc_num_points)
    assert model.decoder.num_points == n // 2
    points = model(torch.rand(2, 3, 32, 32)).points
    assert points.shape[1] == n
    a, b = points[:, : n // 2], points[:, n // 2 :]
    assert torch.equal(a[..., :2], b[..., :2]) and torch.equal(a[..., 2], -b[..., 2])
    assert a[..., 2].abs().max() > 0  # not a flat cloud
    plain = build_model(compose_cfg(TINY))(torch.rand(2, 3, 32, 32)).points
    p, q = plain[:, : n // 2], plain[:, n // 2 :]
    assert not torch.allclose(p[..., 2], -q[..., 2])  # the default cloud is not mirrored


def test_twin_candidates_reach_the_step(tmp_path):
    """The model returns its M heads and their twins, and the training step chooses among
    all 2M: winners land in the twin half too (the test fails if the twins are dropped)."""
    from dpc.models import build_model
    from dpc.models.model import candidate_count

    cfg = compose_cfg(TINY + TWIN)
    model = build_model(cfg)
    M = int(cfg.model.pose_predict_num_candidates)
    assert model.num_candidates == 2 * M == candidate_count(cfg)
    cands = model(torch.rand(4, 3, 32, 32)).pose_candidates
    want = twin_in_range(cands[:, :M], (-20.0, 40.0))
    assert quat_angle(cands[:, M:], want).max() < 1e-3
    # the step's winner-takes-all ranges over both halves
    from dpc.render import build_renderer
    from dpc.runs import normalize_loss_config
    from dpc.training.step import compute_step

    normalize_loss_config(cfg.loss)
    b, K, S, G = 4, 4, 32, 16
    masks = torch.zeros(b, K, G, G)
    masks[..., 4:12, 3:10] = 1.0
    batch = {"image": torch.rand(b, K, 3, S, S, generator=torch.Generator().manual_seed(0)),
             "mask": masks}  # fmt: skip
    out = compute_step(model, build_renderer(cfg), batch, cfg, 0, 1.0, 1.0, slice(0, b))
    assert out.winner.max().item() >= M and out.winner.min().item() < M


def test_twin_candidates_train_and_refit_end_to_end(tmp_path):
    from dpc.train import train

    cfg = compose_cfg(
        TINY + TWIN + ["trainer.max_steps=2", "trainer.student_refit_steps=5",
                       "model.pose_selector=true"],
        tmp_path,
    )  # fmt: skip
    summary = train(cfg)
    assert summary["student_refit"]["views"] == 8 * 5


def test_twin_needs_upright_heads_and_a_symmetric_cloud():
    from dpc.models import build_model

    for drop in ("model.pc_mirror_symmetric=false", "model.pose_parametrization=quaternion"):
        with pytest.raises(ValueError, match="model.pose_flip_axis=twin needs"):
            build_model(compose_cfg(TINY + TWIN + [drop]))
        with pytest.raises(ValueError, match="model.pose_flip_axis=twin_flip needs"):
            build_model(compose_cfg(TINY + TWIN + ["model.pose_flip_axis=twin_flip", drop]))
    with pytest.raises(ValueError, match="model.pc_mirror_symmetric"):
        build_model(
            compose_cfg(TINY + ["model.pc_mirror_symmetric=true", "model.pc_num_points=101"])
        )
    with pytest.raises(ValueError, match="model.pose_flip_axis"):
        with_flipped_candidates(torch.zeros(2, 1, 4), "mirror")


def test_ring_with_twins_puts_the_heads_on_the_front_half_and_twins_on_the_back():
    from dpc.models import build_model

    cfg = compose_cfg(TINY + TWIN + ["model.pose_candidates_init=ring",
                                     "model.pose_predict_num_candidates=2"])  # fmt: skip
    az, el = camera_azel(build_model(cfg)(torch.rand(3, 3, 32, 32)).pose_candidates)
    want = torch.tensor([-45.0, 45.0, -135.0, 135.0])  # heads, then their twins
    assert (torch.rad2deg(az) - want).abs().max() < 5.0
    assert torch.rad2deg(el).abs().max() < 5.0


def test_twin_flip_known_answers():
    """``twin_flip``: each camera (az, el) as itself, its twin (180 - az, -el), its flip
    (az + 180, el) and the flip's twin (-az, -el), twins' elevations clamped to the range."""
    d = math.radians
    q = azel_quat(torch.tensor([d(30.0), d(0.0)]), torch.tensor([d(10.0), d(30.0)]))[:, None]
    az, el = camera_azel(with_flipped_candidates(q, "twin_flip", (-20.0, 40.0)))
    want_az = torch.tensor([[30.0, 150.0, 210.0, -30.0], [0.0, 180.0, 180.0, 0.0]])
    want_el = torch.tensor([[10.0, -10.0, 10.0, -10.0], [30.0, -20.0, 30.0, -20.0]])
    off = torch.remainder(torch.rad2deg(az) - want_az + 180, 360) - 180
    assert off.abs().max() < 1e-3
    assert torch.allclose(torch.rad2deg(el), want_el, atol=1e-3)


def test_twin_flip_candidates_reach_the_step():
    """One head gives 4 cameras, started on the four quarters (45, 135, -135, -45 degrees);
    the step's winners range over all four (the test fails if the flips are dropped)."""
    from dpc.models import build_model
    from dpc.models.model import candidate_count
    from dpc.render import build_renderer
    from dpc.runs import normalize_loss_config
    from dpc.training.step import compute_step

    cfg = compose_cfg(TINY + TWIN + ["model.pose_flip_axis=twin_flip",
                                     "model.pose_predict_num_candidates=1",
                                     "model.pose_candidates_init=ring"])  # fmt: skip
    model = build_model(cfg)
    assert model.num_candidates == 4 == candidate_count(cfg)
    az, _ = camera_azel(model(torch.rand(3, 3, 32, 32)).pose_candidates)
    off = torch.remainder(torch.rad2deg(az) - torch.tensor([45.0, 135.0, -135.0, -45.0]) + 180,
                          360) - 180  # fmt: skip
    assert off.abs().max() < 5.0
    normalize_loss_config(cfg.loss)
    b, K, S, G = 8, 4, 32, 16
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(b, K, G, G, generator=g) > 0.7).float()  # a different mask per view
    batch = {"image": torch.rand(b, K, 3, S, S, generator=g), "mask": masks}
    out = compute_step(model, build_renderer(cfg), batch, cfg, 0, 1.0, 1.0, slice(0, b))
    assert out.winner.max().item() >= 2  # a flip or the flip's twin won somewhere
