"""Separable 3-D Gaussian blur of volumes.

Public entry point :func:`blur3d`; the Triton kernels live here too (kernels issue).
"""

from __future__ import annotations

from torch import Tensor

from kernels._utils import Backend, check_kernel, check_tensor, use_triton
from kernels.reference import blur3d_ref


def blur3d(
    volume: Tensor,  # [B, C, D, H, W]
    sigma: float,
    kernel_size: int,
    backend: Backend = "auto",
) -> Tensor:
    """Blur ``volume`` along D, H and W with a normalised ``kernel_size``-tap Gaussian of
    standard deviation ``sigma`` cells, zero padding; returns ``[B, C, D, H, W]``."""
    check_tensor("volume", volume, ndim=5)
    check_kernel(sigma, kernel_size)
    if use_triton(backend, volume):
        raise NotImplementedError("Triton blur kernel not implemented yet")
    return blur3d_ref(volume, float(sigma), kernel_size)
