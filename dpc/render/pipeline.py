"""The differentiable point-cloud renderer (docs/METHOD.md, section 3).

transform -> splat -> clip -> blur -> occupancy scale -> clip -> projection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

import kernels
from dpc.camera import CAMERA_DISTANCE, FOCAL_LENGTH, world_to_grid

# The renderer's defaults: the config group's file, the one place they are written (the
# fields below and the settings of older runs' saved configs that lack a newer key).
DEFAULTS = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs/render/default.yaml")
# RenderSettings field -> its key in the config's render group
CONFIG_KEYS = {
    "vox_size": "vox_size",
    "kernel_size": "pc_gauss_kernel_size",
    "projection": "projection",
    "backend": "backend",
    "kernel_variant": "kernel_variant",
    "drc_logsum": "drc_logsum",
    "drc_logsum_clip_val": "drc_logsum_clip_val",
    "pc_rgb_clip_after_conv": "pc_rgb_clip_after_conv",
    "normalize_colors": "pc_rgb_divide_by_occupancies",
    "pc_rgb_divide_by_occupancies_epsilon": "pc_rgb_divide_by_occupancies_epsilon",
    "pc_rgb_divide_by_raw_occupancies": "pc_rgb_divide_by_raw_occupancies",
}
_D = {field: DEFAULTS[key] for field, key in CONFIG_KEYS.items()}


def render_group(cfg):
    """A config's ``render`` group (the full config or the group itself) over
    :data:`DEFAULTS`: every key present, also for older runs' saved configs."""
    r = cfg.render if "render" in cfg else cfg
    return OmegaConf.merge(DEFAULTS, r)


@dataclass
class RenderSettings:
    """Renderer configuration (original DPC key names in brackets; defaults:
    configs/render/default.yaml)."""

    vox_size: int = _D["vox_size"]  # grid / image size G [vox_size]
    vox_size_z: int | None = None  # depth cells, None = vox_size [vox_size_z]
    kernel_size: int = _D["kernel_size"]  # blur taps, odd [pc_gauss_kernel_size]
    camera_distance: float = CAMERA_DISTANCE  # [camera_distance]
    focal_length: float = FOCAL_LENGTH  # relative to image width [focal_length]
    max_depth: float = 10.0  # depth of escaping rays [max_depth]
    background: float = 1.0  # colour of escaping rays (white)
    projection: Literal["drc", "max"] = _D["projection"]  # ray termination, or PTN max
    # divide the colour volume by the smoothed occupancy [pc_rgb_divide_by_occupancies]
    normalize_colors: bool = _D["normalize_colors"]
    backend: Literal["auto", "reference", "triton", "cpu"] = _D["backend"]
    # Triton kernels for smoothing + projection: "passes" (blur passes, then the
    # projection) or "fused" (kernels/fused.py: about half the memory traffic; training
    # path only). The default moves to the faster one once a GPU has timed both.
    kernel_variant: Literal["passes", "fused"] = _D["kernel_variant"]
    # Fidelity switches (docs/training.md, "Fidelity switches"): dpc's behaviour by
    # default. drc_logsum skips the fused kernel (no clip between its blur and projection).
    drc_logsum: bool = _D["drc_logsum"]  # ray termination in log space, o clipped
    drc_logsum_clip_val: float = _D["drc_logsum_clip_val"]  # that clip c: o in [c, 1 - c]
    # colour sums clipped to [0, 1]: None never (dpc), False before the blur (original),
    # True after the division [pc_rgb_clip_after_conv]
    pc_rgb_clip_after_conv: bool | None = _D["pc_rgb_clip_after_conv"]
    # epsilon of the colour division (original 0.01) [pc_rgb_divide_by_occupancies_epsilon]
    pc_rgb_divide_by_occupancies_epsilon: float = _D["pc_rgb_divide_by_occupancies_epsilon"]
    # divide by the blurred *raw* occupancy (unclipped, unscaled, no gradient) as the
    # original does, instead of the blurred clipped one (dpc)
    pc_rgb_divide_by_raw_occupancies: bool = _D["pc_rgb_divide_by_raw_occupancies"]

    def __post_init__(self):
        if not 0.0 < float(self.drc_logsum_clip_val) < 0.5:
            raise ValueError(
                f"render.drc_logsum_clip_val must be in (0, 0.5), got {self.drc_logsum_clip_val}"
            )
        if self.pc_rgb_clip_after_conv not in (None, True, False):
            raise ValueError(
                "render.pc_rgb_clip_after_conv must be null (never clip), false (before the "
                f"blur) or true (after the division), got {self.pc_rgb_clip_after_conv!r}"
            )
        if not float(self.pc_rgb_divide_by_occupancies_epsilon) > 0.0:
            raise ValueError(
                "render.pc_rgb_divide_by_occupancies_epsilon must be > 0, "
                f"got {self.pc_rgb_divide_by_occupancies_epsilon}"
            )

    @property
    def size(self) -> tuple[int, int, int]:
        return (self.vox_size_z or self.vox_size, self.vox_size, self.vox_size)

    @classmethod
    def from_cfg(cls, cfg) -> RenderSettings:
        """The settings of a training config's ``render`` group (the full config or the
        group itself); keys an older run's config lacks get :data:`DEFAULTS`."""
        r = render_group(cfg)
        return cls(**{field: r[key] for field, key in CONFIG_KEYS.items()})


