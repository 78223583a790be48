"""Chamfer distance: backends agree with the cdist oracle, gradients too, memory is linear."""

import re
import subprocess
import sys
import types

import pytest
import torch

from kernels import chamfer_distance
from kernels.chamfer import has_keops
from kernels.reference import chamfer_distance_ref


def _keops_works() -> bool:
    """KeOps runs on CPU when a C++ compiler is present (first call compiles, ~15 s)."""
    if not has_keops():
        return False
    try:
        chamfer_distance(torch.rand(1, 4, 3), torch.rand(1, 5, 3), backend="keops")
    except Exception:
        return False
    return True


BACKENDS = ["reference", "kdtree", pytest.param("keops", marks=pytest.mark.slow)]


@pytest.fixture(scope="module")
def keops_ok():
    return _keops_works()


def _maybe_skip(backend, keops_ok):
    if backend == "keops" and not keops_ok:
        pytest.skip("pykeops cannot compile here (no C++ compiler or CUDA)")


def _clouds(kind: str, B: int, N: int, M: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, N, 3, generator=g, dtype=torch.float64) - 0.5
    y = torch.rand(B, M, 3, generator=g, dtype=torch.float64) - 0.5
    if kind == "duplicates":  # repeated points inside a cloud: ties between neighbours
        x[:, N // 2 :] = x[:, : N - N // 2]
    if kind in ("duplicates", "shared"):  # points present in both clouds: distance 0
        y[:, : min(N, M) // 3] = x[:, : min(N, M) // 3]
    return x, y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind,B,N,M",
    [
        ("random", 1, 1, 1),
        ("random", 3, 1, 50),
        ("random", 2, 500, 777),
        ("duplicates", 2, 300, 200),
        ("random", 1, 3000, 2500),
    ],
)
@pytest.mark.parametrize("squared", [False, True])
def test_backends_match_reference(backend, kind, B, N, M, squared, keops_ok):
    _maybe_skip(backend, keops_ok)
    x, y = _clouds(kind, B, N, M)
    if backend == "keops":  # KeOps compiles per dtype: test float32 only (one compile)
        x, y = x.float(), y.float()
    d_xy, d_yx, i_xy, i_yx = chamfer_distance(x, y, squared=squared, backend=backend)
    r_xy, r_yx = chamfer_distance_ref(x, y, squared=squared)
    assert d_xy.shape == (B, N) and d_yx.shape == (B, M)
    assert i_xy.dtype == torch.int64 and int(i_xy.max()) < M and int(i_yx.max()) < N
    tol = 1e-5 if x.dtype == torch.float32 else 1e-12
    torch.testing.assert_close(d_xy, r_xy, rtol=tol, atol=tol)
    torch.testing.assert_close(d_yx, r_yx, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("squared", [False, True])
def test_gradients_match_reference(backend, squared, keops_ok):
    _maybe_skip(backend, keops_ok)
    # Shared points (distance exactly 0) but no ties: with tied neighbours the gradient
    # legitimately goes to whichever tied point a backend picks.
    x, y = _clouds("shared", 2, 200, 150, seed=1)
    if backend == "keops":
        x, y = x.float(), y.float()
    x.requires_grad_(True)
    y.requires_grad_(True)
    g = torch.Generator().manual_seed(2)
    v1 = torch.randn(2, 200, generator=g, dtype=x.dtype)
    v2 = torch.randn(2, 150, generator=g, dtype=x.dtype)
    d_xy, d_yx, *_ = chamfer_distance(x, y, squared=squared, backend=backend)
    gx, gy = torch.autograd.grad((d_xy * v1).sum() + (d_yx * v2).sum(), (x, y))
    r_xy, r_yx = chamfer_distance_ref(x, y, squared=squared)
    rx, ry = torch.autograd.grad((r_xy * v1).sum() + (r_yx * v2).sum(), (x, y))
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()  # no NaN at distance 0
    tol = 1e-4 if x.dtype == torch.float32 else 1e-10
    torch.testing.assert_close(gx, rx, rtol=tol, atol=tol)
    torch.testing.assert_close(gy, ry, rtol=tol, atol=tol)


def test_gradcheck_kdtree_float64():
    # Well separated random points: the nearest neighbour does not change under eps.
    x, y = _clouds("random", 1, 20, 15, seed=3)
    x.requires_grad_(True)
    y.requires_grad_(True)
    f = lambda a, b: tuple(chamfer_distance(a, b, backend="kdtree")[:2])
    assert torch.autograd.gradcheck(f, (x, y), eps=1e-7, atol=1e-6)


def test_self_is_zero_and_shift_is_t():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 4000, 3, generator=g) - 0.5
    d = chamfer_distance(x, x.clone())
    assert float(d.x_to_y.abs().max()) == 0.0 and float(d.y_to_x.abs().max()) == 0.0
    # A regular grid shifted by t < spacing/2 along an axis: every nearest point is the
    # shifted copy of itself, at distance exactly |t| both ways.
    ax = torch.linspace(-0.5, 0.5, 16)
    grid = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(1, -1, 3)
    t = 0.02
    d = chamfer_distance(grid, grid + torch.tensor([0.0, 0.0, t]))
    torch.testing.assert_close(d.x_to_y, torch.full_like(d.x_to_y, t), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d.y_to_x, torch.full_like(d.y_to_x, t), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "x,y,msg",
    [
        (torch.zeros(1, 0, 3), torch.zeros(1, 5, 3), "x is an empty"),
        (torch.zeros(1, 5, 3), torch.zeros(1, 0, 3), "y is an empty"),
        (torch.full((1, 5, 3), float("nan")), torch.zeros(1, 5, 3), "x contains NaN"),
        (torch.zeros(2, 5, 3), torch.zeros(1, 5, 3), "batch size"),
        (torch.zeros(1, 5, 2), torch.zeros(1, 5, 3), "x must have last dimension 3"),
    ],
)
def test_bad_inputs(x, y, msg):
    with pytest.raises(ValueError, match=msg):
        chamfer_distance(x, y)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        chamfer_distance(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), backend="cuda")


