"""The GPU check run as the device runs it (issue 22): an interpreter that holds only the
GPU image's packages (no hydra, omegaconf, trimesh, embreex, pykeops, wandb), the
wheelhouse installed by ``gpu_check.sh`` itself with ``--no-index``, ``--dry-run`` end to
end, the report written after every phase.

* ``image-venv-this-python`` (CI): a venv of *this* interpreter (CI's Python 3.11, not
  the device's 3.12) that sees only the image's packages (profiling/image_venv.py), and a
  wheelhouse repacked offline from this interpreter's installed copies
  (``wheelhouse.py --from-installed``): no network.
* ``image-venv-python3.12``: the same from a Python 3.12 that has the image's packages
  (torch's CPU build, triton, numpy, scipy, pillow, numba, pytest), named by
  ``DPC_IMAGE_PYTHON``; the wheels come from ``DPC_WHEELHOUSE`` or are downloaded from
  PyPI for that Python (``wheelhouse.py --python-version 3.12``). Skipped without it:
  no torch CPU build for 3.12 is reachable from the CPU machines (docs/kernels.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PY312 = os.environ.get("DPC_IMAGE_PYTHON")


def _run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.parametrize(
    "base_python",
    [
        pytest.param(None, id="image-venv-this-python"),
        pytest.param(
            PY312,
            id="image-venv-python3.12",
            marks=pytest.mark.skipif(
                not PY312, reason="DPC_IMAGE_PYTHON (a Python 3.12 with the image's packages)"
            ),
        ),
    ],
)
def test_gpu_check_dry_run_as_on_the_device(tmp_path, base_python):
    base = base_python or sys.executable
    sys.path.insert(0, str(ROOT / "profiling"))
    import image_venv

    py = image_venv.make(tmp_path / "venv", base)
    # The venv lacks what the image lacks.
    probe = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])"
    r = _run([str(py), "-c", probe % image_venv.NOT_IN_IMAGE], env={"PATH": os.environ["PATH"]})
    assert r.stdout.strip() == "[]", r.stdout

    wheels = os.environ.get("DPC_WHEELHOUSE") if base_python else None
    if not wheels:
        wheels = tmp_path / "wheelhouse"
        how = ["--from-installed"] if base_python is None else ["--python-version", "3.12"]
        _run([sys.executable, "profiling/wheelhouse.py", "--dest", str(wheels), *how])

    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH")}
    env.update(
        PYTHON=str(py),
        DPC_WHEELHOUSE=str(wheels),
        WANDB_MODE="disabled",
        TRITON_CACHE_DIR=str(tmp_path / "triton-cache"),
        TMPDIR=str(tmp_path),
    )
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(ROOT / "profiling" / "gpu_check.sh"), "--dry-run", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["logs.txt", "report.json", "report.md"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["dry_run"] is True and rep["finished_utc"]
    phases = rep["phases"]
    assert set(phases) == {"data", "compile", "env", "cuda_tests", "profile", "train"}
    assert all(p["rc"] in (0, 5) for p in phases.values()), phases
    env_res = phases["env"]["result"]
    assert env_res["python"].startswith("3.12" if base_python else sys.version.split()[0])
    assert env_res["commit"] and len(env_res["commit"]) == 40
    # Every carried package came from the wheelhouse and imports.
    assert not [m for m, v in env_res["carried"].items() if str(v).startswith("FAILED")]
    # Training ran in alternating order with steps after the warm-up, and a profiled run.
    train = phases["train"]["result"]
    assert [r["variant"] for r in train["runs"]] == ["passes", "fused", "fused", "passes"]
    for run in train["runs"]:
        assert run["steps"] >= 1 and run["steps_per_s"] > 0 and run["warmup_steps"] >= 1, run
    assert train["split"]["total_ms"] > 0 and train["split"]["schedule"]["warmup"] >= 1
    # Compile statistics at both sizes; profile rows for every provider.
    grids = {row.split("|")[2].strip() for row in phases["compile"]["result"]["md"].splitlines()
             if row.startswith("| fused")}  # fmt: skip
    assert grids == {"64", "128"}
    providers = {row["provider"].split()[0] for row in phases["profile"]["result"]["rows"]}
    assert providers == {"eager", "triton", "triton-fused"}
    md = (out / "report.md").read_text()
    assert "DRY RUN" in md and "## Training" in md and "steps/s" in md
    assert "NOT FINISHED" not in md
