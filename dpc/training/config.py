"""The config folder and composing a command's options from it (``configs/<name>.yaml``),
for the Python entry points that mirror the hydra command lines."""

from __future__ import annotations

from pathlib import Path

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
