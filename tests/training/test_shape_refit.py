"""``trainer.shape_refit_steps`` (dpc/training/shape_refit.py): after training, only the
layers of the shape fine-tuned at the training views' chosen poses, with the hull-surface
term."""

import numpy as np
import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.data import build_batch_sampler, open_training_data
from dpc.models import build_model
from dpc.render import build_renderer, final_sigma
from dpc.runs import load_checkpoint
from dpc.train import train
from dpc.training.shape_refit import (
    SHAPE_PARAMETERS,
    check_shape_refit,
    refit_cfg,
    refit_shape,
)
from dpc.training.step import compute_step
from dpc.training.student_refit import silhouette_choice
from dpc.training.terms import batch_targets

REFIT = ["trainer.shape_refit_steps=5"]


def _setup(extra=()):
    cfg = compose_cfg(TINY + ["trainer.max_steps=2", *REFIT, *extra])
    torch.manual_seed(0)
    model, renderer = build_model(cfg), build_renderer(cfg)
    reader = open_training_data(cfg)
    return cfg, model, reader, renderer


def test_only_the_shape_moves_and_every_pose_stays_bit_for_bit():
    cfg, model, reader, renderer = _setup()
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        before_out = model(images)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    poses = reader.quats("train")  # any poses of the right shape
    r = refit_shape(model, reader, renderer, cfg, poses, 5, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(SHAPE_PARAMETERS) for k in changed)
    assert any(k.startswith("decoder.") for k in changed)
    with torch.no_grad():
        out = model(images)
    assert torch.equal(out.pose_candidates, before_out.pose_candidates)
    assert torch.equal(out.pose_student, before_out.pose_student)
    assert not torch.equal(out.points, before_out.points)
    assert all(p.requires_grad for p in model.parameters())  # restored
    assert r["steps"] == 5 and r["hull_start"] is not None


def test_the_refit_step_is_projection_plus_weighted_hull_at_the_given_poses():
    # the known answer for one batch: the camera-supervised step at the given poses, whose
    # loss is the projection loss + w * hull surface; fails if the hull term is dropped
    cfg, model, reader, renderer = _setup(["trainer.shape_refit_hull_weight=7"])
    c = refit_cfg(cfg)
    assert not c.model.predict_pose and c.loss.hull_surface_weight == 7
    assert "mask_inner_distance" in batch_targets(c)
    batch = build_batch_sampler(c, reader, targets=batch_targets(c))(0)
    out = compute_step(model, renderer, batch, c, 2, 0.5, 1.0, slice(None))
    proj, hull = out.terms["projection_loss"], out.terms["hull_surface"]
    assert float(hull.detach()) > 0
    torch.testing.assert_close(out.loss, proj + 7 * hull)
    # rendered at the batch's poses: one candidate per view, the batch's quaternions
    assert out.silhouette.shape[2] == 1


def test_the_refit_step_adds_the_weighted_repulsion():
    # fails if trainer.shape_refit_repulsion_weight does not reach the refit's loss
    cfg, model, reader, renderer = _setup(
        [
            "trainer.shape_refit_hull_weight=7",
            "trainer.shape_refit_repulsion_weight=3",
            "loss.repulsion_radius=0.5",
            "loss.repulsion_from_step=100000",  # training's start step does not apply
        ]  # fmt: skip
    )
    c = refit_cfg(cfg)
    assert c.loss.repulsion_weight == 3 and cfg.loss.repulsion_weight == 0
    assert c.loss.repulsion_from_step == 0
    batch = build_batch_sampler(c, reader, targets=batch_targets(c))(0)
    out = compute_step(model, renderer, batch, c, 2, 0.5, 1.0, slice(None))
    t = out.terms
    assert float(t["repulsion"].detach()) > 0
    expect = t["projection_loss"] + 7 * t["hull_surface"] + 3 * t["repulsion"]
    torch.testing.assert_close(out.loss, expect)
    r = refit_shape(model, reader, renderer, cfg, reader.quats("train"), 2, progress=False)
    assert r["repulsion_start"] > 0 and r["repulsion_end"] is not None


def test_the_hull_term_pulls_points_to_the_hull_surface():
    # with the term the hull-surface value falls further than with weight 0
    ends = {}
    for w in (0, 10):
        cfg, model, reader, renderer = _setup(
            [f"trainer.shape_refit_hull_weight={w}", "trainer.shape_refit_lr=1e-3"]
        )
        c = refit_cfg(cfg)
        c.loss.hull_surface_weight = 1.0  # measure it either way, on a fixed batch
        batch = build_batch_sampler(c, reader, targets=batch_targets(c))(99)
        refit_shape(model, reader, renderer, cfg, reader.quats("train"), 30, progress=False)
        with torch.no_grad():
            out = compute_step(model, renderer, batch, c, 2, 0.5, 1.0, slice(None))
        ends[w] = float(out.terms["hull_surface"])
    assert ends[10] < 0.8 * ends[0]


def test_bad_values_name_the_key():
    for bad, key in [
        ("trainer.shape_refit_steps=-1", "trainer.shape_refit_steps"),
        ("trainer.shape_refit_hull_weight=-1", "trainer.shape_refit_hull_weight"),
        ("trainer.shape_refit_lr=0", "trainer.shape_refit_lr"),
        ("trainer.shape_refit_repulsion_weight=-1", "trainer.shape_refit_repulsion_weight"),
    ]:
        with pytest.raises(ValueError, match=key):
            check_shape_refit(compose_cfg(TINY + REFIT + [bad]))
    with pytest.raises(ValueError, match="model.predict_pose"):
        check_shape_refit(compose_cfg(TINY + REFIT + ["model.predict_pose=false"]))
    assert check_shape_refit(compose_cfg(TINY)) == 0
    cfg, model, reader, renderer = _setup()
    with pytest.raises(ValueError, match="poses must be"):
        refit_shape(model, reader, renderer, cfg, np.zeros((3, 5, 4)), 1, progress=False)


def test_train_ends_with_the_shape_refit_at_the_chosen_poses_once(tmp_path):
    plain = compose_cfg(TINY + ["trainer.max_steps=2"], tmp_path / "plain")
    over = ["trainer.max_steps=2", *REFIT, "val.every=2", "val.num_objects=2"]
    refit = compose_cfg(TINY + over, tmp_path / "refit")
    train(plain)
    summary = train(refit)
    assert summary["shape_refit"]["steps"] == 5 and summary["val"]
    ck = load_checkpoint(tmp_path / "refit" / "checkpoints" / "last.pt")
    assert ck["refitted"]
    # the same as refitting the plain run's network at its silhouette choice
    torch.manual_seed(0)
    model = build_model(refit)
    model.load_state_dict(load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"])
    reader, renderer = open_training_data(refit), build_renderer(refit)
    choice = silhouette_choice(model, reader, renderer, final_sigma(refit), 32, progress=False)
    refit_shape(model, reader, renderer, refit, choice.quat, 5, progress=False)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ck["model"][k], v, rtol=0, atol=0)
    # resumed at max_steps, a refitted run is not refitted again
    again = compose_cfg(TINY + over + [f"resume={tmp_path / 'refit'}"], tmp_path / "refit")
    summary = train(again)
    assert "shape_refit" not in summary
    ck2 = load_checkpoint(tmp_path / "refit" / "checkpoints" / "last.pt")
    for k, v in ck["model"].items():
        torch.testing.assert_close(ck2["model"][k], v, rtol=0, atol=0)
