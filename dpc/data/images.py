"""Image preparation: dataset arrays -> network inputs and renderer-sized masks.

Every path that feeds the network (training batches, validation, prediction, previews)
uses :func:`prepare_images`, so images are converted and resized the same way everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpc.camera import resize_masks


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    if isinstance(x, Tensor):
        return x
    a = np.ascontiguousarray(x)
    # dataset arrays are often read-only memmaps, which torch must not share
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def prepare_images(images: np.ndarray | Tensor, image_size: int) -> Tensor:
    """uint8 ``[B, H, W, C]`` (or ``[B, H, W]``, one channel) -> float ``[B, C, S, S]`` in
    [0, 1] with ``S = image_size`` (antialiased bilinear resize when ``H, W != S``)."""
    img = _as_tensor(images)
    if img.dtype != torch.uint8 or img.ndim not in (3, 4):
        raise ValueError(
            f"images must be uint8 [B, H, W, C] or [B, H, W], got {img.dtype} {tuple(img.shape)}"
        )
    if img.ndim == 3:
        img = img[..., None]
    img = img.permute(0, 3, 1, 2).float().div_(255.0)
    if tuple(img.shape[-2:]) != (image_size, image_size):
        img = F.interpolate(
            img, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return img


def prepare_masks(masks: np.ndarray | Tensor, size: int) -> Tensor:
    """uint8 ``[B, H, W]`` -> float ``[B, size, size]`` in [0, 1], resized to the renderer's
    grid like the training targets (:func:`dpc.camera.resize_masks`)."""
    m = _as_tensor(masks)
    if m.dtype != torch.uint8 or m.ndim != 3:
        raise ValueError(f"masks must be uint8 [B, H, W], got {m.dtype} {tuple(m.shape)}")
    return resize_masks(m.float().div_(255.0), size)
