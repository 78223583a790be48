"""The layer order (docs/ARCHITECTURE.md) holds: `lint-imports` checks the contracts in
pyproject.toml, so an upward import fails the suite."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` in ``cwd``, with this interpreter (import-linter: the dev extra)."""
    cli = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [sys.executable, "-c", cli], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_layers_import_downward_only():
    r = _lint_imports(REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contracts can fail: a copy of the tree where dpc.eval imports dpc.training."""
    for name in ("dpc", "kernels"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    with open(tmp_path / "dpc" / "eval" / "metrics.py", "a") as f:
        f.write("\nimport dpc.training.step  # noqa: E402,F401\n")
    r = _lint_imports(tmp_path)
    assert r.returncode != 0
    assert "dpc.eval is not allowed to import dpc.training" in r.stdout
