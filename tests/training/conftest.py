"""Training tests: wandb off, one torch thread (the CPU is shared)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    torch.set_num_threads(1)
