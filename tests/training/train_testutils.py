"""Helpers for the training tests: compose the real hydra config, shrunk to tiny CPU
sizes with wandb disabled and outputs in a tmp dir (imported as ``train_testutils``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
REPO = Path(__file__).resolve().parents[2]

# Tiny sizes shared by the smoke runs (seconds per run on 2 cores).
TINY = [
    "data=synthetic",
    "data.synthetic.num_train=8",
    "data.synthetic.num_val=2",
    "data.image_size=32",
    "model.pc_num_points=300",
    "model.fc_dim=64",
    "model.encoder_base_channels=4",
    "render.vox_size=16",
    "render.pc_gauss_kernel_size=5",
    "render.pc_relative_sigma=1.0",
    "render.pc_relative_sigma_end=0.5",
    "trainer.batch_size=4",
    "trainer.log_every=1",
    "trainer.print_every=1",
    "trainer.image_every=0",
    "trainer.num_threads=1",
    "logger=disabled",
    "device=cpu",
    "val.every=0",
]


def compose_cfg(overrides: list[str], run_dir: Path | None = None) -> DictConfig:
    """The composed training config with ``overrides`` (hydra's own node stripped)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.paths.run_dir = str(run_dir)
            cfg.paths.output_root = str(run_dir.parent)
    return cfg


def run_cli(args: list[str], cwd: Path, env_extra: dict | None = None, slow=False, **kw):
    """Popen ``python -m dpc.train <args>`` (1 thread, wandb disabled); ``slow``: with a
    pause in every step (``slow_train.py``), for tests that signal the run mid-way."""
    import subprocess

    cmd = [str(Path(__file__).with_name("slow_train.py"))] if slow else ["-m", "dpc.train"]

    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        **(env_extra or {}),
    }
    return subprocess.Popen(
        [sys.executable, *cmd, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )
