"""Pure-PyTorch reference of every renderer op: the CPU path and the test oracle.

Dimension letters: B batch, N points, C channels, D depth cells, H rows, W columns.
Volumes are ``[B, C, D, H, W]``; D runs from near to far along the viewing ray, H from
the top image row down, W from left to right (see :mod:`dpc.camera`).

Grid coordinates of points are ``(depth, row, col)`` in ``[-0.5, 0.5]``; a coordinate c
maps to grid units ``u = (c + 0.5) * (S - 1)`` for an axis of S cells, so cell k is
centred at ``k / (S - 1) - 0.5``. The original TF code (``pointcloud2voxels3d_fast``,
``smoothen_voxels3d``, ``drc_projection``) uses the same mapping with axes (z, y, x).

No input validation here: the public functions in ``kernels/`` validate and dispatch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def splat_points_ref(
    points: Tensor,  # [B, N, 3] grid coordinates (depth, row, col)
    size: tuple[int, int, int],  # (D, H, W)
    features: Tensor | None = None,  # [B, N, C]
) -> tuple[Tensor, Tensor | None]:
    """Reference of :func:`kernels.splat_points` (TF ``pointcloud2voxels3d_fast``).

    Every point inside ``[-0.5, 0.5]^3`` adds unit mass to its 8 surrounding cells with
    trilinear weights ``prod_i (1 - r_i or r_i)``, ``r = u - floor(u)``. Points with any
    coordinate outside (or non-finite) are dropped whole; a corner beyond the last cell
    (only reached with weight 0, by points exactly on the far face) is skipped.

    Returns:
        occupancy ``[B, 1, D, H, W]`` and, if ``features`` is given, the weighted feature
        sums ``[B, C, D, H, W]`` (feature ``f`` of a point adds ``weight * f``), else None.
    """
    B, N, _ = points.shape
    D, H, W = size
    dims = points.new_tensor([D - 1, H - 1, W - 1])
    inside = ((points >= -0.5) & (points <= 0.5)).all(-1)  # [B, N]; False for NaN
    # Zero the dropped points first so their (masked) arithmetic stays finite.
    u = (torch.where(inside[..., None], points, torch.zeros_like(points)) + 0.5) * dims
    base = u.detach().floor()
    r = u - base  # [B, N, 3], gradient flows through r only
    base = base.long()
    rr = (1.0 - r, r)
    flat_occ = points.new_zeros(B * D * H * W)
    C = 0 if features is None else features.shape[-1]
    flat_feat = points.new_zeros(B * D * H * W, C) if features is not None else None
    boff = (torch.arange(B, device=points.device) * (D * H * W))[:, None]
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                # Multiply the three factors explicitly: .prod(-1) has a slow backward.
                w = rr[a][..., 0] * rr[b][..., 1] * rr[c][..., 2]  # [B, N]
                i, j, k = base[..., 0] + a, base[..., 1] + b, base[..., 2] + c
                ok = inside & (i < D) & (j < H) & (k < W)
                w = w * ok
                idx = boff + (i.clamp(max=D - 1) * H + j.clamp(max=H - 1)) * W + k.clamp(max=W - 1)
                flat_occ = flat_occ.index_add(0, idx.reshape(-1), w.reshape(-1))
                if features is not None:
                    flat_feat = flat_feat.index_add(
                        0, idx.reshape(-1), (w[..., None] * features).reshape(-1, C)
                    )
    occ = flat_occ.view(B, 1, D, H, W)
    feat = None
    if features is not None:
        feat = flat_feat.view(B, D, H, W, C).permute(0, 4, 1, 2, 3)
    return occ, feat


def gaussian_kernel1d(sigma: float | Tensor, kernel_size: int, dtype=None, device=None) -> Tensor:
    """Normalised 1-D Gaussian ``[K]``: ``exp(-i^2 / (2 sigma^2))``, i = -(K-1)/2..(K-1)/2."""
    r = (kernel_size - 1) // 2
    i = torch.arange(-r, r + 1, dtype=dtype or torch.float32, device=device)
    sigma = torch.as_tensor(sigma, dtype=i.dtype, device=device)
    k = torch.exp(-(i * i) / (2.0 * sigma * sigma))
    return k / k.sum()


def _banded(kernel: Tensor, n: int) -> Tensor:
    """Symmetric banded matrix ``[n, n]`` with ``M[i, j] = kernel[j - i + r]``: 1-D
    convolution with zero padding as a matmul (5-6x faster than conv3d on CPU,
    ../shared/CPU-PERF.md)."""
    r = (kernel.numel() - 1) // 2
    idx = torch.arange(n, device=kernel.device)
    off = idx[None, :] - idx[:, None] + r  # [n, n]
    valid = (off >= 0) & (off <= 2 * r)
    return torch.where(valid, kernel[off.clamp(0, 2 * r)], kernel.new_zeros(()))


def blur3d_ref(volume: Tensor, sigma: float | Tensor, kernel_size: int) -> Tensor:
    """Reference of :func:`kernels.blur3d` (TF ``smoothen_voxels3d``).

    Separable Gaussian blur of ``volume`` ``[B, C, D, H, W]`` along D, H and W with the same
    normalised K-tap kernel (``sigma`` in cells), zero padding, same-size output. D may
    differ from H and W. Differentiable w.r.t. ``volume`` (not sigma).
    """
    B, C, D, H, W = volume.shape
    k = gaussian_kernel1d(sigma, kernel_size, dtype=volume.dtype, device=volume.device)
    x = volume @ _banded(k, W)  # along W (M is symmetric, so M^T = M)
    x = _banded(k, H) @ x  # along H
    x = (_banded(k, D) @ x.reshape(B * C, D, H * W)).reshape(B, C, D, H, W)  # along D
    return x


def blur_occupancy_ref(
    volume: Tensor, sigma: float | Tensor, kernel_size: int, scale: Tensor | None = None
) -> Tensor:
    """Reference of :func:`kernels.blur_occupancy` (the renderer's smoothing step, TF
    ``pointcloud_project_fast``): ``clamp(scale * blur3d(clamp(volume, 0, 1)), 0, 1)``
    for ``volume`` ``[B, C, D, H, W]`` and ``scale`` ``[B]`` (None = 1)."""
    occ = blur3d_ref(volume.clamp(0.0, 1.0), sigma, kernel_size)
    if scale is not None:
        occ = occ * scale.to(occ.dtype).view(-1, 1, 1, 1, 1)
    return occ.clamp(0.0, 1.0)


class RayProjection(NamedTuple):
    """Outputs of the ray-termination projection."""

    silhouette: Tensor  # [B, H, W]
    depth: Tensor | None  # [B, H, W]
    color: Tensor | None  # [B, C, H, W]
    probs: Tensor | None  # [B, D+1, H, W]; last slice: the ray escapes


def depth_values(D: int, camera_distance: float, max_depth: float, dtype, device) -> Tensor:
    """Depth of each cell ``[D+1]``: ``d + k/D - 0.5`` (TF ``drc_depth_grid``), then
    ``max_depth`` for rays that escape."""
    k = torch.arange(D, dtype=dtype, device=device)
    return torch.cat(
        (k / D - 0.5 + camera_distance, torch.tensor([max_depth], dtype=dtype, device=device))
    )


def ray_project_ref(
    occupancy: Tensor,  # [B, 1, D, H, W] in [0, 1]
    colors: Tensor | None = None,  # [B, C, D, H, W]
    camera_distance: float = 2.0,
    max_depth: float = 10.0,
    background: float = 1.0,
    return_depth: bool = True,
    return_probs: bool = False,
    logsum_clip: float | None = None,
) -> RayProjection:
    """Reference of :func:`kernels.ray_project` (TF ``drc_projection`` / ``drc_depth``).

    Ray termination along D (near to far): ``p_k = o_k prod_{j<k} (1 - o_j)`` and
    ``p_{D+1} = prod_j (1 - o_j)``. Silhouette ``1 - p_{D+1}``; depth
    ``sum_k p_k d_k + p_{D+1} max_depth``; colour ``sum_k p_k c_k + p_{D+1} background``.

    The products are an exclusive ``cumprod`` of ``1 - o``: exact for o in [0, 1] (no
    log-space clipping), and torch's cumprod backward stays finite where ``1 - o == 0``.

    ``logsum_clip=c`` (the original's ``drc_logsum: true``, ``drc_logsum_clip_val: c``):
    :func:`ray_termination_logsum` instead, and the silhouette is the sum of the D
    termination probabilities (the original's ``drc_projection``), not ``1 - p_{D+1}``.
    """
    if logsum_clip is not None:
        return _ray_project_logsum(
            occupancy,
            colors,
            camera_distance,
            max_depth,
            background,
            return_depth,
            return_probs,
            logsum_clip,
        )
    o = occupancy[:, 0]  # [B, D, H, W]
    B, D, H, W = o.shape
    trans = torch.cumprod(1.0 - o, dim=1)  # prod_{j<=k} (1 - o_j)
    escape = trans[:, -1]  # [B, H, W]
    before = torch.cat((torch.ones_like(o[:, :1]), trans[:, :-1]), dim=1)  # prod_{j<k}
    p = o * before  # [B, D, H, W]
    silhouette = 1.0 - escape
    depth = None
    if return_depth:
        dv = depth_values(D, camera_distance, max_depth, o.dtype, o.device)
        depth = (p * dv[:D, None, None]).sum(1) + escape * max_depth
    color = None
    if colors is not None:
        color = (p[:, None] * colors).sum(2) + escape[:, None] * background
    probs = torch.cat((p, escape[:, None]), dim=1) if return_probs else None
    return RayProjection(silhouette, depth, color, probs)


def ray_termination_logsum(occupancy: Tensor, clip_val: float) -> Tensor:
    """The original's ray-termination probabilities in log space (``drc_logsum``,
    ``drc_event_probabilities_impl`` in its ``util/drc.py``): ``occupancy [B, D, H, W]``
    -> ``p [B, D+1, H, W]`` (last slice: the ray escapes).

    ``o`` is clipped to ``[c, 1 - c]`` (no gradient outside, as ``tf.clip_by_value``), then
    ``log p_k = log o_k + sum_{j<k} log(1 - o_j)`` and ``log p_{D+1} = sum_j log(1 - o_j)``
    via a cumsum. The original pads both sequences with ``c`` as its "log-space unity"
    (where 0 would be the exact one), so ``p_1`` and ``p_{D+1}`` carry a factor ``exp(c)``:
    kept, to match it. With no ``o`` near 0 or 1 this equals the exact products up to
    that factor; an empty ray terminates with ``1 - (1 - c)^D`` instead of 0.
    """
    o = occupancy.clamp(clip_val, 1.0 - clip_val)
    log_o, log_1m = torch.log(o), torch.log1p(-o)
    unity = torch.full_like(o[:, :1], clip_val)  # the original's "log_unity"
    before = torch.cat((unity, torch.cumsum(log_1m, dim=1)), dim=1)  # [B, D+1]
    return torch.exp(before + torch.cat((log_o, unity), dim=1))


def _ray_project_logsum(
    occupancy,
    colors,
    camera_distance,
    max_depth,
    background,
    return_depth,
    return_probs,
    clip_val,
) -> RayProjection:
    """:func:`ray_project_ref` with :func:`ray_termination_logsum` (see there)."""
    o = occupancy[:, 0]  # [B, D, H, W]
    D = o.shape[1]
    probs = ray_termination_logsum(o, clip_val)  # [B, D+1, H, W]
    p, escape = probs[:, :D], probs[:, D]
    silhouette = p.sum(1)  # the original: sum of p_k * [1, ..., 1, 0]
    depth = None
    if return_depth:
        dv = depth_values(D, camera_distance, max_depth, o.dtype, o.device)
        depth = (probs * dv[:, None, None]).sum(1)
    color = None
    if colors is not None:
        color = (p[:, None] * colors).sum(2) + escape[:, None] * background
    return RayProjection(silhouette, depth, color, probs if return_probs else None)


def blur_ray_project_ref(
    volume: Tensor,  # [B, 1, D, H, W] raw splatted occupancy
    sigma: float | Tensor,
    kernel_size: int,
    scale: Tensor | None = None,  # [B]
    camera_distance: float = 2.0,
    max_depth: float = 10.0,
    return_depth: bool = True,
) -> RayProjection:
    """Reference of :func:`kernels.blur_ray_project` (the renderer's training path fused):
    :func:`ray_project_ref` of :func:`blur_occupancy_ref`, silhouette and depth only."""
    occ = blur_occupancy_ref(volume, sigma, kernel_size, scale)
    out = ray_project_ref(occ, None, camera_distance, max_depth, 1.0, return_depth, False)
    return RayProjection(out.silhouette, out.depth, None, None)


def max_project_ref(occupancy: Tensor) -> Tensor:
    """PTN-style baseline: silhouette ``[B, H, W]`` = max of ``occupancy`` over depth."""
    return occupancy[:, 0].amax(dim=1)


def chamfer_distance_ref(
    x: Tensor,  # [B, N, 3]
    y: Tensor,  # [B, M, 3]
    squared: bool = False,
    chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Reference of :func:`kernels.chamfer_distance`: chunked ``torch.cdist`` + ``min``.

    Autograd flows through ``cdist``/``min`` directly (no index gathering), which makes
    it an independent oracle for the gradients too. Memory ``B x chunk x M`` per step.

    Returns:
        ``(x_to_y [B, N], y_to_x [B, M])`` Euclidean (or squared) distances.
    """

    def one_way(a: Tensor, b: Tensor) -> Tensor:
        parts = []
        for s in range(0, a.shape[1], chunk):
            if squared:
                d = (a[:, s : s + chunk, None, :] - b[:, None, :, :]).pow(2).sum(-1)
            else:
                d = torch.cdist(a[:, s : s + chunk], b, compute_mode="donot_use_mm_for_euclid_dist")
            parts.append(d.min(-1).values)
        return torch.cat(parts, dim=1)

    return one_way(x, y), one_way(y, x)
