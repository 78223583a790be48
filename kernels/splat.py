"""Trilinear point splatting: points -> occupancy (and feature) volumes.

Public entry point :func:`splat_points`; the Triton kernels live here too (kernels issue).
"""

from __future__ import annotations

from torch import Tensor

from kernels._utils import Backend, check_size, check_tensor, use_triton
from kernels.reference import splat_points_ref


def splat_points(
    points: Tensor,  # [B, N, 3] grid coordinates (depth, row, col) in [-0.5, 0.5]
    size: tuple[int, int, int],  # (D, H, W)
    features: Tensor | None = None,  # [B, N, C]
    backend: Backend = "auto",
) -> tuple[Tensor, Tensor | None]:
    """Splat points into a ``[B, 1, D, H, W]`` occupancy volume with trilinear weights.

    Points outside ``[-0.5, 0.5]^3`` are dropped (they add nothing). With ``features``
    (e.g. RGB), also returns ``[B, C, D, H, W]`` weighted feature sums, else None.
    Differentiable w.r.t. ``points`` and ``features``. See
    :func:`kernels.reference.splat_points_ref` for the exact definition.
    """
    check_tensor("points", points, ndim=3, last=3, finite=True)
    size = check_size(size)
    if features is not None:
        check_tensor("features", features, ndim=3)
        if features.shape[:2] != points.shape[:2]:
            raise ValueError(
                f"features must be [B, N, C] matching points {tuple(points.shape[:2])}, "
                f"got {tuple(features.shape)}"
            )
    if use_triton(backend, points, features):
        raise NotImplementedError("Triton splat kernel not implemented yet")
    return splat_points_ref(points, size, features)
