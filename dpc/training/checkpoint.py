"""Resuming training from a checkpoint (the format and the writing: :mod:`dpc.runs`)."""

from __future__ import annotations

from pathlib import Path

from dpc.models import upgrade_legacy_checkpoint
from dpc.runs import load_checkpoint, set_rng_state, unwrap
from dpc.training.optim import upgrade_optimizer_state


def restore_checkpoint(path: str | Path, model, optimizer) -> tuple[int, bool]:
    """Load a training checkpoint into ``model`` and ``optimizer`` and restore the RNG
    states; returns the step to continue from and whether the refits after the last step
    (``trainer.student_refit_steps``, ``trainer.shape_refit_steps``) are in it."""
    ck = load_checkpoint(path, map_location="cpu")
    # runs saved before camera-supervised models dropped the unused pose-code layer
    ck = upgrade_legacy_checkpoint(ck, unwrap(model))
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(upgrade_optimizer_state(ck["optimizer"], optimizer, model))
    set_rng_state(ck["rng"])
    return int(ck["step"]), bool(ck.get("refitted", False))
