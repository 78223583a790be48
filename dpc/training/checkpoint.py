"""Checkpoints: atomic writes, exact resume, and loading a run for evaluation.

A checkpoint is ``{"model", "optimizer", "step", "rng", "config", "last_good_step"}``;
``step`` is the next step to run. Batches, point dropout and schedules are functions of
``(seed, step)`` (see :mod:`dpc.data.sampling`), so model + optimiser + step determine
the rest of the run; the RNG states are saved and restored as well, for anything else
that draws random numbers.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dpc.losses import normalize_loss_config
from dpc.models import upgrade_legacy_checkpoint
from dpc.training.optim import upgrade_optimizer_state


def rng_state() -> dict:
    """The global RNG states (torch CPU, CUDA if present, numpy, python)."""
    st = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, model, optimizer, step: int, cfg, **extra) -> Path:
    """Write a checkpoint atomically: to ``<path>.tmp``, fsync, then ``os.replace``, so a
    crash or SIGKILL mid-write never leaves a truncated ``last.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "rng": rng_state(),
        "config": OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg,
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def find_checkpoint(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.pt``, with a clear error when it is missing."""
    p = Path(run_dir) / "checkpoints" / "last.pt"
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint in run directory {run_dir} (expected {p})")
    return p


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Load a trained run for evaluation: ``(model in eval mode on device, cfg)``.

    ``cfg`` is the resolved training config stored in the checkpoint (a DictConfig).
    """
    from dpc.models import build_model

    ckpt = load_checkpoint(find_checkpoint(run_dir), map_location="cpu")
    cfg = OmegaConf.create(ckpt["config"])
    normalize_loss_config(cfg.loss)  # older runs: the deprecated student-weight key
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg


def restore_checkpoint(path: str | Path, model, optimizer) -> int:
    """Load a training checkpoint into ``model`` and ``optimizer`` and restore the RNG
    states; returns the step to continue from."""
    ck = load_checkpoint(path, map_location="cpu")
    # runs saved before camera-supervised models dropped the unused pose-code layer
    ck = upgrade_legacy_checkpoint(ck, unwrap(model))
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(upgrade_optimizer_state(ck["optimizer"], optimizer, model))
    set_rng_state(ck["rng"])
    return int(ck["step"])


def resolve_run_dir(cfg) -> tuple[Path, Path | None]:
    """Run directory and, when resuming, the checkpoint to resume from.

    ``resume=false``: ``paths.run_dir``. ``resume=true``: the newest run directory of this
    experiment (under ``paths.output_root/<name>``) with a checkpoint, else a fresh start
    in ``paths.run_dir``. ``resume=<dir>``: that run directory (must have a checkpoint).
    """
    resume = cfg.resume
    if resume in (None, False, "false", "False"):
        return Path(str(cfg.paths.run_dir)), None
    if resume in (True, "true", "True"):
        base = Path(str(cfg.paths.output_root)) / str(cfg.name)
        cands = sorted(
            (p.parent.parent for p in base.glob("*/checkpoints/last.pt")),
            key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime,
        )
        if not cands:
            print(
                f"[dpc.train] resume=true: no checkpoint under {base}; starting fresh",
                file=sys.stderr,
            )
            return Path(str(cfg.paths.run_dir)), None
        return cands[-1], cands[-1] / "checkpoints" / "last.pt"
    run_dir = Path(str(resume))
    return run_dir, find_checkpoint(run_dir)
