"""The optimiser of a training config (docs/METHOD.md, section 5)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (``optim.lr``, ``optim.betas``, ``optim.eps``) with the paper's L2 weight decay
    as a parameter group: weight matrices and conv kernels get ``optim.weight_decay``
    (Adam adds ``weight_decay * w`` to their gradients, the gradient of
    :func:`l2_weight_decay`), biases none. A few CPU steps give bit-identical
    weights to adding that gradient by hand (tests/training/test_optim.py); note
    ``trainer.grad_clip`` clips the data-loss gradient only, before the decay is added.
    """
    o = cfg.optim
    if o.name != "adam":
        raise ValueError(f"optim.name must be 'adam', got {o.name!r}")
    decay = {id(p) for p in decay_parameters(model)}
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) in decay], "weight_decay": float(o.weight_decay)},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]
    # fused Adam: one kernel over all parameters (CPU and CUDA); 12M parameters made the
    # unfused update ~25% of a car_quick CPU step
    return torch.optim.Adam(
        [g for g in groups if g["params"]],
        lr=float(o.lr),
        betas=tuple(o.betas),
        eps=float(o.eps),
        fused=bool(o.fused),
    )


def upgrade_optimizer_state(state: dict, optimizer: torch.optim.Optimizer, model) -> dict:
    """An optimiser state saved before weight decay moved into parameter groups (one
    group over ``model.parameters()``, in that order) re-indexed for ``optimizer``'s groups,
    whose settings (``weight_decay`` per group) it takes; other states are returned as is."""
    if len(state["param_groups"]) != 1 or len(optimizer.param_groups) == 1:
        return state
    index = {id(p): i for i, p in enumerate(model.parameters())}
    old = state["param_groups"][0]
    groups, moved, k = [], {}, 0
    for g in optimizer.param_groups:
        ids = []
        for p in g["params"]:
            i = old["params"][index[id(p)]]
            if i in state["state"]:
                moved[k] = state["state"][i]
            ids.append(k)
            k += 1
        groups.append({**old, "weight_decay": g["weight_decay"], "params": ids})
    return {"state": moved, "param_groups": groups}


def l2_weight_decay(model: nn.Module, weight_decay: float) -> Tensor | float:
    """``weight_decay * sum(w^2) / 2`` over weight matrices and conv kernels (not biases),
    the original's ``l2_regularizer`` added to the loss."""
    if weight_decay == 0:
        return 0.0
    sq = [p.square().sum() for n, p in model.named_parameters() if p.dim() > 1 and p.requires_grad]
    return 0.5 * weight_decay * torch.stack(sq).sum()


def decay_parameters(model: nn.Module) -> list[Tensor]:
    """The parameters weight decay applies to: weight matrices and conv kernels."""
    return [p for p in model.parameters() if p.dim() > 1 and p.requires_grad]
