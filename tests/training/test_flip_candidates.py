"""Flipped pose candidates (model.pose_flip_candidates, docs/training.md): the flip is the
view from the opposite azimuth at zero elevation, its own inverse, and winner-takes-all
and the student use all 2M candidates."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from train_testutils import TINY, compose_cfg

from dpc.camera import (
    camera_position,
    flip_about_image_up,
    quat_angle,
    quat_from_axis_angle,
    quat_mul,
    random_quat,
    view_quat,
    with_flipped_candidates,
)
from dpc.data import synthetic_dataset
from dpc.data.images import mask_distance_maps
from dpc.eval.predictions import predict_split
from dpc.eval.validate import validate
from dpc.losses import student_loss
from dpc.models import build_model, candidate_count
from dpc.models.model import ModelOutput
from dpc.render import PointCloudRenderer, RenderSettings
from dpc.runs import normalize_loss_config
from dpc.train import train
from dpc.training.step import compute_step

FLIP = ["model.pose_predict_num_candidates=2", "model.pose_flip_candidates=true"]


# ---- the flip ----------------------------------------------------------------------------


def test_flip_is_the_view_from_the_opposite_azimuth_at_zero_elevation():
    az = torch.linspace(-math.pi, math.pi, 13, dtype=torch.float64)
    q = view_quat(az, torch.zeros_like(az))
    want = view_quat(az + math.pi, torch.zeros_like(az))
    assert quat_angle(flip_about_image_up(q), want).max().item() < 1e-6  # q and -q alike
    # equivalently: the object turned by 180 degrees about its own vertical (y) first
    y_half = quat_from_axis_angle(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                                  torch.tensor(math.pi, dtype=torch.float64))  # fmt: skip
    assert quat_angle(flip_about_image_up(q), quat_mul(q, y_half)).max().item() < 1e-6


@pytest.mark.parametrize("el_deg", [-30.0, 10.0, 40.0])
def test_flip_at_elevation_is_off_by_twice_the_elevation(el_deg):
    az = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)
    el = torch.full_like(az, math.radians(el_deg))
    q = view_quat(az, el)
    f = flip_about_image_up(q)
    # a pure rotation about an axis through the origin: the camera moves to the antipodal
    # point, same distance, the object stays centred
    torch.testing.assert_close(camera_position(f), -camera_position(q))
    y_half = quat_from_axis_angle(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                                  torch.tensor(math.pi, dtype=torch.float64))  # fmt: skip
    err = quat_angle(f, quat_mul(q, y_half))  # vs the object's exact front/back flip
    torch.testing.assert_close(err, torch.full_like(err, 2 * abs(math.radians(el_deg))))


def test_flip_twice_is_the_identity_up_to_sign():
    q = random_quat(20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = q * 1.7  # unnormalised candidates: the norm is kept
    torch.testing.assert_close(flip_about_image_up(flip_about_image_up(q)), -q)
    assert (quat_angle(flip_about_image_up(q), q) - math.pi).abs().max().item() < 1e-6
    torch.testing.assert_close(flip_about_image_up(q).norm(dim=-1), q.norm(dim=-1))
    c = with_flipped_candidates(q.view(5, 4, 4))  # [..., M, 4] -> [..., 2M, 4]
    assert c.shape == (5, 8, 4)
    torch.testing.assert_close(c[:, :4], q.view(5, 4, 4))
    torch.testing.assert_close(c[:, 4:], flip_about_image_up(q.view(5, 4, 4)))


# ---- the training step ---------------------------------------------------------------------


class _KnownPoses(nn.Module):
    """A model stub: a fixed left-right asymmetric cloud, and the given candidates (each
    also flipped with ``flip``, as DPCModel does) and student per image."""

    def __init__(self, points, cands, student, flip=True):
        super().__init__()
        self.points, self.student = points, student
        self.cands = with_flipped_candidates(cands) if flip else cands

    def forward(self, images, shape_index=None):
        b = len(shape_index)
        pts = self.points.expand(b, -1, -1)
        return ModelOutput(pts, torch.ones(b), None, self.cands, self.student)


def test_the_model_returns_the_flipped_candidates():
    cfg = compose_cfg(TINY + FLIP)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.num_candidates == 4 == candidate_count(cfg)
    x = torch.rand(3, 3, 32, 32)
    out = model(x)
    assert out.pose_candidates.shape == (3, 4, 4)
    heads, _ = model.pose_heads(model.encoder(x)[1])
    torch.testing.assert_close(out.pose_candidates, with_flipped_candidates(heads))
    cfg.model.pose_flip_candidates = False
    torch.manual_seed(0)
    plain = build_model(cfg).eval()
    assert plain.num_candidates == 2 and plain(x).pose_candidates.shape == (3, 2, 4)


def _asymmetric_cloud(n=400):
    g = torch.Generator().manual_seed(1)
    body = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.8, 0.2, 0.3])
    arm = (torch.rand(n // 2, 3, generator=g) - 0.5) * 0.12 + torch.tensor([0.3, 0.2, 0.1])
    return torch.cat([body, arm])[None]


def test_step_winner_and_student_teacher_range_over_the_flipped_candidates():
    cfg = compose_cfg(TINY + FLIP)
    normalize_loss_config(cfg.loss)
    b, K, M, S, G = 2, 2, 2, 32, 16
    g = torch.Generator().manual_seed(0)
    cands = random_quat(b * K * M, generator=g).view(b * K, M, 4)
    student = random_quat(b * K, generator=g)
    points = _asymmetric_cloud()
    ren = PointCloudRenderer(RenderSettings.from_cfg(cfg))
    all_c = with_flipped_candidates(cands).view(b, K, 2 * M, 4)
    # the target view (i, k) is rendered under candidate want[i, k] of the 2M: flipped
    # ones mostly, one unflipped
    want = torch.tensor([[M + 0, M + 1], [1, M + 1]])
    target_q = all_c.gather(2, want[..., None, None].expand(b, K, 1, 4))[:, :, 0]
    with torch.no_grad():
        masks = ren(
            points.expand(b * K, -1, -1), target_q.reshape(b * K, 4), sigma=1.0,
            scale=torch.ones(b * K),
        ).silhouette.view(b, K, G, G)  # fmt: skip
    batch = {"image": torch.rand(b, K, 3, S, S, generator=g), "mask": masks}
    model = _KnownPoses(points, cands, student)
    out = compute_step(model, ren, batch, cfg, 0, 1.0, 1.0, slice(0, b))
    assert out.silhouette.shape == (b, K, 2 * M, G, G)
    assert out.winner.min() >= 0 and out.winner.max() < 2 * M
    assert torch.equal(out.winner, want)
    assert out.terms["projection_loss"].item() < 1e-6  # the target's own pose wins exactly
    # the student is pulled to the winner, flipped or not
    expect = student_loss(student.view(b, K, 4), target_q)
    torch.testing.assert_close(out.terms["student_loss"], expect)
    unflipped = cands.view(b, K, M, 4).gather(2, (want % M)[..., None, None].expand(b, K, 1, 4))
    assert abs(student_loss(student.view(b, K, 4), unflipped[:, :, 0]) - expect) > 1e-3
    # without the option only the heads' own M candidates compete
    cfg.model.pose_flip_candidates = False
    model = _KnownPoses(points, cands, student, flip=False)
    out1 = compute_step(model, ren, batch, cfg, 0, 1.0, 1.0, slice(0, b))
    assert out1.silhouette.shape == (b, K, M, G, G) and out1.winner.max() < M


def test_step_with_a_real_model_and_per_candidate_terms():
    # per-view dropout, silhouette distance and hull terms all broadcast over 2M
    cfg = compose_cfg(
        TINY
        + FLIP
        + [
            "render.pc_point_dropout_per_view=true",
            "loss.silhouette_distance_weight=0.1",
            "loss.hull_surface_weight=0.1",
        ]
    )
    normalize_loss_config(cfg.loss)
    torch.manual_seed(0)
    model = build_model(cfg)
    b, K, S, G = 2, 2, 32, 16
    g = torch.Generator().manual_seed(0)
    masks = torch.zeros(b, K, G, G)
    masks[..., 4:12, 3:10] = 1.0
    batch = {
        "image": torch.rand(b, K, 3, S, S, generator=g),
        "mask": masks,
        "mask_distance": mask_distance_maps(masks, G),
        "mask_inner_distance": mask_distance_maps(masks, G, inside=True),
    }
    ren = PointCloudRenderer(RenderSettings.from_cfg(cfg))
    out = compute_step(model, ren, batch, cfg, 3, 1.0, 0.5, slice(0, b))
    assert out.silhouette.shape == (b, K, 4, G, G)
    assert out.winner.shape == (b, K) and 0 <= out.winner.min() and out.winner.max() < 4
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.pose_heads is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.pose_heads.parameters())


# ---- config ------------------------------------------------------------------------------------


def test_config_key_defaults_to_false_and_needs_predict_pose(tmp_path):
    cfg = compose_cfg(TINY)
    assert cfg.model.pose_flip_candidates is False
    assert candidate_count(cfg) == cfg.model.pose_predict_num_candidates
    assert compose_cfg(["model=camera_supervision"]).model.pose_flip_candidates is False
    flip = compose_cfg(["+experiment=car_quick_flip"])
    assert flip.name == "car_quick_flip"
    assert flip.model.pose_flip_candidates and flip.model.pose_predict_num_candidates == 2
    assert candidate_count(flip) == 4 == candidate_count(compose_cfg(["+experiment=car_quick"]))
    assert candidate_count(compose_cfg(["+experiment=car_quick_camera_supervision"])) == 1
    candidate_count(flip)
    bad = compose_cfg(
        TINY + ["model=camera_supervision", "model.pose_flip_candidates=true"], tmp_path / "run"
    )
    with pytest.raises(ValueError, match="model.pose_flip_candidates"):
        candidate_count(bad)
    # train() refuses it up front, before touching data or the run directory
    with pytest.raises(ValueError, match="model.predict_pose"):
        train(bad)
    assert not (tmp_path / "run").exists()


# ---- evaluation: the same 2M candidates ------------------------------------------------------


class _FlippedOracle(nn.Module):
    """The GT cloud of the image's object and one candidate, its GT pose flipped (and,
    with ``flip``, that one flipped again, as DPCModel returns them); no student (looked up
    by pixel equality, as tests/eval/test_validate.py's oracle)."""

    def __init__(self, reader, split, flip):
        super().__init__()
        self.flip = flip
        self.images = torch.from_numpy(np.asarray(reader.images(split))).float() / 255
        self.gt = torch.from_numpy(np.asarray(reader.gt_points(split)))
        self.q = torch.from_numpy(np.asarray(reader.quats(split))).float()

    def forward(self, x, shape_index=None):
        flat = self.images.permute(0, 1, 4, 2, 3).flatten(0, 1)  # [n*V, 3, S, S]
        idx = (x[:, None] - flat[None]).abs().flatten(2).amax(-1).argmin(1)  # [B]
        o = idx // self.images.shape[1]
        o = o if shape_index is None else o[shape_index]
        cand = flip_about_image_up(self.q.flatten(0, 1)[idx])[:, None]  # [B, 1, 4]
        if self.flip:
            cand = with_flipped_candidates(cand)
        return ModelOutput(self.gt[o], torch.ones(len(o)), None, cand, None)


def _val_cfg(flip: bool):
    return OmegaConf.create(
        {
            "seed": 0,
            "val": {"num_objects": 2, "views": 2, "sigma": 0.6, "eval_metrics": True},
            "render": {
                "vox_size": 16,
                "pc_gauss_kernel_size": 5,
                "pc_relative_sigma_end": 0.6,
                "projection": "drc",
                "backend": "reference",
            },
            "data": {"image_size": 16},
            "model": {"predict_pose": True, "pose_flip_candidates": flip},
        }
    )


def test_validation_and_prediction_choose_among_the_flipped_candidates():
    reader = synthetic_dataset({"train": 2, "val": 2}, num_views=2, image_size=16, num_points=300)
    model = _FlippedOracle(reader, "val", flip=True)
    with pytest.warns(UserWarning, match="no student"):
        on = validate(model, reader, _val_cfg(True), num_clouds=1)
    # the flip of the (flipped) candidate is the GT pose: a perfect score
    assert on["projection_loss"] < 1e-3 and on["pose_accuracy"] == 1.0
    plain = _FlippedOracle(reader, "val", flip=False)
    off = validate(plain, reader, _val_cfg(False), num_clouds=1)
    assert off["projection_loss"] > 1.0  # only the flipped pose: the wrong side
    r = PointCloudRenderer(RenderSettings(vox_size=16, kernel_size=5, backend="reference"))
    with pytest.warns(UserWarning, match="no student"):
        p = predict_split(model, reader, "val", 16, renderer=r, sigma=0.6, progress=False)
    assert p.candidates.shape == (2, 2, 2, 4)
    q_gt = torch.from_numpy(np.asarray(reader.quats("val"))).float()
    assert quat_angle(torch.from_numpy(p.quat), q_gt).max().item() < 1e-3
