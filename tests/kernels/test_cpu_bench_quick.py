"""profiling/bench_cpu.py: the --quick run prints both backends; --compare-logs reads
train_log.jsonl files and reports relative differences."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("bench_cpu", ROOT / "profiling" / "bench_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_cpu"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_bench_cpu_quick(capsys):
    threads = torch.get_num_threads()
    try:
        _load().main(["--quick"])
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("quick")]
    assert [r[1] for r in rows] == ["fwd", "bwd", "fwd+bwd"]
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0


def test_compare_logs(tmp_path, capsys):
    for name, losses in (("a", [10.0, 8.0, 4.0]), ("b", [10.0, 8.8, 4.2])):
        d = tmp_path / name
        d.mkdir()
        lines = [json.dumps({"step": i, "projection_loss": v}) for i, v in enumerate(losses)]
        (d / "train_log.jsonl").write_text("\n".join(lines) + "\n")
    _load().main(["--compare-logs", str(tmp_path / "a"), str(tmp_path / "b")])
    row = capsys.readouterr().out.splitlines()[-1].split()
    steps, mx, med, last, at = row[-5:]
    assert int(steps) == 3 and int(at) == 1
    assert abs(float(mx) - 0.1) < 1e-6 and abs(float(last) - 0.05) < 1e-6
