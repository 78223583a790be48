"""Chamfer distance: nearest-neighbour distances both ways between batched point clouds.

Public entry point :func:`chamfer_distance`; its oracle is
:func:`kernels.reference.chamfer_distance_ref` (chunked ``torch.cdist``). Every backend
finds the nearest-neighbour *indices* without autograd and then recomputes the distances
in torch from the gathered points, so the result is differentiable w.r.t. both clouds on
every backend (KeOps' ``LazyTensor.min()`` has no backward; a KD-tree has none either).

An evaluation op, not on the training path: it checks its inputs are finite (a host
sync), since a NaN point would silently match nothing in the KD-tree.

Backends:

* ``keops``: ``pykeops`` ``LazyTensor.argmin`` (GPU; also runs on CPU with a C++
  compiler, after a one-off ~15 s compile cached in ``KEOPS_CACHE_FOLDER``). Memory is
  linear in the number of points: the N x M distance matrix is never stored.
* ``kdtree``: ``scipy.spatial.cKDTree`` on CPU, one tree per batch element (linear memory).
  About 10x faster than KeOps on a 2-core CPU for 8k x 10k points.
* ``reference``: chunked ``torch.cdist`` (memory ``chunk x M`` per step), the oracle.

``auto`` picks ``kdtree`` for CPU tensors; for CUDA tensors ``keops`` when pykeops
imports and the KeOps probe passed, else ``reference``. pykeops can import and still fail
when it compiles or runs its kernel (no compiler, a CUDA or driver mismatch), and KeOps
2.3 even *segfaults* the process when it compiles its first formula through nvrtc under
CUDA 13.0 (profiling/RESULTS.md, first GPU run), which no ``try`` can catch. So before
KeOps first runs on a device type, :func:`keops_status` compiles and runs the same
nearest-neighbour formula on a tiny input in a *subprocess* (time limit
``DPC_KEOPS_PROBE_TIMEOUT``, default 300 s), once per process and device type (``cuda``,
``cpu``); the answer is also stored in ``KEOPS_CACHE_FOLDER`` (when that is set), keyed by
the versions of pykeops, keopscore, torch, CUDA, Python and the device, so a later process
reuses it (a time-out is not stored). The probe's compile lands in KeOps' own cache, so a
passing probe costs the process nothing more. When the probe fails or crashes, ``auto``
warns once with the probe's reason and uses ``reference``; an explicit ``backend="keops"``
raises a ``RuntimeError`` with that reason instead of crashing. A KeOps error that a probe
did not foresee (e.g. a float64 compile: the probe compiles float32) is still caught:
``auto`` then warns once and uses ``reference`` for that call and every later one; an
explicit ``keops`` raises.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from kernels._utils import check_tensor

ChamferBackend = Literal["auto", "keops", "kdtree", "reference"]
CHAMFER_BACKENDS = ("auto", "keops", "kdtree", "reference")


class ChamferResult(NamedTuple):
    """Per-point nearest distances both ways (unpacks as ``(x_to_y, y_to_x)`` plus indices).

    ``x_to_y [B, N]``: distance from each point of x to its nearest point of y;
    ``y_to_x [B, M]``: the other way. Euclidean, or squared if asked. ``idx_x_to_y [B, N]``
    (int64) indexes y, ``idx_y_to_x [B, M]`` indexes x (ties: any nearest point).
    """

    x_to_y: Tensor
    y_to_x: Tensor
    idx_x_to_y: Tensor
    idx_y_to_x: Tensor


@functools.cache
def has_keops() -> bool:
    """True when ``pykeops`` imports (it still needs a compiler or CUDA to run)."""
    try:
        import pykeops  # noqa: F401
        from pykeops.torch import LazyTensor  # noqa: F401
    except Exception:
        return False
    return True


# The probe: compile and run, in a fresh interpreter, the nearest-neighbour formula of
# ``_nn_keops`` (same formula, float32: the compiled kernel lands in KeOps' cache for it)
# on a tiny input, and check it against torch. argv[1]: the device ("cuda" or "cpu").
_PROBE_CODE = r"""
import sys
import torch
from pykeops.torch import LazyTensor

