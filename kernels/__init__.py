"""Renderer ops: public functional API.

Each op validates its inputs and dispatches to a Triton kernel (CUDA tensors, Triton
installed) or to the pure-PyTorch reference in :mod:`kernels.reference`. Importing this
package needs neither a GPU nor Triton.
"""

from kernels._utils import has_triton
from kernels.blur import blur3d, blur_occupancy
from kernels.project import max_project, ray_project
from kernels.reference import RayProjection
from kernels.splat import splat_points

__all__ = [
    "blur3d",
    "blur_occupancy",
    "has_triton",
    "max_project",
    "ray_project",
    "RayProjection",
    "splat_points",
]
from kernels.chamfer import chamfer_distance, chamfer_ref  # noqa: E402

__all__ += ["chamfer_distance", "chamfer_ref"]
