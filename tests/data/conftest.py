"""Fixtures for the dataset tests: tiny builds into tmp folders."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture
def tiny_kwargs(tmp_path):
    """Settings of a tiny car set (seconds to build) under tmp_path."""
    return dict(category="car", preset="quick", root=str(tmp_path / "data"), progress=False,
                train=4, val=1, test=1, image_size=32, gt_points_dense=400, gt_points=200)
