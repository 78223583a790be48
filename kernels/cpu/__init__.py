"""Fast CPU path of the renderer ops (``backend="cpu"``, the default for CPU tensors).

One module per op, mirroring the Triton modules one level up. The simple reference in
:mod:`kernels.reference` stays the oracle these are tested against.
"""

from kernels.cpu.blur import blur3d_cpu, blur_occupancy_cpu
from kernels.cpu.project import ray_project_cpu
from kernels.cpu.splat import splat_points_cpu

__all__ = ["blur3d_cpu", "blur_occupancy_cpu", "ray_project_cpu", "splat_points_cpu"]