def build_renderer(cfg) -> PointCloudRenderer:
    """The renderer of a training config (see :meth:`RenderSettings.from_cfg`): the one
    place training, validation, evaluation and previews build it from a config."""
    return PointCloudRenderer(RenderSettings.from_cfg(cfg))


def final_sigma(cfg) -> float:
    """The blur std (cells) at the end of training, ``render.pc_relative_sigma_end``: what
    validation, evaluation and pictures render trained clouds with."""
    r = render_group(cfg)
    return float(r.pc_relative_sigma_end if r.pc_relative_sigma_end is not None
                 else DEFAULTS.pc_relative_sigma_end)  # fmt: skip


class RenderOutput(NamedTuple):
    silhouette: Tensor  # [B, G, G]
    depth: Tensor | None  # [B, G, G]
    color: Tensor | None  # [B, C, G, G]
    voxels: Tensor | None  # [B, 1, D, G, G] occupancy after scale + clip
    probs: Tensor | None  # [B, D+1, G, G]


def kept_count(keep: float, num_points: int, per_view: bool = False) -> int:
    """How many of ``num_points`` point dropout keeps at keep fraction ``keep`` (at least
    1): dpc's ``ceil(keep * N)``, or with ``per_view`` the original's ``floor(keep * N)``
    (it casts to int; a tolerance keeps 0.29 * 100 = 28.999999999999996 at 29). dpc's
    ceil has no such tolerance (0.07 * 100 keeps 8): changing it would change trained
    runs."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep}")
    if per_view:
        return max(1, int(np.floor(keep * num_points + 1e-9)))
    return max(1, int(np.ceil(keep * num_points)))


def dropout_indices(
    keep: float,
    num_points: int,
    rows: tuple[int, ...],
    generator: torch.Generator | None = None,
    per_view: bool = False,
) -> Tensor | None:
    """Point dropout, the one implementation: per row of ``rows`` (e.g. ``(B,)`` or
    ``(B, V)``) the indices ``[*rows, n_keep]`` of a random subset of the points
    (:func:`kept_count`; uniform scores drawn on the CPU from ``generator``, so every
    device draws the same subset); None when all are kept."""
    n_keep = kept_count(keep, num_points, per_view)
    if n_keep >= num_points:
        return None
    scores = torch.rand(*rows, num_points, generator=generator)
    return scores.argsort(dim=-1)[..., :n_keep]


def _check_inputs(points: Tensor, quat: Tensor, scale: Tensor | None, colors: Tensor | None):
    """Clear errors for inputs of the wrong shape or dtype (shapes only, no values)."""
    B = points.shape[0] if isinstance(points, Tensor) else -1
    want = {"points": (points, (B, None, 3)), "quat": (quat, (B, 4))}
    if scale is not None:
        want["scale"] = (scale, (B,))
    if colors is not None:
        want["colors"] = (colors, (B, points.shape[1], None))
    for name, (x, shape) in want.items():
        ok = isinstance(x, Tensor) and x.is_floating_point() and x.dim() == len(shape)
        if not ok or any(n is not None and n != m for n, m in zip(shape, x.shape)):
            text = ", ".join("?" if n is None else str(n) for n in shape)
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a floating tensor [{text}], got {got}")


def _check_blur(sigma: float, kernel_size: int) -> None:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int):
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
    if not math.isfinite(float(sigma)) or float(sigma) <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


class PointCloudRenderer(nn.Module):
    """Renders point clouds seen by cameras into silhouettes (and depth, colour)."""

    def __init__(self, settings: RenderSettings | None = None, **overrides):
        super().__init__()
        self.settings = settings or RenderSettings(**overrides)
        _check_blur(1.0, self.settings.kernel_size)

    def forward(
        self,
        points: Tensor,  # [B, N, 3] object frame, in [-0.5, 0.5]^3
        quat: Tensor,  # [B, 4] camera quaternions (normalised here)
        sigma: float,  # blur std in cells (annealed by the trainer)
        scale: Tensor | None = None,  # [B] occupancy scale in (0, 1], None = 1
        colors: Tensor | None = None,  # [B, N, C] per-point features, e.g. RGB
        keep_fraction: float = 1.0,  # point dropout: fraction of points projected
        generator: torch.Generator | None = None,  # for the dropout subset
        return_depth: bool = False,
        return_voxels: bool = False,
        return_probs: bool = False,
    ) -> RenderOutput:
        s = self.settings
        # Shapes and dtypes only: a finiteness check would read values back to the host
        # (a sync per step that also blocks CUDA-graph capture). Non-finite inputs
        # surface as NaN images (`poison` below), hence a non-finite loss, which the
        # training loop checks (dpc.train).
        _check_inputs(points, quat, scale, colors)
        _check_blur(sigma, s.kernel_size)
        # 0 * inf = NaN: a view whose points or pose are not finite gets NaN images (the
        # splat would drop NaN points silently), so the training loop's non-finite-loss
        # check sees it, without a host sync here. O(N) per view.
        poison = (points.sum((1, 2)) + quat.sum(1)).detach() * 0  # [B]
        if scale is not None:  # the kernels' clamps (tl.minimum/maximum) may drop a NaN
            poison = poison + scale.detach().to(poison.dtype) * 0

        idx = dropout_indices(keep_fraction, points.shape[1], points.shape[:1], generator)
        if idx is not None:
            idx = idx.to(points.device)[..., None]
            points = torch.gather(points, 1, idx.expand(-1, -1, 3))
            if colors is not None:
                colors = torch.gather(colors, 1, idx.expand(-1, -1, colors.shape[-1]))
        grid_pts = world_to_grid(points, quat, None, s.camera_distance, s.focal_length)
        occ, feat = kernels.splat_points(grid_pts, s.size, colors, backend=s.backend)
        if (
            s.kernel_variant == "fused"
            and feat is None
            and s.projection == "drc"
            and not s.drc_logsum  # no clip between the fused kernel's blur and projection
            and not (return_voxels or return_probs)
        ):
            # The training path: smoothing + projection without the occupancy volume.
            proj = kernels.blur_ray_project(
                occ,
                sigma,
                s.kernel_size,
                scale,
                s.camera_distance,
                s.max_depth,
                return_depth=return_depth,
                backend=s.backend,
            )
            pv = poison.view(-1, 1, 1)
            depth = proj.depth + pv if proj.depth is not None else None
            return RenderOutput(proj.silhouette + pv, depth, None, None, None)
        if feat is None:
            # clip -> blur -> scale -> clip as one fused op (kernels.blur_occupancy).
            occ = kernels.blur_occupancy(occ, sigma, s.kernel_size, scale, backend=s.backend)
        else:
            occ, feat = self._smooth_with_colors(occ, feat, sigma, scale)

        if s.projection == "max":
            sil = kernels.max_project(occ)
            sil = sil + poison.view(-1, 1, 1)
            return RenderOutput(sil, None, None, occ if return_voxels else None, None)
        proj = kernels.ray_project(
            occ,
            feat,
            s.camera_distance,
            s.max_depth,
            s.background,
            return_depth=return_depth,
            return_probs=return_probs,
            backend=s.backend,
            logsum_clip=s.drc_logsum_clip_val if s.drc_logsum else None,
        )
        pv = poison.view(-1, 1, 1)
        return RenderOutput(
            proj.silhouette + pv,
            proj.depth + pv if proj.depth is not None else None,
            proj.color + pv[:, None] if proj.color is not None else None,
            occ if return_voxels else None,
            proj.probs,
        )

    def _smooth_with_colors(
        self, raw: Tensor, feat: Tensor, sigma: float, scale: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Occupancy ``[B, 1, D, H, W]`` and colour volume ``[B, C, D, H, W]`` (splatted
        sums) -> occupancy after clip/blur/scale/clip and the smoothed colours (the
        original's ``pointcloud_project_fast`` colour path, with the fidelity switches)."""
        s = self.settings
        occ = kernels.blur3d(raw.clamp(0.0, 1.0), sigma, s.kernel_size, backend=s.backend)
        if s.pc_rgb_clip_after_conv is False:  # the original: clip the sums before the blur
            feat = feat.clamp(0.0, 1.0)
        feat = kernels.blur3d(feat, sigma, s.kernel_size, backend=s.backend)
        if s.normalize_colors:
            # Dividing by the smoothed weight sum gives a weighted mean colour per cell.
            # dpc: that sum clipped (the occupancy before scaling); the original: the
            # unclipped sum, held constant.
            div = occ
            if s.pc_rgb_divide_by_raw_occupancies:
                div = kernels.blur3d(raw.detach(), sigma, s.kernel_size, backend=s.backend)
            feat = feat / (div + s.pc_rgb_divide_by_occupancies_epsilon)
        if s.pc_rgb_clip_after_conv is True:
            feat = feat.clamp(0.0, 1.0)
        if scale is not None:
            occ = occ * scale.view(-1, 1, 1, 1, 1)
        return occ.clamp(0.0, 1.0), feat
