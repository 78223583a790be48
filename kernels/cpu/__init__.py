"""Fast CPU path of the renderer ops (``backend="cpu"``, the default for CPU tensors).

One module per op, mirroring the Triton modules one level up: numba kernels (compiled
on first use, cached on disk, see :mod:`kernels.cpu._jit`) behind autograd Functions
with hand-written backwards, plus :func:`rotate_project_cpu` used by
:func:`dpc.camera.world_to_grid`. The simple reference in :mod:`kernels.reference` stays
the oracle these are tested against (tests/kernels/test_cpu_ops.py); numbers in
profiling/RESULTS.md, section CPU.
"""

import os

# Transparent huge pages for torch's large CPU tensors (torch reads this once, at its
# first CPU allocation, so it must be set early; importing `kernels` is early enough for
# dpc's commands). On this project's VMs a fresh 16 MB tensor costs ~20 ms of 4 KB page
# faults and a 134 MB one ~230 ms; with 2 MB pages ~3 ms and ~27 ms. Every renderer op
# allocates volumes of that size each step, on any backend. Opt out by setting
# THP_MEM_ALLOC_ENABLE=0 in the environment.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from kernels.cpu.blur import blur3d_cpu, blur_occupancy_cpu
from kernels.cpu.nearest import nearest_index_cpu
from kernels.cpu.project import ray_project_cpu
from kernels.cpu.splat import splat_points_cpu
from kernels.cpu.transform import rotate_project_cpu

__all__ = [
    "blur3d_cpu",
    "blur_occupancy_cpu",
    "nearest_index_cpu",
    "ray_project_cpu",
    "rotate_project_cpu",
    "splat_points_cpu",
]
