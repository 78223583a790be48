"""The profiled run's split (profiling/gpu_check.py ``time_split``) counts device work
only: the first H200 run summed ``ProfilerStep*`` and ``Optimizer.step#Adam.step``, the
CUDA-side copies of CPU ranges that span the kernels inside them, into the kernel total
("25.04 ms per step, renderer 0.0883"; profiling/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "profiling" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", mod)
    spec.loader.exec_module(mod)
    return mod


def row(key, dev, self_dev_us=0.0, dev_us=None, cpu_us=0.0, annotation=False):
    """A fake ``prof.key_averages()`` row (times in microseconds, as torch's)."""
    return types.SimpleNamespace(
        key=key,
        device_type=types.SimpleNamespace(name=dev),
        self_device_time_total=self_dev_us,
        device_time_total=self_dev_us if dev_us is None else dev_us,
        self_cpu_time_total=cpu_us,
        is_user_annotation=annotation,
    )


# Shaped after the first H200 run's profiled fused run (10 active steps).
EVENTS = [
    # CPU side: ops and ranges (their device_time_total sums their kernels).
    row("ProfilerStep*", "CPU", 0.0, 250_000.0, cpu_us=300_000.0, annotation=True),
    row("Optimizer.step#Adam.step", "CPU", 0.0, 7_050.0, cpu_us=9_000.0, annotation=True),
    row("aten::mm", "CPU", 0.0, 3_000.0, cpu_us=2_000.0),
    row("aten::empty", "CPU", cpu_us=500.0),
    # CUDA side: the same ranges as GPU user annotations, spanning the kernels.
    row("ProfilerStep*", "CUDA", 190_640.0, annotation=True),
    row("Optimizer.step#Adam.step", "CUDA", 4_320.0, annotation=True),
    # Device work.
    row("_plane_blur_kernel", "CUDA", 9_950.0),
    row("_depth_project_bwd_kernel", "CUDA", 8_850.0),
    row("_splat_fwd_kernel", "CUDA", 3_300.0),
    row("Memcpy HtoD (Pageable -> Device)", "CUDA", 6_720.0),
    row("void at::native::multi_tensor_apply_kernel<...>", "CUDA", 2_730.0),
    row("Memset (Device)", "CUDA", 10.0),
]


def test_split_counts_kernels_and_copies_not_ranges(gpu_check):
    res = gpu_check.time_split(EVENTS, cuda=True, active=10)
    names = [t["name"] for t in res["top"]]
    assert "ProfilerStep*" not in names and "Optimizer.step#Adam.step" not in names
    assert not [n for n in names if n.startswith("aten::")]  # CPU rows never count on CUDA
    kernels_us = 9_950 + 8_850 + 3_300 + 6_720 + 2_730 + 10
    assert res["total_ms"] == pytest.approx(kernels_us / 1e3, abs=0.01)
    assert res["per_step_ms"] == pytest.approx(kernels_us / 1e3 / 10, abs=0.01)
    assert res["renderer_kernels_ms"] == pytest.approx((9_950 + 8_850 + 3_300) / 1e3, abs=0.01)
    assert res["renderer_fraction"] == pytest.approx((9_950 + 8_850 + 3_300) / kernels_us, abs=1e-4)
    assert names[0] == "_plane_blur_kernel"


def test_split_without_the_annotation_field(gpu_check):
    """Older torch rows without ``is_user_annotation``: a CUDA row named like a CPU row
    (a range's GPU copy) and ``ProfilerStep*`` are left out all the same."""
    events = []
    for e in EVENTS:
        e = types.SimpleNamespace(**vars(e))
        del e.is_user_annotation
        events.append(e)
    with_field = gpu_check.time_split(EVENTS, cuda=True, active=10)
    assert gpu_check.time_split(events, cuda=True, active=10) == with_field


def test_split_dry_run_uses_cpu_self_time(gpu_check):
    res = gpu_check.time_split(EVENTS, cuda=False, active=2)
    names = {t["name"] for t in res["top"]}
    assert "ProfilerStep*" not in names and "aten::empty" not in names
    assert "aten::mm" in names and res["time_source"].startswith("CPU")


def test_commit_comes_from_the_commit_file_before_git(gpu_check, tmp_path, monkeypatch):
    """The device's copy can hold a stale ``.git`` (run 4 reported an older HEAD than the
    code it ran): the COMMIT file written right before the call wins, and git's HEAD is
    kept beside it when the two differ."""
    f = tmp_path / "COMMIT"
    f.write_text("0123abcd dirty\n")
    monkeypatch.setenv("DPC_COMMIT_FILE", str(f))
    info = gpu_check.commit_info()
    assert info["commit"] == "0123abcd" and info["dirty"] is True
    assert info["source"] == str(f)
    if (ROOT / ".git").exists():
        assert info.get("git_commit") not in (None, "0123abcd")
    monkeypatch.setenv("DPC_COMMIT_FILE", str(tmp_path / "missing"))
    info = gpu_check.commit_info()
    assert info["source"] in ("git", "none (no .git, no COMMIT file)")