dev = sys.argv[1]
g = torch.Generator().manual_seed(0)
a = torch.rand(2, 7, 3, generator=g)
b = torch.rand(2, 5, 3, generator=g)
A = LazyTensor(a.to(dev).contiguous()[:, :, None, :])
Bm = LazyTensor(b.to(dev).contiguous()[:, None, :, :])
idx = ((A - Bm) ** 2).sum(-1).argmin(dim=2).reshape(2, 7).long().cpu()
d = torch.cdist(a.double(), b.double())
got, want = d.gather(-1, idx[..., None])[..., 0], d.min(-1).values
if not torch.allclose(got, want, rtol=1e-5, atol=1e-6):
    sys.exit(f"KeOps argmin {idx.tolist()} is not the nearest point (torch: {want.tolist()})")
print("dpc-keops-probe: ok")
"""
PROBE_OK_LINE = "dpc-keops-probe: ok"
PROBE_TIMEOUT_S = 300.0  # a first nvrtc or g++ compile takes ~15 s; a loaded machine more

# device type -> (ok, reason): the probe's answer in this process.
_probe_results: dict[str, tuple[bool, str]] = {}
_probe_lock = threading.Lock()


def _probe_command(device: str) -> list[str]:
    """The probe's command line (tests replace it with one that crashes)."""
    # -X faulthandler: a crash prints the Python stack, which the reason quotes.
    return [sys.executable, "-X", "faulthandler", "-c", _PROBE_CODE, device]


def _probe_key(device: str) -> dict:
    """What a stored probe answer is valid for."""
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    key = {
        "pykeops": version("pykeops"),
        "keopscore": version("keopscore"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "executable": sys.executable,
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        key["gpu"] = torch.cuda.get_device_name()
        key["capability"] = list(torch.cuda.get_device_capability())
    return key


def _probe_cache_file(key: dict) -> Path | None:
    folder = os.environ.get("KEOPS_CACHE_FOLDER")
    if not folder:
        return None
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder) / f"dpc-keops-probe-{key['device']}-{digest}.json"


def _tail(text: str, n: int = 4) -> str:
    """The last ``n`` lines of a probe's output; after a crash, faulthandler's message and
    its innermost frames instead (where it crashed)."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    fatal = [i for i, ln in enumerate(lines) if ln.startswith("Fatal Python error")]
    if fatal:
        i = fatal[-1]
        frames = [ln for ln in lines[i + 1 :] if ln.startswith("File ")][:3]
        return " | ".join([lines[i], *frames])[:600]
    return " | ".join(lines[-n:])[-600:]


def _run_probe(device: str, timeout: float) -> tuple[bool, str, bool]:
    """Run the probe subprocess: ``(ok, reason, definite)``; ``definite`` is False for a
    time-out or a failure to start (not stored on disk)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(
            _probe_command(device),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: killed whole on a time-out
        )
    except OSError as e:
        return False, f"the KeOps probe could not start: {e!r}", False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()
        out, err = p.communicate()
        return False, f"the KeOps probe did not finish in {timeout:g} s", False
    took = time.perf_counter() - t0
    rc = p.returncode
    if rc == 0 and PROBE_OK_LINE in out:
        return True, f"KeOps probe passed on {device} in {took:.1f} s", True
    if rc < 0:
        try:
            sig = signal.Signals(-rc).name
        except ValueError:
            sig = str(-rc)
        why = f"the KeOps probe process was killed by {sig} (a crash inside KeOps)"
    else:
        why = f"the KeOps probe exited with status {rc}"
    detail = _tail(err) or _tail(out)
    return False, f"{why} on {device} after {took:.1f} s" + (f": {detail}" if detail else ""), True


def keops_status(device: str | torch.device = "cuda") -> tuple[bool, str]:
    """Whether KeOps compiles and runs its nearest-neighbour formula on ``device`` (its
    type: ``cuda`` or ``cpu``), and why not: ``(ok, reason)``.

    Asked once per process and device type, in a subprocess (see the module docstring):
    a KeOps crash kills the probe, not the caller. The answer is kept for the process and,
    when ``KEOPS_CACHE_FOLDER`` is set, stored there for later processes.
    """
    dev = torch.device(device).type
    with _probe_lock:
        if dev in _probe_results:
            return _probe_results[dev]
        if not has_keops():
            res = (False, "pykeops is not installed (or does not import)")
            _probe_results[dev] = res
            return res
        key = _probe_key(dev)
        path = _probe_cache_file(key)
        if path is not None and path.is_file():
            try:
                stored = json.loads(path.read_text())
                if stored.get("key") == key:
                    res = (bool(stored["ok"]), f"{stored['reason']} (stored in {path})")
                    _probe_results[dev] = res
                    return res
            except (OSError, ValueError, KeyError):
                pass
        timeout = float(os.environ.get("DPC_KEOPS_PROBE_TIMEOUT", PROBE_TIMEOUT_S))
        ok, reason, definite = _run_probe(dev, timeout)
        if definite and path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps({"key": key, "ok": ok, "reason": reason}, indent=1))
                tmp.replace(path)
            except OSError:
                pass
        _probe_results[dev] = (ok, reason)
        return ok, reason


