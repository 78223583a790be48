"""Compile every kernel for sm_90 ahead of time (no GPU needed) and read ptxas's report:
the interpreter used by the other tests accepts code that the real compiler rejects, and
says nothing about registers. A float32 kernel that spills registers at the paper's
settings (64^3, K = 21, the launched block sizes) fails the test.

``DPC_EXTRA_TRITON=/path/to/site-dir`` (e.g. a ``pip install --target`` of triton 3.6)
repeats the check with that Triton first on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXTRA = os.environ.get("DPC_EXTRA_TRITON")


@pytest.mark.slow
@pytest.mark.parametrize("triton_path", [None] + ([EXTRA] if EXTRA else []))
def test_kernels_compile_without_fp32_spills(tmp_path, triton_path):
    pytest.importorskip("triton.backends.nvidia", reason="triton without its CUDA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (triton_path, str(ROOT)) if p)
    out = tmp_path / "compile.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "profiling" / "compile_check.py"), "--arch", "90"]
        + ["--json", str(out), "--fail-on-spill"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) >= 40 and not [x for x in rows if "error" in x]
    spills = [
        x["kernel"]
        for x in rows
        if x["dtype"] == "fp32" and x["spill_store_bytes"] + x["spill_load_bytes"] > 0
    ]
    assert not spills, f"fp32 kernels spill registers: {spills}"
    assert {x["kernel"].split()[0] for x in rows} >= {"splat_fwd", "blur_pass", "fused"}
