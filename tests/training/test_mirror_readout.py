"""Reading the pose from the image and its left-right mirror together
(model.pose_mirror_readout; issue 20, RESULTS.md "Round 11")."""

import math

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import azel_quat, camera_azel, mirror_camera, quat_angle
from dpc.data import open_training_data, prepare_images, prepare_masks
from dpc.eval.predictions import (
    mirror_match,
    predict_split,
    read_pose_with_silhouette,
    selector_silhouette_scores,
    silhouette_errors,
)
from dpc.models import ModelOutput, build_model
from dpc.render import build_renderer

VIEW = [
    "model.pose_parametrization=view",
    "model.pose_elevation_range=[-20,40]",
    "model.pc_mirror_symmetric=true",
    "model.pose_flip_candidates=true",
    "model.pose_flip_axis=twin_flip",
    "model.pose_predict_num_candidates=1",
    "model.pose_selector=true",
]
D = math.radians


def test_mirror_camera_known_answer_for_upright_cameras():
    az, el = camera_azel(mirror_camera(azel_quat(torch.tensor([D(30.0), D(-100.0)]),
                                                  torch.tensor([D(10.0), D(-15.0)]))))  # fmt: skip
    assert torch.allclose(torch.rad2deg(az), torch.tensor([-30.0, 100.0]), atol=1e-3)
    assert torch.allclose(torch.rad2deg(el), torch.tensor([10.0, -15.0]), atol=1e-3)


def test_a_symmetric_cloud_seen_from_the_mirrored_camera_is_the_mirrored_image():
    """What the read-out rests on: for a cloud symmetric across z = 0, the render at
    ``mirror_camera(q)`` is the render at ``q`` flipped along the image's last axis (the
    axis the read-out flips the images and masks along)."""
    cfg = compose_cfg(TINY)
    renderer = build_renderer(cfg)
    g = torch.Generator().manual_seed(3)
    half = (torch.rand(1, 150, 3, generator=g) - 0.5) * torch.tensor([0.8, 0.3, 0.4])
    half[..., 2] = half[..., 2].abs() + 0.05  # one side only: the mirror is another cloud
    pts = torch.cat((half, half * torch.tensor([1.0, 1.0, -1.0])), 1)
    q = azel_quat(torch.tensor([D(35.0)]), torch.tensor([D(20.0)]))
    sil = renderer(pts, q, sigma=0.5).silhouette[0]
    mir = renderer(pts, mirror_camera(q), sigma=0.5).silhouette[0]
    torch.testing.assert_close(mir, sil.flip(-1), atol=1e-4, rtol=0)
    assert (sil - sil.flip(-1)).abs().max() > 0.1  # the view itself is not symmetric


def test_mirror_match_finds_each_candidates_mirror():
    az = torch.tensor([[D(20.0), D(160.0), D(200.0), D(-20.0)]])
    el = torch.tensor([[D(10.0), D(-10.0), D(10.0), D(-10.0)]])
    cands = azel_quat(az, el)
    order = torch.tensor([2, 0, 3, 1])  # the mirrored input lists them in another order
    mirrored = mirror_camera(cands)[:, order]
    assert mirror_match(cands, mirrored).tolist() == [order.argsort().tolist()]


def _fake_out(cands, logits):
    """A model output with one tiny cloud per view (the silhouette terms are the same for
    every candidate up to the render, and weight 0 drops them anyway)."""
    B = cands.shape[0]
    return ModelOutput(torch.zeros(B, 10, 3), torch.ones(B), None, cands, None, None, logits)


def test_the_mirrors_scores_add_up_known_answer():
    renderer = build_renderer(compose_cfg(TINY))
    az = torch.tensor([[D(20.0), D(160.0), D(200.0), D(-20.0)]])
    el = torch.tensor([[D(10.0), D(-10.0), D(10.0), D(-10.0)]])
    cands = azel_quat(az, el)
    order = torch.tensor([1, 0, 3, 2])
    out = _fake_out(cands, torch.tensor([[1.0, 0.8, -5.0, -5.0]]))  # the image: 0, by a little
    # the mirror: the mirror of candidate 1 (its index 0) by a lot
    mirrored = _fake_out(mirror_camera(cands)[:, order], torch.tensor([[3.0, 0.0, -5.0, -5.0]]))
    masks = torch.zeros(1, 16, 16)
    _, k = read_pose_with_silhouette(out, masks, renderer, 0.5, 0.0)
    assert k.tolist() == [0]
    q, k = read_pose_with_silhouette(out, masks, renderer, 0.5, 0.0, mirrored=mirrored)
    assert k.tolist() == [1] and torch.equal(q, cands[:, 1])


def _model(extra=()):
    cfg = compose_cfg(TINY + VIEW + ["model.pose_silhouette_weight=100", *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # move the heads off their ring start; a selector that varies
        for p in [*model.pose_heads.parameters(), *model.pose_selector.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    model.selector_fitted.fill_(True)
    return cfg, model


@torch.no_grad()
def test_predictions_read_the_pose_with_the_mirror():
    """predict_split's pose is the known formula with the mirrored input's output, and it
    differs from the read-out without the mirror (the test fails if the key is ignored)."""
    cfg, model = _model(["model.pose_mirror_readout=true"])
    reader, renderer = open_training_data(cfg), build_renderer(cfg)
    kw = dict(renderer=renderer, sigma=0.5, progress=False)
    got = predict_split(model, reader, "train", 32, **kw)
    imgs, masks = reader.images("train"), reader.masks("train")
    n, V = imgs.shape[:2]
    x = prepare_images(imgs.reshape(n * V, *imgs.shape[2:]), 32)
    m = prepare_masks(masks.reshape(n * V, *masks.shape[2:]), renderer.settings.vox_size)
    model.eval()
    out, mir = model(x), model(x.flip(-1))
    err = silhouette_errors(out.points, out.scale, out.pose_candidates, m, renderer, 0.5)
    score = selector_silhouette_scores(out.selector_logits, err, 100.0)
    err_m = silhouette_errors(mir.points, mir.scale, mir.pose_candidates, m.flip(-1), renderer, 0.5)
    score_m = selector_silhouette_scores(mir.selector_logits, err_m, 100.0)
    j = mirror_match(out.pose_candidates, mir.pose_candidates)
    k = (score + score_m.gather(1, j)).argmax(1)
    want = out.pose_candidates[torch.arange(n * V), k]
    torch.testing.assert_close(torch.from_numpy(got.quat).flatten(0, 1), want)
    model.pose_mirror_readout = False
    plain = predict_split(model, reader, "train", 32, **kw)
    moved = quat_angle(torch.from_numpy(plain.quat), torch.from_numpy(got.quat)) > 1e-3
    assert 0 < int(moved.sum()) < n * V


@pytest.mark.parametrize("drop", ["model.pose_selector", "model.pose_parametrization",
                                  "model.pc_mirror_symmetric"])  # fmt: skip
def test_the_mirror_readout_needs_its_prerequisites(drop):
    base = ["model.pose_parametrization=view", "model.pc_mirror_symmetric=true",
            "model.pose_selector=true", "trainer.student_refit_steps=5"]  # fmt: skip
    over = [o for o in base if not o.startswith(drop)] + ["model.pose_mirror_readout=true"]
    with pytest.raises(ValueError, match="model.pose_mirror_readout"):
        build_model(compose_cfg(TINY + over))
    assert compose_cfg(TINY).model.pose_mirror_readout is False  # off by default
