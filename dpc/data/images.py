"""Image preparation: dataset arrays -> network inputs and renderer-sized masks.

Every path that feeds the network (training batches, validation, prediction, previews)
uses :func:`prepare_images`, so images are converted and resized the same way everywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


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
    grid like the training targets (:func:`dpc.data.images.resize_masks`)."""
    m = _as_tensor(masks)
    if m.dtype != torch.uint8 or m.ndim != 3:
        raise ValueError(f"masks must be uint8 [B, H, W], got {m.dtype} {tuple(m.shape)}")
    return resize_masks(m.float().div_(255.0), size)


def resize_masks(masks: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Resize masks ``[B, H, W]`` to the renderer's grid ``size`` (bilinear, corners aligned,
    matching the renderer's pixel-centre convention, dpc.camera.perspective_transform)."""
    if isinstance(size, int):
        size = (size, size)
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]


def mask_distance_maps(
    mask: Tensor, size: int, threshold: float = 0.5, inside: bool = False
) -> Tensor:
    """Distance from each pixel to the nearest silhouette pixel, in pixels of the output
    (``inside=True``: from each silhouette pixel to the nearest background pixel).

    ``mask [..., S, S]`` in [0, 1] -> ``[..., size, size]`` float32, 0 inside (outside with
    ``inside=True``). Computed at the mask's own resolution (so parts thinner than a cell
    of the output still count as silhouette), then resized like the masks and rescaled to
    output pixels. A view with an empty silhouette gets zeros (nothing to pull points
    towards).
    """
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    S = mask.shape[-1]
    flat = mask.detach().cpu().reshape(-1, *mask.shape[-2:]).numpy() >= threshold
    out = np.zeros(flat.shape, dtype=np.float32)
    for i, sil in enumerate(flat):
        if sil.any():
            # edt measures to the nearest zero: the background's zeros for inner distances
            out[i] = distance_transform_edt(sil if inside else ~sil)
    d = torch.from_numpy(out) * ((size - 1) / max(S - 1, 1))
    return resize_masks(d, size).view(*mask.shape[:-2], size, size)
