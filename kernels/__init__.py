"""Renderer ops and the Chamfer distance: the public functional API.

Each op validates its inputs once (shapes, dtypes; no host synchronisation) and
dispatches to a Triton kernel (CUDA tensors, Triton installed), the fast CPU path
(:mod:`kernels.cpu`) or the pure-PyTorch reference (:mod:`kernels.reference`, one
``<op>_ref`` per public op: the test oracle). Importing this package needs neither a GPU
nor Triton.
"""

from kernels._utils import has_triton
from kernels.blur import blur3d, blur_occupancy
from kernels.chamfer import ChamferResult, chamfer_distance
from kernels.fused import blur_ray_project
from kernels.project import max_project, ray_project
from kernels.reference import RayProjection
from kernels.splat import splat_points

__all__ = [
    "ChamferResult",
    "RayProjection",
    "blur3d",
    "blur_occupancy",
    "blur_ray_project",
    "chamfer_distance",
    "has_triton",
    "max_project",
    "ray_project",
    "splat_points",
]
