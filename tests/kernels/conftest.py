"""Shared fixtures for the Triton kernel parity tests.

Without CUDA the kernels run on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before ``kernels`` is imported):
slow per program, so the shapes here are small; ``cuda``-marked tests repeat the
checks at full size on a GPU.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

import kernels._utils as kutils

# A fixed folder so the one-off KeOps compile (~15 s on CPU) of the Chamfer tests is
# reused across runs; wandb stays offline in every test.
os.environ.setdefault("KEOPS_CACHE_FOLDER", os.path.join(tempfile.gettempdir(), "dpc-keops-cache"))
os.environ.setdefault("WANDB_MODE", "disabled")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    # Without triton (it is a dependency on Linux, so only on other platforms) the
    # kernel tests cannot run at all: skip them with the reason. With triton but no
    # CUDA, tests/conftest.py has switched the interpreter on before `kernels` was
    # imported; if something imported `kernels` even earlier, the tests fail loudly
    # (select_backend raises "needs CUDA tensors"), which is what we want.
    if HAS_CUDA or kutils.has_triton():
        return
    skip = pytest.mark.skip(reason="triton is not installed")
    for item in items:
        if "tests/kernels" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _kernel_env(monkeypatch):
    """Every kernel test: NaN-poisoned output buffers and at most 2 CPU threads."""
    monkeypatch.setattr(kutils, "POISON_OUTPUTS", True)
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def gen(request):
    """A fresh seed per run (printed on failure via the test id's log), reproducible
    with ``KERNEL_TEST_SEED``."""
    seed = int(os.environ.get("KERNEL_TEST_SEED", torch.randint(0, 2**31 - 1, ()).item()))
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def gpu_blocks(monkeypatch):
    """Use the GPU block sizes even under the interpreter, so a test covers launches
    with many programs and partial tiles (the interpreter normally uses one big block)."""
    import kernels.blur
    import kernels.fused
    import kernels.project
    import kernels.splat

    def small(gpu_block: int, extent: int, interpret_cap: int = 0) -> int:
        return min(kutils.next_pow2(extent), gpu_block)

    for mod in (kernels.blur, kernels.fused, kernels.project, kernels.splat):
        monkeypatch.setattr(mod, "launch_block", small)
