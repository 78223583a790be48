"""A camera-supervised model builds no pose-code layer (issue #15 item 5), and checkpoints
written before that (with the unused ``encoder.fc_pose``) still load and resume."""

import copy

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.models import DPCModel, ImageEncoder, upgrade_legacy_checkpoint
from dpc.runs import load_checkpoint, open_run, save_checkpoint
from dpc.training.optim import l2_weight_decay

SMALL = dict(image_size=32, num_points=50, base_channels=4, fc_dim=64)


def _legacy_camsup(seed=0) -> DPCModel:
    """A camera-supervised model as older versions built it (with the pose-code layer,
    registered at the same place in the parameter order)."""
    torch.manual_seed(seed)
    m = DPCModel(**SMALL, predict_pose=False)
    m.encoder = ImageEncoder(32, 4, 64, pose_code=True)
    return m


def test_camera_supervised_model_has_no_pose_layer():
    cam = DPCModel(**SMALL, predict_pose=False)
    uns = DPCModel(**SMALL, predict_pose=True)
    assert cam.encoder.fc_pose is None and cam.pose_heads is None
    assert isinstance(uns.encoder.fc_pose, torch.nn.Linear)
    assert not any("fc_pose" in n for n, _ in cam.named_parameters())
    n_cam = sum(p.numel() for p in cam.parameters())
    n_enc_uns = sum(p.numel() for p in uns.encoder.parameters())
    n_enc_cam = sum(p.numel() for p in cam.encoder.parameters())
    assert n_enc_uns - n_enc_cam == 64 * 64 + 64 and n_cam > 0
    out = cam(torch.rand(2, 3, 32, 32))
    assert out.pose_candidates is None and out.points.shape == (2, 50, 3)
    # the weight-decay term no longer carries the untrained layer
    legacy = _legacy_camsup()
    assert float(l2_weight_decay(legacy, 1.0).detach()) > float(l2_weight_decay(cam, 1.0).detach())


def test_legacy_weights_load_and_give_the_same_outputs():
    legacy = _legacy_camsup().eval()
    new = DPCModel(**SMALL, predict_pose=False).eval()
    new.load_state_dict(legacy.state_dict())  # the pre-hook drops encoder.fc_pose.*
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(new(x).points, legacy(x).points)
    # a genuinely different model still fails loudly
    other = DPCModel(**{**SMALL, "fc_dim": 32}, predict_pose=False)
    with pytest.raises(RuntimeError, match="size mismatch"):
        other.load_state_dict(legacy.state_dict())


def test_upgrade_legacy_checkpoint_keeps_optimizer_state_per_parameter():
    legacy = _legacy_camsup()
    opt = torch.optim.Adam(legacy.parameters(), lr=1e-3)
    legacy(torch.rand(2, 3, 32, 32)).points.sum().backward()
    legacy.encoder.fc_pose.weight.grad = torch.ones_like(legacy.encoder.fc_pose.weight)
    legacy.encoder.fc_pose.bias.grad = torch.ones_like(legacy.encoder.fc_pose.bias)
    opt.step()
    ck = {"model": legacy.state_dict(), "optimizer": opt.state_dict(), "step": 1}
    new = DPCModel(**SMALL, predict_pose=False)
    up = upgrade_legacy_checkpoint(ck, new)
    assert not any("fc_pose" in k for k in up["model"])
    new.load_state_dict(up["model"], strict=True)
    new_opt = torch.optim.Adam(new.parameters(), lr=1e-3)
    new_opt.load_state_dict(up["optimizer"])
    old_state = {n: opt.state[p] for n, p in legacy.named_parameters()}
    checked = 0
    for n, p in new.named_parameters():
        assert ("exp_avg" in new_opt.state[p]) == ("exp_avg" in old_state[n]), n
        if "exp_avg" in old_state[n]:  # parameters that got a gradient
            torch.testing.assert_close(new_opt.state[p]["exp_avg"], old_state[n]["exp_avg"])
            checked += 1
    assert checked >= 6
    # nothing to do for current checkpoints and for unsupervised models
    assert upgrade_legacy_checkpoint(up, new) is up
    uns = DPCModel(**SMALL, predict_pose=True)
    ck2 = {"model": uns.state_dict(), "optimizer": None}
    assert upgrade_legacy_checkpoint(ck2, uns) is ck2


def test_legacy_camera_supervised_run_evaluates_and_resumes(tmp_path):
    """A run directory whose checkpoint has the old layer: open_run works, and training
    resumes from it."""
    from dpc.train import train

    run = tmp_path / "run"
    over = ["+experiment=car_quick_camera_supervision"] + TINY + ["trainer.max_steps=2"]
    cfg = compose_cfg(over, run)
    train(cfg)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    model = open_run(run).model
    # rewrite it as an older version would have saved it: fc_pose inserted after fc3
    fc = int(cfg.model.fc_dim)
    state, names = {}, list(ck["model"])
    for k in names:
        state[k] = ck["model"][k]
        if k == "encoder.fc3.bias":
            state["encoder.fc_pose.weight"] = torch.randn(fc, fc)
            state["encoder.fc_pose.bias"] = torch.zeros(fc)
    pos = names.index("encoder.fc3.bias") + 1
    # the optimiser state as the older loop saved it: one Adam group over
    # model.parameters() in order (weight decay was not in the optimiser then)
    scratch = copy.deepcopy(model)
    old_opt = torch.optim.Adam(scratch.parameters(), lr=float(cfg.optim.lr))
    for p in scratch.parameters():
        p.grad = torch.ones_like(p)
    old_opt.step()
    ck["optimizer"] = old_opt.state_dict()
    g = ck["optimizer"]["param_groups"][0]
    shift = lambda i: i if i < pos else i + 2  # noqa: E731
    ck["optimizer"] = {
        "state": {shift(i): v for i, v in ck["optimizer"]["state"].items()},
        "param_groups": [{**g, "params": list(range(len(names) + 2))}],
    }
    ck["model"] = state
    save_checkpoint(run / "checkpoints" / "last.pt", model, None, ck["step"], cfg)
    torch.save(ck, run / "checkpoints" / "last.pt")
    model2 = open_run(run).model  # model weights: the pre-hook
    for (n, a), (_, b) in zip(model.state_dict().items(), model2.state_dict().items()):
        torch.testing.assert_close(a, b, msg=n)
    cfg2 = compose_cfg(over[:-1] + ["trainer.max_steps=3", f"resume={run}"], tmp_path / "r2")
    summary = train(cfg2)
    assert summary["start_step"] == 2 and summary["step"] == 3
