"""Helpers shared by the ops: Triton availability, backend choice, input validation."""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Literal

import torch
from torch import Tensor

Backend = Literal["auto", "reference", "triton", "cpu"]
BACKENDS = ("auto", "reference", "triton", "cpu")
Path = Literal["triton", "cpu", "reference"]


@functools.cache
def has_triton() -> bool:
    """True when ``triton`` imports (it may still lack a GPU: see :func:`select_backend`)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install on an unsupported platform
        return False
    return True


def triton_interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter."""
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(backend: str, *tensors: Tensor | None) -> Path:
    """The one backend choice every op makes: which implementation runs ``tensors``.

    ``auto``: ``triton`` when the inputs are on CUDA, Triton imports and the dtype is
    float32/float64; ``cpu`` (the fast CPU path, :mod:`kernels.cpu`) for float32/float64
    CPU tensors; else ``reference``.
    ``triton``: Triton (also for CPU tensors under ``TRITON_INTERPRET=1``), else an error.
    ``cpu``: the fast CPU path; CPU float32/float64 tensors only, else an error.
    ``reference``: always :mod:`kernels.reference` (the test oracle).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    ts = [t for t in tensors if t is not None]
    dtype_ok = triton_dtype_ok(*ts) and len({t.dtype for t in ts}) <= 1
    on_cuda = all(t.is_cuda for t in ts)
    on_cpu = all(t.device.type == "cpu" for t in ts)
    if backend == "auto":
        if on_cuda and has_triton() and dtype_ok:
            return "triton"
        if on_cpu and dtype_ok:
            return "cpu"
        return "reference"
    dts = sorted({str(t.dtype) for t in ts})
    if backend == "cpu":
        if not on_cpu:
            raise RuntimeError("backend='cpu' needs CPU tensors")
        if not dtype_ok:
            raise ValueError(f"backend='cpu' needs float32/float64 tensors of one dtype, got {dts}")
        return "cpu"
    if not has_triton():
        raise RuntimeError("backend='triton' needs the `triton` package; pip install triton")
    if not (on_cuda or triton_interpreting()):
        raise RuntimeError(
            "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before importing "
            "kernels, to run the kernels on the CPU through Triton's interpreter)"
        )
    if not dtype_ok:
        raise ValueError(f"backend='triton' needs float32/float64 tensors of one dtype, got {dts}")
    return "triton"


def device_guard(t: Tensor):
    """Context manager making ``t``'s CUDA device the current one for a launch: Triton
    launches on the *current* device, so a tensor on ``cuda:1`` needs this when the
    current device is ``cuda:0``. A no-op for CPU tensors (interpreter)."""
    if t.is_cuda:
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def check_tensor(
    name: str,
    x: Tensor,
    ndim: int | None = None,
    last: int | None = None,
    finite: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``x`` is a floating tensor of ``ndim``
    dimensions with last dimension ``last`` (and all finite, if asked).

    ``finite=True`` reads the values back to the host (a device synchronisation): never
    use it on the training path (the renderer ops do not; non-finite values there surface
    as a non-finite loss, which the training loop checks where it already syncs)."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if last is not None and x.shape[-1] != last:
        raise ValueError(f"{name} must have last dimension {last}, got shape {tuple(x.shape)}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_scale(scale: Tensor | None, batch: int) -> None:
    """Raise ``ValueError`` unless ``scale`` is None or a floating ``[batch]`` tensor (the
    per-cloud occupancy scale)."""
    if scale is None:
        return
    check_tensor("scale", scale, ndim=1)
    if scale.shape[0] != batch:
        raise ValueError(f"scale must be [B] with B={batch}, got {tuple(scale.shape)}")


def check_kernel(sigma, kernel_size: int) -> None:
    """Validate blur parameters: odd ``kernel_size`` >= 1 and finite ``sigma`` > 0."""
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"kernel_size must be an int, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
    s = float(sigma)
    if not math.isfinite(s) or s <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def check_size(size) -> tuple[int, int, int]:
    """Validate a grid size ``(D, H, W)`` of positive ints (>= 2, so the mapping
    ``(c + 0.5) * (S - 1)`` is not degenerate)."""
    try:
        D, H, W = (int(s) for s in size)
    except Exception as e:
        raise ValueError(f"size must be three ints (D, H, W), got {size!r}") from e
    if min(D, H, W) < 2:
        raise ValueError(f"size must have every entry >= 2, got {size!r}")
    return D, H, W


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n`` (>= 1): Triton block shapes must be powers of two."""
    return 1 << max(0, int(n) - 1).bit_length()


def launch_block(gpu_block: int, extent: int, interpret_cap: int = 1 << 16) -> int:
    """Block size for a launch over ``extent`` elements.

    On a GPU: ``gpu_block`` (a power of two), shrunk to cover ``extent`` when smaller.
    Under ``TRITON_INTERPRET=1`` each program costs milliseconds of Python, so use as few
    programs as possible: one block covering ``extent`` up to ``interpret_cap``.
    """
    cap = interpret_cap if triton_interpreting() else gpu_block
    return min(next_pow2(extent), next_pow2(cap))


def triton_dtype_ok(*tensors) -> bool:
    """The Triton kernels compute in float32 or float64 (the input dtype)."""
    return all(t is None or t.dtype in (torch.float32, torch.float64) for t in tensors)


# Tests set this to True (monkeypatch) so every output buffer the Triton launchers
# allocate starts as NaN: an element a kernel forgets to write then fails the parity test.
POISON_OUTPUTS = False


def new_output(like: Tensor, *shape: int) -> Tensor:
    """Uninitialised output buffer ``shape`` with ``like``'s dtype and device (NaN-filled
    when :data:`POISON_OUTPUTS` is set)."""
    out = torch.empty(shape, dtype=like.dtype, device=like.device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out
