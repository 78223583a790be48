"""The training loss as a list of named terms (docs/training.md, "Loss terms").

Each term is one small class: its logged ``name``, the ``cfg.loss`` key of its weight, and
``__call__(ctx)`` computing its value from a :class:`StepContext`. Candidate terms
(``per_candidate = True``) return ``[b, K, M]``, one value per view and pose candidate;
their weighted sum is what winner-takes-all minimises. The others return a scalar that is
added, weighted, after the winners are known (the student loss).

Adding a term: write a subclass of :class:`LossTerm`, put its weight key in
``configs/train.yaml``'s ``loss`` group (default 0 = off), and append an instance to
:data:`TERMS`. The step (:func:`dpc.training.step.compute_step`) needs no change.

Dimension letters: b objects on this rank, K views per object, M pose candidates (flips
included), N points, G renderer grid, R = b * K * M rendered images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from dpc.camera import world_to_grid
from dpc.losses import (
    align_reference_points,
    depth_coverage,
    depth_surface_samples,
    hull_surface_loss,
    per_view_l2,
    point_repulsion,
    silhouette_distance,
    student_align_loss,
    student_loss,
    surface_depth_loss,
    surface_depth_residuals,
)
from dpc.models import ModelOutput
from dpc.render import RenderOutput


@dataclass
class StepContext:
    """What the loss terms of one training step read."""

    cfg: Any  # the composed training config
    step: int
    batch: dict[str, Tensor]  # image [b, K, 3, S, S], mask [b, K, G, G], ...
    out: ModelOutput  # the model's output (for the student pose)
    quats: Tensor  # [b, K, M, 4] the pose of every rendered image (fp32)
    points: Tensor  # [b, N, 3] every point (no dropout; fp32)
    colors: Tensor | None  # [b, N, 3] (fp32)
    camera_distance: float  # the renderer's camera
    focal_length: float
    render: RenderOutput | None = None  # [R, ...] the rendered candidates (set by the step)
    per_candidate: Tensor | None = (
        None  # [b, K, M] weighted sum of the candidate terms (set by the step)
    )
    winner: Tensor | None = None  # [b, K] winning candidate per view (after winner-takes-all)

    @property
    def masks(self) -> Tensor:
        """``[b, K, G, G]`` the target silhouettes."""
        return self.batch["mask"]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(b, K, M)``."""
        return tuple(self.quats.shape[:3])

    @property
    def silhouettes(self) -> Tensor:
        """``[b, K, M, G, G]`` rendered silhouettes."""
        G = self.render.silhouette.shape[-1]
        return self.render.silhouette.view(*self.shape, G, G)

    @cached_property
    def grid(self) -> Tensor:
        """``[R, N, 3]`` grid coordinates (depth, row, col) of *all* points (not only the
        dropout subset: every stray is pulled back, every point pulled to the surface)
        under each rendered image's pose (:func:`dpc.camera.world_to_grid`)."""
        b, K, M = self.shape
        return world_to_grid(
            self.points[:, None, None].expand(b, K, M, -1, 3).reshape(b * K * M, -1, 3),
            self.quats.reshape(-1, 4),
            camera_distance=self.camera_distance,
            focal_length=self.focal_length,
        )

    @property
    def surface_maps(self) -> tuple[Tensor | None, Tensor]:
        """``(depth, mask)`` ``[b, K, H, H]`` of the surface terms: the renderer's grid, or
        the data set's own resolution with ``loss.surface_full_res`` (finer lookups)."""
        if "depth_full" in self.batch:
            return self.batch["depth_full"], self.batch["mask_full"]
        return self.batch.get("depth"), self.masks

    def generator(self, salt: int) -> torch.Generator:
        """A CPU generator seeded by the run's seed, the step and ``salt`` (one stream per
        term that draws samples), so a step draws the same samples on every run."""
        return torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + int(self.step) + salt)

    def per_cloud(self, x: Tensor) -> Tensor:
        """A per-cloud-and-candidate value ``[b, M]`` as ``[b, K, M]`` (the same for every
        view of the object)."""
        b, K, M = self.shape
        return x[:, None].expand(b, K, M)


