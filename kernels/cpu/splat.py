"""Fast CPU splat. PLACEHOLDER: delegates to the reference until the CPU path lands."""

from __future__ import annotations

from torch import Tensor

from kernels.reference import splat_points_ref


def splat_points_cpu(
    points: Tensor,  # [B, N, 3]
    size: tuple[int, int, int],
    features: Tensor | None = None,  # [B, N, C]
) -> tuple[Tensor, Tensor | None]:
    """CPU path of :func:`kernels.splat_points`."""
    return splat_points_ref(points, size, features)