_MEM_SCRIPT = """
import resource, sys, torch
from kernels import chamfer_distance
torch.set_num_threads(2)
b = sys.argv[1]
g = torch.Generator().manual_seed(0)
x, y = torch.rand(1, 20000, 3, generator=g), torch.rand(1, 20000, 3, generator=g)
chamfer_distance(x[:, :10], y[:, :10], backend=b)  # warm-up: imports, KeOps compile
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
chamfer_distance(x, y, backend=b)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("backend", ["kdtree", pytest.param("keops", marks=pytest.mark.slow)])
def test_memory_is_linear(backend, keops_ok):
    """Peak memory growth for 20k x 20k points stays far below one N x M float32 matrix
    (1.6 GB); measured as the rise of the peak RSS in a fresh process."""
    _maybe_skip(backend, keops_ok)
    out = subprocess.run(
        [sys.executable, "-c", _MEM_SCRIPT, backend], capture_output=True, text=True, check=True
    )
    grow = int(out.stdout.strip().splitlines()[-1])
    assert grow < 20000 * 20000 * 4 / 10, grow


def test_auto_falls_back_when_keops_fails(monkeypatch):
    """pykeops imports but its compile (or run) fails: ``auto`` warns and returns the
    reference's answer, and stops trying KeOps; an explicit ``keops`` raises."""
    from kernels import chamfer

    calls = []

    def broken(a, b):
        calls.append(1)
        raise RuntimeError("[KeOps] Error: no nvcc / nvrtc for this device")

    monkeypatch.setattr(chamfer, "_keops_broken", None)
    monkeypatch.setattr(chamfer, "has_keops", lambda: True)
    monkeypatch.setattr(chamfer, "keops_status", lambda device="cuda": (True, "probe passed"))
    monkeypatch.setattr(chamfer, "_nn_keops", broken)
    # On a CPU tensor auto picks the KD-tree; pose as the CUDA case, where it picks keops.
    real_pick = chamfer._pick_backend
    monkeypatch.setattr(
        chamfer,
        "_pick_backend",
        lambda b, x: (
            ("keops" if chamfer._keops_broken is None else "reference")
            if b == "auto"
            else real_pick(b, x)
        ),
    )
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 50, 3, generator=gen), torch.rand(2, 40, 3, generator=gen)
    want = chamfer_distance(x, y, backend="reference")
    with pytest.warns(RuntimeWarning, match="KeOps failed.*falls back"):
        got = chamfer_distance(x, y)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert calls == [1] and "no nvcc" in chamfer._keops_broken
    chamfer_distance(x, y)  # no second attempt
    assert calls == [1]
    # The real auto rule also stops picking KeOps once it failed.
    # _pick_backend reads is_cuda and device only
    cuda_like = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    assert real_pick("auto", cuda_like) == "reference"
    monkeypatch.setattr(chamfer, "_keops_broken", None)
    assert real_pick("auto", cuda_like) == "keops"
    monkeypatch.setattr(chamfer, "_keops_broken", "RuntimeError: no nvcc")
    with pytest.raises(RuntimeError, match="no nvcc"):
        chamfer_distance(x, y, backend="keops")


# --- The KeOps probe (a subprocess): a crash there must not reach the caller. ---------

SEGFAULT = "import ctypes; ctypes.string_at(0)"  # reads address 0: SIGSEGV


@pytest.fixture
def probe(monkeypatch, tmp_path):
    """A fresh probe state (no answer in this process, none on disk: KEOPS_CACHE_FOLDER
    is a new folder) whose command is ``set_code(python source)``; pykeops "imports"."""
    from kernels import chamfer

    monkeypatch.setattr(chamfer, "_probe_results", {})
    monkeypatch.setattr(chamfer, "_keops_broken", None)
    monkeypatch.setattr(chamfer, "has_keops", lambda: True)
    monkeypatch.setenv("KEOPS_CACHE_FOLDER", str(tmp_path))
    runs = []

    def set_code(code: str) -> None:
        def cmd(device):
            runs.append(device)
            return [sys.executable, "-X", "faulthandler", "-c", code, device]

        monkeypatch.setattr(chamfer, "_probe_command", cmd)

    set_code(SEGFAULT)
    return types.SimpleNamespace(mod=chamfer, set_code=set_code, runs=runs, folder=tmp_path)


