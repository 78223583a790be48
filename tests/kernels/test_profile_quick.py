"""profiling/profile_render.py --quick runs on the CPU and writes its table and JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_profile_render_quick(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "profile_render", ROOT / "profiling" / "profile_render.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["profile_render"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    # A tiny custom config: the fused backward's scans are slow under the interpreter.
    args = ["--quick", "--custom", "2,150,10,3", "--iters", "2", "--warmup", "1"]
    assert mod.main(args + ["--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = data["rows"]
    assert {r["provider"].split()[0] for r in rows} == {"eager", "triton", "triton-fused"}
    for r in rows:
        assert r["fwd+bwd_ms"] > 0 and r["floor_bytes"]["fwd+bwd"] > 0
        if r["provider"].startswith("triton"):
            assert r["parity_rel_l2"] < 1e-5
    md = (tmp_path / "results.md").read_text()
    assert "| config | provider |" in md and data["env"]["command"] in md
