"""Weight decay as the optimiser's parameter groups gives bit-identical updates to the
former way (its gradient ``weight_decay * w`` added to the weights' gradients by hand)."""

import copy

import pytest
import torch
from omegaconf import OmegaConf

from dpc.models import DPCModel
from dpc.training.optim import build_optimizer, decay_parameters, upgrade_optimizer_state


def _cfg(fused: bool, wd: float = 1e-3):
    optim = {"name": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8}
    return OmegaConf.create({"optim": {**optim, "weight_decay": wd, "fused": fused}})


def _steps(fused: bool, param_groups: bool, steps: int = 4, wd: float = 1e-3, start=None):
    """Parameters after ``steps`` steps (and the model, optimiser); ``start``: continue
    from this ``(model state, optimiser state, generator state)``."""
    torch.manual_seed(0)
    m = DPCModel(image_size=32, num_points=100, base_channels=4, fc_dim=32, num_candidates=2)
    if param_groups:
        opt = build_optimizer(_cfg(fused, wd), m)
    else:
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused)
    decay = decay_parameters(m)
    g = torch.Generator().manual_seed(1)
    if start is not None:
        m.load_state_dict(start[0])
        opt.load_state_dict(upgrade_optimizer_state(start[1], opt, m))
        g.set_state(start[2])
    for _ in range(steps):
        out = m(torch.rand(4, 3, 32, 32, generator=g))
        loss = out.points.square().sum() + out.scale.sum() + out.pose_candidates.sum()
        (loss + out.pose_student.sum()).backward()
        if not param_groups:  # the former dpc.losses.add_weight_decay_grad
            with torch.no_grad():
                torch._foreach_add_([p.grad for p in decay], decay, alpha=wd)
        opt.step()
        opt.zero_grad(set_to_none=True)
    _steps.last = (m, opt, g)
    return [p.detach().clone() for p in m.parameters()]


@pytest.mark.parametrize("fused", [True, False])
def test_param_group_weight_decay_is_bit_identical(fused):
    torch.set_num_threads(1)
    before, after = _steps(fused, False), _steps(fused, True)
    moved = [not torch.equal(a, b) for a, b in zip(_steps(fused, True, steps=0), after)]
    assert all(moved)  # every parameter was updated
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_weight_decay_only_on_weights():
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Conv2d(2, 2, 3))
    cfg = OmegaConf.create(
        {"optim": {"name": "adam", "lr": 1.0, "betas": [0.9, 0.999], "eps": 1e-8}}
    )
    cfg.optim.weight_decay, cfg.optim.fused = 0.5, False
    groups = build_optimizer(cfg, m).param_groups
    decayed = [p for g in groups if g["weight_decay"] == 0.5 for p in g["params"]]
    assert {p.dim() for p in decayed} == {2, 4}
    assert sum(len(g["params"]) for g in groups) == 4
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer(OmegaConf.merge(cfg, {"optim": {"name": "sgd"}}), m)


def test_resuming_a_checkpoint_of_the_former_optimiser_is_bit_identical():
    """An optimiser state saved with one parameter group (before this change) continues,
    after :func:`upgrade_optimizer_state`, exactly as the former loop would have."""
    torch.set_num_threads(1)
    _steps(True, False, steps=2)
    m, opt, g = _steps.last
    saved = (m.state_dict(), opt.state_dict(), g.get_state())
    assert len(saved[1]["param_groups"]) == 1
    # each run gets its own copy, as from a file (load_state_dict shares the tensors)
    former = _steps(True, False, steps=2, start=copy.deepcopy(saved))
    resumed = _steps(True, True, steps=2, start=copy.deepcopy(saved))
    for a, b in zip(former, resumed):
        assert torch.equal(a, b)
    groups = _steps.last[1].param_groups
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]
