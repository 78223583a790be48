"""Fast CPU blur. PLACEHOLDER: delegates to the reference until the CPU path lands."""

from __future__ import annotations

from torch import Tensor

from kernels.reference import blur3d_ref, blur_occupancy_ref


def blur3d_cpu(volume: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """CPU path of :func:`kernels.blur3d`."""
    return blur3d_ref(volume, sigma, kernel_size)


def blur_occupancy_cpu(
    volume: Tensor, sigma: float, kernel_size: int, scale: Tensor | None = None
) -> Tensor:
    """CPU path of :func:`kernels.blur_occupancy`."""
    return blur_occupancy_ref(volume, sigma, kernel_size, scale)
