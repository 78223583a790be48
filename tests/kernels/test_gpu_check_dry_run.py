"""profiling/gpu_check.sh --dry-run runs every step of the GPU check end to end on the
CPU (tiny sizes, interpreter) and writes its report: the GPU run is then one call."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["WANDB_MODE"] = "disabled"
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(ROOT / "profiling" / "gpu_check.sh"), str(out), "--dry-run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["dry_run"] is True
    for key in ("device", "driver", "torch", "triton", "git", "date_utc", "command"):
        assert key in rep["env"], key
    steps = rep["steps"]
    expected = {"cuda tests", "profile", "registers", "compile_check", "data build"}
    assert expected | {"train passes", "train split"} <= set(steps)
    assert all(s["rc"] == 0 for s in steps.values()), steps
    providers = {row["provider"].split()[0] for row in rep["profile"]["rows"]}
    assert providers == {"eager", "triton", "triton-fused"}
    run = rep["train"]["runs"]["passes"]
    assert run["steps"] == 2 and run["steps_per_s"] > 0
    assert rep["train"]["split"]["total_ms"] > 0
    md = (out / "report.md").read_text()
    assert "DRY RUN" in md and torch.__version__ in md and "| compile_check | 0 |" in md
