"""Ray-termination projection of occupancy volumes along depth (DRC), and the PTN
max-projection baseline.

Public entry points :func:`ray_project`, :func:`max_project`; Triton kernels live here
too (kernels issue).
"""

from __future__ import annotations

from torch import Tensor

from kernels._utils import Backend, check_tensor, use_triton
from kernels.reference import RayProjection, max_project_ref, ray_project_ref


def ray_project(
    occupancy: Tensor,  # [B, 1, D, H, W], values in [0, 1]
    colors: Tensor | None = None,  # [B, C, D, H, W]
    camera_distance: float = 2.0,
    max_depth: float = 10.0,
    background: float = 1.0,
    return_depth: bool = True,
    return_probs: bool = False,
    backend: Backend = "auto",
) -> RayProjection:
    """Project ``occupancy`` along D (near to far) by ray termination.

    Returns :class:`~kernels.reference.RayProjection` with silhouette ``[B, H, W]``,
    expected depth ``[B, H, W]`` (``max_depth`` where the ray escapes), expected colour
    ``[B, C, H, W]`` over ``background`` (if ``colors``), and the per-cell termination
    probabilities ``[B, D+1, H, W]`` if ``return_probs`` (last slice: the ray escapes).
    """
    check_tensor("occupancy", occupancy, ndim=5)
    if occupancy.shape[1] != 1:
        raise ValueError(f"occupancy must be [B, 1, D, H, W], got {tuple(occupancy.shape)}")
    if colors is not None:
        check_tensor("colors", colors, ndim=5)
        if colors.shape[0] != occupancy.shape[0] or colors.shape[2:] != occupancy.shape[2:]:
            raise ValueError(
                f"colors must be [B, C, D, H, W] matching occupancy {tuple(occupancy.shape)}, "
                f"got {tuple(colors.shape)}"
            )
    if use_triton(backend, occupancy, colors):
        raise NotImplementedError("Triton projection kernel not implemented yet")
    return ray_project_ref(
        occupancy, colors, camera_distance, max_depth, background, return_depth, return_probs
    )


def max_project(occupancy: Tensor) -> Tensor:
    """PTN baseline: silhouette ``[B, H, W]`` = max over depth of ``[B, 1, D, H, W]``."""
    check_tensor("occupancy", occupancy, ndim=5)
    return max_project_ref(occupancy)
