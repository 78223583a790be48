"""The flip-margin student (``loss.student_flip_margin``, docs/training.md, "Flip-margin
student"): per-view weights from how much better the winning pose explains a view than
that pose turned front to back, the weighted student loss, and the step that renders the
turned winners."""

import math

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import CAMERA_DISTANCE, FOCAL_LENGTH, view_quat
from dpc.losses import flip_margin_weights, per_view_l2, student_loss
from dpc.models import ModelOutput, build_model
from dpc.render import build_renderer
from dpc.runs import normalize_loss_config
from dpc.training import terms as T
from dpc.training.step import compute_step, flipped_winner_projection


def test_flip_margin_weights_known_answers():
    win = torch.tensor([10.0, 10.0, 10.0, 10.0, 0.0])
    flipped = torch.tensor([15.0, 12.0, 9.0, 10.0, 3.0])
    w = flip_margin_weights(win, flipped, 0.5)
    # gap / (0.5 * 10): 1, 0.4, 0 (the flip fits better), 0 (as well); a zero winner loss
    # with a worse flip is a clear view: 1
    torch.testing.assert_close(w, torch.tensor([1.0, 0.4, 0.0, 0.0, 1.0]))
    assert not flip_margin_weights(win.requires_grad_(), flipped, 0.5).requires_grad


def test_weighted_student_loss_is_the_weighted_mean_over_views():
    one = torch.tensor([1.0, 0, 0, 0])
    quarter = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)])
    student = torch.stack((one, quarter, quarter))
    teacher = torch.stack((one, one, quarter))
    # per view 0, 1/2, 0
    assert student_loss(student, teacher).item() == pytest.approx(1 / 6)
    w = torch.tensor([0.0, 1.0, 1.0])
    assert student_loss(student, teacher, w).item() == pytest.approx(0.25)
    assert student_loss(student, teacher, torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert student_loss(student, teacher, torch.zeros(3)).item() == 0.0


def _ctx(points, cfg):
    """Four views around the object at elevation 20 degrees (their mean image-up is the
    y axis), one candidate each: the candidate is the true camera, the masks are the
    cloud's own renders."""
    renderer = build_renderer(cfg)
    az = 0.5 + torch.arange(4) * (math.pi / 2)
    q = view_quat(az, torch.full((4,), 0.35)).view(1, 4, 1, 4)
    out = ModelOutput(points, torch.ones(1), None, q.view(4, 1, 4), None)
    ctx = T.StepContext(cfg, 0, {}, out, q, points, None, CAMERA_DISTANCE, FOCAL_LENGTH)
    masks = renderer(points.expand(4, -1, 3), q.view(4, 4), sigma=1.0).silhouette
    ctx.batch = {"mask": masks.view(1, 4, *masks.shape[-2:]).detach()}
    ctx.winner = torch.zeros(1, 4, dtype=torch.long)
    return renderer, ctx


def test_flipped_winner_projection_renders_the_winner_turned_front_to_back():
    cfg = compose_cfg(TINY)
    g = torch.Generator().manual_seed(0)
    half = torch.rand(1, 150, 3, generator=g) * torch.tensor([0.4, 0.3, 0.3]) - 0.15
    half[..., 0] += 0.15  # all in front (x > 0): turned about y it lands behind
    # a cloud that a half turn about y maps onto itself: the flip explains every view
    sym = torch.cat((half, half * torch.tensor([-1.0, 1.0, -1.0])), dim=1)
    renderer, ctx = _ctx(sym, cfg)
    flipped = flipped_winner_projection(renderer, ctx, 1.0, 1.0, slice(0, 1))
    assert flipped.shape == (1, 4)
    assert flipped.max().item() < 1e-3
    # a cloud that is not: the turned pose renders something else
    renderer, ctx = _ctx(torch.cat((half, half + 0.02), dim=1), cfg)
    flipped = flipped_winner_projection(renderer, ctx, 1.0, 1.0, slice(0, 1))
    assert flipped.min().item() > 1.0
    assert per_view_l2(ctx.batch["mask"], ctx.batch["mask"]).max().item() == 0.0


def test_the_step_weights_the_student_by_the_flip_margin():
    g = torch.Generator().manual_seed(1)
    m = torch.zeros(2, 2, 16, 16)
    m[:, :, 4:12, 3:11] = 1.0
    m[:, 1, 4:8, 3:6] = 0.0  # not symmetric: flips differ
    batch = dict(image=torch.rand(2, 2, 3, 32, 32, generator=g), mask=m)
    outs = {}
    for margin in (0.0, 0.3):
        cfg = compose_cfg(TINY + [f"loss.student_flip_margin={margin}"])
        normalize_loss_config(cfg.loss)
        torch.manual_seed(0)
        model = build_model(cfg)
        outs[margin] = compute_step(
            model, build_renderer(cfg), batch, cfg, 0, 1.0, 1.0, slice(0, 2)
        )
    assert "student_weight" not in outs[0.0].terms
    w = outs[0.3].terms["student_weight"].item()
    assert 0.0 <= w <= 1.0
    # the candidate terms and winners are untouched, the student loss is reweighted
    torch.testing.assert_close(outs[0.3].terms["projection_loss"], outs[0.0].terms["projection_loss"])
    assert torch.equal(outs[0.3].winner, outs[0.0].winner)
    assert outs[0.3].terms["student_loss"].item() != outs[0.0].terms["student_loss"].item()
    cfg = compose_cfg(TINY + ["loss.student_flip_margin=0.3", "loss.pose_student_align_loss=true"])
    with pytest.raises(ValueError, match="student_flip_margin"):
        compute_step(build_model(cfg), build_renderer(cfg), batch, cfg, 0, 1.0, 1.0, slice(0, 2))