class LossTerm:
    """One term of the training loss (see the module docstring)."""

    name: str = ""  # logged name (train_log.jsonl, wandb)
    key: str | None = None  # cfg.loss key of the weight; None: weight 1, always on
    per_candidate: bool = True  # [b, K, M] into winner-takes-all; else a scalar after it
    renders: tuple[str, ...] = ()  # extra renderer outputs it reads: "depth", "color"
    # extra batch maps it reads (dpc.data.build_batch_sampler's targets): "depth",
    # "mask_distance", "mask_inner_distance", "full_res" (with loss.surface_full_res)
    targets: tuple[str, ...] = ()
    # cfg.loss key of the first step the term is on (e.g. off until unsupervised poses have
    # settled); None: on from step 0
    from_step_key: str | None = None

    def weight(self, cfg, step: int) -> float:
        """The term's weight at ``step`` (0 = off)."""
        if self.from_step_key is not None and step < int(cfg.loss[self.from_step_key]):
            return 0.0
        return 1.0 if self.key is None else float(cfg.loss[self.key])

    def applies(self, ctx: StepContext) -> bool:
        """Whether the term exists for this model at all (e.g. the student needs pose
        prediction); checked before the weight."""
        return True

    def __call__(self, ctx: StepContext) -> Tensor:
        raise NotImplementedError


class Projection(LossTerm):
    """Silhouette projection loss (docs/METHOD.md 4): per view, half the summed squared difference
    between the rendered and the target silhouette."""

    name = "projection_loss"

    def __call__(self, ctx):
        return per_view_l2(ctx.silhouettes, ctx.masks[:, :, None])


class Color(LossTerm):
    """RGB projection loss against the input images resized to the grid."""

    name, key, renders = "color_loss", "color_weight", ("color",)

    def __call__(self, ctx):
        if ctx.render.color is None:
            raise ValueError("loss.color_weight > 0 needs model.pc_rgb=true")
        b, K, M = ctx.shape
        G = ctx.render.color.shape[-1]
        target = torch.nn.functional.interpolate(
            ctx.batch["image"].flatten(0, 1),
            size=(G, G),
            mode="bilinear",
            align_corners=True,
            antialias=True,
        ).view(b, K, 1, 3, G, G)
        return per_view_l2(ctx.render.color.view(b, K, M, 3, G, G), target, image_dims=3)


class Depth(LossTerm):
    """Expected-depth projection loss against the data set's depth maps."""

    name, key, renders, targets = "depth_loss", "depth_weight", ("depth",), ("depth",)

    def __call__(self, ctx):
        G = ctx.render.depth.shape[-1]
        return per_view_l2(ctx.render.depth.view(*ctx.shape, G, G), ctx.batch["depth"][:, :, None])


class SilhouetteDistance(LossTerm):
    """Not in the paper: pulls points lying outside the silhouette back
    (:func:`dpc.losses.silhouette_distance`); off before ``loss.silhouette_distance_from_step``."""

    name, key, targets = "silhouette_distance", "silhouette_distance_weight", ("mask_distance",)
    from_step_key = "silhouette_distance_from_step"

    def __call__(self, ctx):
        b, K, M = ctx.shape
        G = ctx.masks.shape[-1]
        dist = ctx.batch["mask_distance"][:, :, None].expand(b, K, M, G, G)
        return silhouette_distance(ctx.grid, dist).view(b, K, M)


class SurfaceDepth(LossTerm):
    """Not in the paper: pulls points onto the depth maps' visible surface; per cloud and
    candidate, the min over the object's K views (:func:`dpc.losses.surface_depth_loss`)."""

    name, key, targets = "surface_depth", "surface_depth_weight", ("depth", "full_res")

    def __call__(self, ctx):
        b, K, M = ctx.shape
        depth, mask = ctx.surface_maps
        H = depth.shape[-1]
        r, ok = surface_depth_residuals(
            ctx.grid.view(b, K, M, -1, 3),
            depth[:, :, None].expand(b, K, M, H, H),
            mask[:, :, None].expand(b, K, M, H, H),
            ctx.camera_distance,
        )
        cells = ctx.render.silhouette.shape[-1] - 1
        return ctx.per_cloud(surface_depth_loss(r.transpose(1, 2), ok.transpose(1, 2), cells))


