"""The config folder, and the commands' options from it (``configs/<name>.yaml``): as a
hydra app (:func:`run_command`) or from Python (:func:`compose_options`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def compose_options(config_name: str, **options) -> DictConfig:
    """``configs/<config_name>.yaml`` composed as its hydra app does, with ``options``
    (Python values) replacing the defaults; an unknown option is a clear error."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name)
    unknown = set(options) - set(cfg)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(cfg)}")
    return OmegaConf.merge(cfg, options)


def run_command(config_name: str, task: Callable[[DictConfig], object], argv=None) -> None:
    """Run ``task(options)`` as the hydra app of ``configs/<config_name>.yaml``: overrides
    ``key=value`` from ``argv`` (default the command line), ``--help`` lists the options."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    app = hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name=config_name)
    app(task)()