@pytest.mark.parametrize(
    "code,why",
    [
        (SEGFAULT, r"killed by SIGSEGV.*Fatal Python error: Segmentation fault.*File "),
        ("import os; os.abort()", r"killed by SIGABRT"),
        ("import sys; sys.exit('[KeOps] no nvrtc here')", r"exited with status 1.*no nvrtc"),
        ("print('compiled, but prints no ok line')", r"exited with status 0.*no ok line"),
    ],
)
def test_probe_failure_is_reported_not_fatal(probe, code, why):
    probe.set_code(code)
    ok, reason = probe.mod.keops_status("cuda")
    assert not ok and re.search(why, reason), reason
    assert probe.mod.keops_status("cuda") == (ok, reason)  # once per process
    assert probe.runs == ["cuda"]


def test_probe_crash_auto_falls_back_explicit_raises(probe, monkeypatch):
    """The probe segfaults: ``auto`` on CUDA warns with the reason and takes the reference
    (and never runs KeOps in this process); an explicit ``keops`` raises that reason."""
    mod = probe.mod
    called = []
    monkeypatch.setattr(mod, "_nn_keops", lambda a, b: called.append(1))  # must never run
    cuda_like = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    with pytest.warns(RuntimeWarning, match="KeOps failed.*SIGSEGV.*falls back"):
        assert mod._pick_backend("auto", cuda_like) == "reference"
    assert "SIGSEGV" in mod._keops_broken
    assert mod._pick_backend("auto", cuda_like) == "reference"  # no second probe
    assert probe.runs == ["cuda"]
    with pytest.raises(RuntimeError, match="backend='keops'.*cannot run on cuda.*SIGSEGV"):
        mod._pick_backend("keops", cuda_like)
    # The whole call on CPU tensors: explicit keops probes the CPU, raises, no crash.
    x, y = torch.rand(1, 20, 3), torch.rand(1, 30, 3)
    with pytest.raises(RuntimeError, match="cannot run on cpu.*SIGSEGV"):
        chamfer_distance(x, y, backend="keops")
    assert probe.runs == ["cuda", "cpu"] and not called
    want = chamfer_distance_ref(x, y)
    got = chamfer_distance(x, y)  # auto on CPU: the KD-tree, no probe
    torch.testing.assert_close(got.x_to_y, want[0], rtol=1e-5, atol=1e-6)
    assert probe.runs == ["cuda", "cpu"]


def test_probe_answer_is_stored_per_versions(probe, monkeypatch):
    """A definite answer is stored in KEOPS_CACHE_FOLDER and reused by a later process
    (simulated: the in-process answers cleared) with the same versions; other versions
    probe again."""
    mod = probe.mod
    ok, reason = mod.keops_status("cuda")
    assert not ok
    files = list(probe.folder.glob("dpc-keops-probe-cuda-*.json"))
    assert len(files) == 1
    mod._probe_results.clear()
    probe.set_code("raise SystemExit('must not run: the stored answer is reused')")
    ok2, reason2 = mod.keops_status("cuda")
    assert not ok2 and reason2.startswith(reason) and "stored in" in reason2
    assert probe.runs == ["cuda"]
    # Another keopscore/torch/...: the key differs, so the probe runs again.
    real_key = mod._probe_key
    mod._probe_results.clear()
    probe.set_code("print('dpc-keops-probe: ok')")
    monkeypatch.setattr(mod, "_probe_key", lambda d: {**real_key(d), "keopscore": "9.9"})
    assert mod.keops_status("cuda")[0] is True
    assert probe.runs == ["cuda", "cuda"]


def test_probe_timeout_is_not_stored(probe, monkeypatch):
    monkeypatch.setenv("DPC_KEOPS_PROBE_TIMEOUT", "1")
    probe.set_code("import time; time.sleep(60)")
    ok, reason = probe.mod.keops_status("cuda")
    assert not ok and "did not finish in 1 s" in reason
    assert not list(probe.folder.glob("dpc-keops-probe-*"))


def test_probe_pass_lets_auto_pick_keops(probe):
    probe.set_code("print('dpc-keops-probe: ok')")
    cuda_like = types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"))
    assert probe.mod._pick_backend("auto", cuda_like) == "keops"
    assert probe.mod._pick_backend("keops", cuda_like) == "keops"
    assert probe.runs == ["cuda"]


def test_real_probe_command_is_valid_python():
    from kernels import chamfer

    cmd = chamfer._probe_command("cpu")
    compile(cmd[cmd.index("-c") + 1], "<probe>", "exec")
