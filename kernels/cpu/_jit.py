"""Numba plumbing for the CPU path: compile-with-cache, the batch thread split, dtypes.

The kernels are plain (non-``parallel``) numba functions compiled with ``nogil=True``;
:func:`run_batches` splits the batch into ``torch.get_num_threads()`` contiguous chunks
and runs them on a small pool of Python threads (the GIL is released inside the
kernels). So the CPU path uses exactly the thread count torch is configured with, and
no second OpenMP runtime spins next to torch's.

Without numba (it is a dependency, so only on a broken install) :data:`HAVE_NUMBA` is
False and the ops in :mod:`kernels.cpu` fall back to the reference.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:
    import numba

    HAVE_NUMBA = True
except Exception:  # ImportError, or a numba that does not match the installed numpy
    numba = None
    HAVE_NUMBA = False


def _cache_ok() -> bool:
    """True when numba can write its on-disk cache next to this module (``__pycache__``)
    or in ``NUMBA_CACHE_DIR``: then compiled kernels are reused across processes and the
    JIT costs seconds only once per machine."""
    if os.environ.get("NUMBA_DISABLE_CACHE") == "1":
        return False
    target = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.path.dirname(__file__), "__pycache__"
    )
    try:
        os.makedirs(target, exist_ok=True)
    except OSError:
        return False
    return os.access(target, os.W_OK)


_CACHE = _cache_ok()


def njit(fn: Callable) -> Callable:
    """``numba.njit(nogil=True)``, with the on-disk cache when it is writable (a read-only
    install compiles in memory instead of failing)."""
    if not HAVE_NUMBA:
        return fn
    try:
        return numba.njit(nogil=True, cache=_CACHE)(fn)
    except Exception:  # e.g. "no locator available": no cache directory usable
        return numba.njit(nogil=True, cache=False)(fn)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool(n: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="dpc-cpu")
        return _pool


def run_batches(fn: Callable, n: int, *arrays: np.ndarray, extra: tuple = ()) -> None:
    """Call ``fn(*[a[s:e] for a in arrays], *extra)`` over ``[0, n)`` split into
    ``min(torch.get_num_threads(), n)`` contiguous chunks of the leading (batch) axis.

    Arrays whose leading size is not ``n`` (dummies for absent inputs) are passed whole.
    Chunks write disjoint slices, so no locking is needed.
    """
    t = max(1, min(torch.get_num_threads(), n))

    def part(s: int, e: int):
        return [a[s:e] if a.shape[0] == n else a for a in arrays]

    if t == 1:
        fn(*part(0, n), *extra)
        return
    bounds = np.linspace(0, n, t + 1).round().astype(int)
    pool = _get_pool(t - 1)
    futs = [pool.submit(fn, *part(bounds[i], bounds[i + 1]), *extra) for i in range(1, t)]
    fn(*part(bounds[0], bounds[1]), *extra)  # the calling thread takes the first chunk
    for f in futs:
        f.result()


def np_(t: torch.Tensor) -> np.ndarray:
    """Zero-copy numpy view of a CPU tensor (contiguous copy first if needed)."""
    return t.detach().contiguous().numpy()


def scalar(t: torch.Tensor, value: float):
    """``value`` as a numpy scalar of ``t``'s dtype: numba then keeps float32 arithmetic
    in float32 (a Python float would promote it to float64)."""
    return np.float32(value) if t.dtype == torch.float32 else np.float64(value)