# Set when KeOps failed under ``auto`` (probe failed, or a compile or run error): ``auto``
# stops trying it.
_keops_broken: str | None = None


def _keops_failed(err: BaseException | str, stacklevel: int = 3) -> None:
    global _keops_broken
    if isinstance(err, BaseException):
        _keops_broken = f"{type(err).__name__}: {str(err)[:300]}"
    else:
        _keops_broken = err
    warnings.warn(
        f"chamfer_distance: KeOps failed ({_keops_broken}); backend 'auto' falls back to "
        "'reference' (chunked torch.cdist) from now on",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def _safe_sqrt(d2: Tensor) -> Tensor:
    """sqrt with a zero (not NaN/inf) gradient at 0, for duplicate points."""
    pos = d2 > 0
    return torch.where(pos, d2.clamp_min(torch.finfo(d2.dtype).tiny).sqrt(), torch.zeros_like(d2))


def _gather_dist(a: Tensor, b: Tensor, idx: Tensor, squared: bool) -> Tensor:
    """Distances ``[B, N]`` from ``a [B, N, 3]`` to ``b[idx]`` (``idx [B, N]`` into b)."""
    nn_pts = torch.gather(b, 1, idx[..., None].expand(-1, -1, b.shape[-1]))
    d2 = (a - nn_pts).pow(2).sum(-1)
    return d2 if squared else _safe_sqrt(d2)


def _nn_kdtree(a: Tensor, b: Tensor, return_dist: bool = False):
    """Index ``[B, N]`` of the nearest point of ``b [B, M, 3]`` for each point of ``a``
    (and, with ``return_dist``, the float64 distance ``[B, N]`` found by the tree)."""
    from scipy.spatial import cKDTree

    a_np = a.detach().cpu().double().numpy()
    b_np = b.detach().cpu().double().numpy()
    out = np.empty(a_np.shape[:2], dtype=np.int64)
    dist = np.empty(a_np.shape[:2], dtype=np.float64)
    for i in range(a_np.shape[0]):
        # workers=-1 uses every core for the queries; the tree is O(M) memory. Unbalanced,
        # non-compact trees build faster: 8k x 8k both ways 21 -> 14 ms on 2 cores.
        tree = cKDTree(b_np[i], balanced_tree=False, compact_nodes=False)
        dist[i], out[i] = tree.query(a_np[i], k=1, workers=-1)
    idx = torch.from_numpy(out).to(a.device)
    if return_dist:
        return idx, torch.from_numpy(dist).to(device=a.device, dtype=a.dtype)
    return idx


def _nn_keops(a: Tensor, b: Tensor) -> Tensor:
    """KeOps argmin: index ``[B, N]`` of the nearest point of ``b`` for each point of ``a``.

    Runs on detached tensors (the symbolic reduction is never stored as an N x M matrix).
    """
    from pykeops.torch import LazyTensor

    A = LazyTensor(a.detach().contiguous()[:, :, None, :])  # [B, N, 1, 3]
    Bm = LazyTensor(b.detach().contiguous()[:, None, :, :])  # [B, 1, M, 3]
    idx = ((A - Bm) ** 2).sum(-1).argmin(dim=2)  # [B, N, 1]
    return idx.reshape(a.shape[0], a.shape[1]).long()


def _nn_reference(a: Tensor, b: Tensor, chunk: int = 2048) -> Tensor:
    """Chunked ``torch.cdist`` argmin (the oracle): memory ``chunk x M`` per step."""
    a, b = a.detach(), b.detach()
    parts = [
        torch.cdist(a[:, s : s + chunk], b, compute_mode="donot_use_mm_for_euclid_dist").argmin(-1)
        for s in range(0, a.shape[1], chunk)
    ]
    return torch.cat(parts, dim=1)


def _pick_backend(backend: str, x: Tensor) -> str:
    if backend not in CHAMFER_BACKENDS:
        raise ValueError(f"backend must be one of {CHAMFER_BACKENDS}, got {backend!r}")
    if backend == "auto":
        if not x.is_cuda:
            return "kdtree"
        if _keops_broken is not None or not has_keops():
            return "reference"
        ok, why = keops_status(x.device)
        if ok:
            return "keops"
        _keops_failed(why, stacklevel=4)  # warns once; later calls see _keops_broken
        return "reference"
    if backend == "keops":
        if not has_keops():
            raise RuntimeError("backend='keops' needs pykeops; pip install pykeops")
        ok, why = keops_status(x.device)
        if not ok:
            raise RuntimeError(
                f"backend='keops': KeOps cannot run on {x.device.type} here ({why}); use "
                "backend='auto' (falls back to 'reference'), 'kdtree' or 'reference'"
            )
    return backend


def _check_clouds(x: Tensor, y: Tensor) -> None:
    check_tensor("x", x, ndim=3, last=3, finite=True)
    check_tensor("y", y, ndim=3, last=3, finite=True)
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[1] == 0:
        raise ValueError("x is an empty point cloud (N = 0); the Chamfer distance is undefined")
    if y.shape[1] == 0:
        raise ValueError("y is an empty point cloud (M = 0); the Chamfer distance is undefined")
    if x.dtype != y.dtype or x.device != y.device:
        raise ValueError(
            "x and y must share dtype and device, got "
            f"{x.dtype}/{x.device} and {y.dtype}/{y.device}"
        )


def chamfer_distance(
    x: Tensor,  # [B, N, 3]
    y: Tensor,  # [B, M, 3]
    squared: bool = False,
    backend: ChamferBackend = "auto",
) -> ChamferResult:
    """Nearest-neighbour distances from x to y and from y to x.

    Args:
        x: ``[B, N, 3]`` point clouds (finite, N >= 1).
        y: ``[B, M, 3]`` point clouds (finite, M >= 1).
        squared: return squared Euclidean distances (for losses); the metric uses
            Euclidean ones (SPEC section 6).
        backend: ``auto``, ``keops``, ``kdtree`` or ``reference`` (see module docstring).

    Returns:
        :class:`ChamferResult` ``(x_to_y [B, N], y_to_x [B, M], idx_x_to_y, idx_y_to_x)``.
        ``x_to_y.mean(1)`` is the precision when x is the prediction and y the ground
        truth, ``y_to_x.mean(1)`` the coverage. Differentiable w.r.t. x and y (the
        gradient of a Euclidean distance that is exactly 0 is taken as 0).
    """
    _check_clouds(x, y)
    which = _pick_backend(backend, x)
    if which == "kdtree" and not (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)):
        # No autograd needed (evaluation): use the tree's own distances and skip the
        # gather + recompute, which costs as much as the queries for 8k points.
        i_xy, d_xy = _nn_kdtree(x, y, return_dist=True)
        i_yx, d_yx = _nn_kdtree(y, x, return_dist=True)
        if squared:
            d_xy, d_yx = d_xy * d_xy, d_yx * d_yx
        return ChamferResult(d_xy, d_yx, i_xy, i_yx)
    nn = {"keops": _nn_keops, "kdtree": _nn_kdtree, "reference": _nn_reference}[which]
    try:
        idx_xy = nn(x, y)
        idx_yx = nn(y, x)
    except Exception as e:
        if not (which == "keops" and backend == "auto"):
            raise
        _keops_failed(e)  # a compile or run error of KeOps: the oracle instead
        idx_xy, idx_yx = _nn_reference(x, y), _nn_reference(y, x)
    return ChamferResult(
        _gather_dist(x, y, idx_xy, squared), _gather_dist(y, x, idx_yx, squared), idx_xy, idx_yx
    )