class DepthCoverage(LossTerm):
    """Not in the paper: per view and candidate, the nearest point to each of
    ``loss.depth_coverage_samples`` sampled surface pixels is pulled to it (the same pixels
    for every candidate; :func:`dpc.losses.depth_coverage`)."""

    name, key, targets = "depth_coverage", "depth_coverage_weight", ("depth", "full_res")

    def __call__(self, ctx):
        b, K, M = ctx.shape
        depth, mask = ctx.surface_maps
        g = ctx.generator(7)
        num = int(ctx.cfg.loss.depth_coverage_samples)
        q, ok = depth_surface_samples(
            depth.flatten(0, 1), mask.flatten(0, 1), ctx.camera_distance, num, g
        )
        S = q.shape[1]
        q = q.view(b, K, 1, S, 3).expand(b, K, M, S, 3).reshape(-1, S, 3)
        ok = ok.view(b, K, 1, S).expand(b, K, M, S).reshape(-1, S)
        cells = ctx.render.silhouette.shape[-1] - 1
        return depth_coverage(ctx.grid, q, ok, cells).view(b, K, M)


class HullSurface(LossTerm):
    """Not in the paper, silhouettes only: pulls points onto the visual hull's surface;
    per cloud and candidate, the min over the object's K views
    (:func:`dpc.losses.hull_surface_loss`); off before ``loss.hull_surface_from_step``."""

    name, key, targets = "hull_surface", "hull_surface_weight", ("mask_inner_distance",)
    from_step_key = "hull_surface_from_step"

    def __call__(self, ctx):
        b, K, M = ctx.shape
        G = ctx.masks.shape[-1]
        inner = ctx.batch["mask_inner_distance"][:, :, None].expand(b, K, M, G, G)
        grid = ctx.grid.view(b, K, M, -1, 3).transpose(1, 2)
        return ctx.per_cloud(hull_surface_loss(grid, inner.transpose(1, 2)))


class Repulsion(LossTerm):
    """Not in the paper: spreads each cloud's points apart (:func:`dpc.losses.point_repulsion`),
    ``loss.repulsion_queries`` random points per cloud and step; independent of the pose, so
    added after winner-takes-all; off before ``loss.repulsion_from_step``."""

    name, key, per_candidate = "repulsion", "repulsion_weight", False
    from_step_key = "repulsion_from_step"

    def __call__(self, ctx):
        b, N = ctx.points.shape[:2]
        lo, g = ctx.cfg.loss, ctx.generator(11)
        S = min(int(lo.repulsion_queries), N)
        queries = torch.stack([torch.randperm(N, generator=g)[:S] for _ in range(b)])
        return point_repulsion(
            ctx.points, queries.to(ctx.points.device), int(lo.repulsion_neighbors),
            float(lo.repulsion_radius),
        ).mean()  # fmt: skip


class Student(LossTerm):
    """The student pose head pulled to each view's winning candidate (docs/METHOD.md 4):
    ``1 - w^2``, or the original's reference-point alignment with
    ``loss.pose_student_align_loss``."""

    name, key, per_candidate = "student_loss", "pose_predictor_student_loss_weight", False

    def applies(self, ctx):
        return bool(ctx.cfg.model.predict_pose) and ctx.out.pose_student is not None

    def __call__(self, ctx):
        b, K, _ = ctx.shape
        teacher = ctx.quats.gather(2, ctx.winner[..., None, None].expand(b, K, 1, 4))[:, :, 0]
        student = ctx.out.pose_student.float().view(b, K, 4)
        if ctx.cfg.loss.pose_student_align_loss is True:  # the original's form
            ref = align_reference_points(device=student.device)
            return student_align_loss(student, teacher, ref)
        return student_loss(student, teacher)


# The terms in the order they are summed (the order matters for bit-identical losses).
TERMS: list[LossTerm] = [
    Projection(),
    Color(),
    Depth(),
    SilhouetteDistance(),
    SurfaceDepth(),
    DepthCoverage(),
    HullSurface(),
    Student(),
    Repulsion(),
]


def active_terms(ctx: StepContext, terms: list[LossTerm] | None = None):
    """``[(term, weight)]`` of the terms that apply and have a weight > 0 at this step."""
    out = []
    for t in TERMS if terms is None else terms:
        if t.applies(ctx):
            w = t.weight(ctx.cfg, ctx.step)
            if w > 0:
                out.append((t, w))
    return out


def batch_targets(cfg, terms: list[LossTerm] | None = None) -> frozenset[str]:
    """The extra batch maps the configured terms read (weight > 0 at some step), for
    :func:`dpc.data.build_batch_sampler`."""
    need = set()
    for t in TERMS if terms is None else terms:
        if t.key is None or float(cfg.loss[t.key]) > 0:
            need.update(t.targets)
    if not cfg.loss.surface_full_res:
        need.discard("full_res")
    return frozenset(need)
