"""Fast CPU projection. PLACEHOLDER: delegates to the reference until the CPU path lands."""

from __future__ import annotations

from torch import Tensor

from kernels.reference import RayProjection, ray_project_ref


def ray_project_cpu(
    occupancy: Tensor,  # [B, 1, D, H, W]
    colors: Tensor | None = None,  # [B, C, D, H, W]
    camera_distance: float = 2.0,
    max_depth: float = 10.0,
    background: float = 1.0,
    return_depth: bool = True,
    return_probs: bool = False,
) -> RayProjection:
    """CPU path of :func:`kernels.ray_project`."""
    return ray_project_ref(
        occupancy, colors, camera_distance, max_depth, background, return_depth, return_probs
    )
