"""One training step's forward pass and losses (SPEC sections 3-5).

Dimension letters: b objects on this rank, K views per object, M pose candidates (the
heads' M, twice that with ``model.pose_flip_candidates``), N points, G renderer grid.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from dpc.camera import with_flipped_candidates, world_to_grid
from dpc.losses import (
    align_reference_points,
    depth_coverage,
    depth_surface_samples,
    hull_surface_loss,
    per_view_l2,
    silhouette_distance,
    student_align_loss,
    student_loss,
    surface_depth_loss,
    surface_depth_residuals,
    winner_takes_all,
)
from dpc.render import PointCloudRenderer
from dpc.training.selection import spread_bias, student_bias


class StepOutput(NamedTuple):
    loss: Tensor  # scalar total (what is back-propagated)
    terms: dict[str, Tensor]  # scalar loss terms, for logging
    winner: Tensor | None  # [b, K] winning candidate per view, in [0, M)
    silhouette: Tensor  # [b, K, M, G, G] (detached)
    points: Tensor  # [b, N, 3] (detached)
    colors: Tensor | None  # [b, N, 3] (detached)
    scale: Tensor  # [b] (detached)


def dropout_indices(
    step: int, seed: int, global_batch: int, rank_slice: slice, num_points: int, keep: float, device
) -> Tensor | None:
    """Indices ``[b, n_keep]`` of the points kept at ``step`` (None = keep all).

    Drawn for the whole global batch from a generator seeded by ``(seed, step)`` and then
    sliced, so DDP ranks and a single process drop the same points of the same objects.
    """
    n_keep = max(1, int(np.ceil(keep * num_points)))
    if n_keep >= num_points:
        return None
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    scores = torch.rand(global_batch, num_points, generator=g)[rank_slice]
    return scores.argsort(dim=1)[:, :n_keep].to(device)


def dropout_indices_per_view(
    step: int,
    seed: int,
    global_batch: int,
    views: int,
    rank_slice: slice,
    num_points: int,
    keep: float,
    device,
) -> Tensor | None:
    """The original's point dropout (``render.pc_point_dropout_per_view: true``): indices
    ``[b, views, n_keep]``, a different subset for every rendered image (each view and
    pose candidate), ``n_keep = floor(keep * N)`` (the original's ``pc_point_dropout``
    casts to int); None = keep all. Drawn for the global batch and sliced, as
    :func:`dropout_indices`."""
    # The tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 from rounding down to 28.
    n_keep = max(1, int(np.floor(keep * num_points + 1e-9)))
    if n_keep >= num_points:
        return None
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    scores = torch.rand(global_batch, views, num_points, generator=g)[rank_slice]
    return scores.argsort(dim=-1)[..., :n_keep].to(device)


def _gather_views(x: Tensor | None, idx: Tensor) -> Tensor | None:
    """``x [b, N, C]`` at ``idx [b, V, n]`` -> ``[b * V, n, C]``."""
    if x is None:
        return None
    b, V, n = idx.shape
    flat = idx.reshape(b, V * n, 1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, flat).view(b * V, n, x.shape[-1])


def num_candidates(cfg) -> int:
    """How many candidate poses winner-takes-all chooses among (the range of
    :attr:`StepOutput.winner`): 1 under camera supervision, else the pose heads' M, times 2
    with ``model.pose_flip_candidates``."""
    if not cfg.model.predict_pose:
        return 1
    M = int(cfg.model.pose_predict_num_candidates)
    return 2 * M if cfg.model.get("pose_flip_candidates", False) else M


def compute_step(
    model: nn.Module,  # DPCModel, or its DDP / compiled wrapper
    renderer: PointCloudRenderer,
    batch: dict[str, Tensor],
    cfg,
    step: int,
    sigma: float,
    keep: float,
    rank_slice: slice,
    amp: bool = False,
) -> StepOutput:
    """Forward pass of the networks and the renderer, and the losses.

    Unsupervised (``model.predict_pose``): every view's image is encoded for its pose,
    the shape comes from the first view of each object and is rendered into all K views
    with each of the M candidate poses; winner-takes-all picks, per view, the candidate
    with the lowest loss; the student is pulled to the winner. Camera supervision: only the
    first view is encoded and the shape is rendered with the K ground-truth poses.
    With ``model.pose_flip_candidates`` every candidate also comes flipped
    (:func:`dpc.camera.with_flipped_candidates`): 2M candidates, and the student learns
    whichever wins.
    """
    images, masks = batch["image"], batch["mask"]  # [b, K, 3, S, S], [b, K, G, G]
    b, K = masks.shape[:2]
    lc = cfg.loss
    predict_pose = bool(cfg.model.predict_pose)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        if predict_pose:
            shape_index = torch.arange(b, device=images.device) * K  # first view of each object
            out = model(images.flatten(0, 1), shape_index=shape_index)
            quats = out.pose_candidates.view(b, K, -1, 4)  # [b, K, M, 4]
        else:
            out = model(images[:, 0])
            quats = batch["quat"][:, :, None]  # [b, K, 1, 4]
    points, scale, colors = out.points.float(), out.scale.float(), out.colors
    quats = quats.float()
    if predict_pose and cfg.model.get("pose_flip_candidates", False):
        # [q_1..q_M, F q_1..F q_M], F the 180-degree turn about the camera's image-up axis.
        # At zero elevation F q is exactly the object's front/back flip (q composed with
        # a half turn about the object's vertical); at elevation e the two differ by 2|e|,
        # close enough to land a candidate in the flipped basin. It needs no knowledge of
        # the model's own frame (arbitrary in the unsupervised setting), only the camera's.
        quats = with_flipped_candidates(quats)  # [b, K, 2M, 4]
    if colors is not None:
        colors = colors.float()
    M = quats.shape[2]

    R = b * K * M
    use_colors = colors is not None and lc.color_weight != 0
    if cfg.render.get("pc_point_dropout_per_view", False):
        vidx = dropout_indices_per_view(
            step, cfg.seed, int(cfg.trainer.batch_size), K * M, rank_slice,
            points.shape[1], keep, points.device,
        )  # fmt: skip
        if vidx is None:
            vidx = torch.arange(points.shape[1], device=points.device).expand(b, K * M, -1)
        pts_r = _gather_views(points, vidx)  # [R, n, 3]
        cols_r = _gather_views(colors, vidx) if use_colors else None
    else:
        idx = dropout_indices(
            step,
            cfg.seed,
            int(cfg.trainer.batch_size),
            rank_slice,
            points.shape[1],
            keep,
            points.device,
        )
        pts, cols = points, colors
        if idx is not None:
            pts = torch.gather(points, 1, idx[..., None].expand(-1, -1, 3))
            if colors is not None:
                cols = torch.gather(colors, 1, idx[..., None].expand(-1, -1, 3))
        n = pts.shape[1]
        pts_r = pts[:, None, None].expand(b, K, M, n, 3).reshape(R, n, 3)
        cols_r = cols[:, None, None].expand(b, K, M, n, 3).reshape(R, n, 3) if use_colors else None
    rend = renderer(
        pts_r,
        quats.reshape(R, 4),
        sigma=sigma,
        scale=scale[:, None, None].expand(b, K, M).reshape(R),
        colors=cols_r,
        return_depth=lc.depth_weight > 0,
    )
    G = rend.silhouette.shape[-1]
    sil = rend.silhouette.view(b, K, M, G, G)
    per_cand = per_view_l2(sil, masks[:, :, None])  # [b, K, M]
    terms: dict[str, Tensor] = {}
    if lc.color_weight > 0:
        if rend.color is None:
            raise ValueError("loss.color_weight > 0 needs model.pc_rgb=true")
        target = torch.nn.functional.interpolate(
            images.flatten(0, 1), size=(G, G), mode="bilinear", align_corners=True, antialias=True
        ).view(b, K, 1, 3, G, G)
        col = per_view_l2(rend.color.view(b, K, M, 3, G, G), target, image_dims=3)
        terms["color_loss"] = col
        per_cand = per_cand + lc.color_weight * col
    if lc.depth_weight > 0:
        dep = per_view_l2(rend.depth.view(b, K, M, G, G), batch["depth"][:, :, None])
        terms["depth_loss"] = dep
        per_cand = per_cand + lc.depth_weight * dep
    sd_weight = float(lc.get("silhouette_distance_weight", 0.0))
    if step < int(lc.get("silhouette_distance_from_step", 0)):
        sd_weight = 0.0  # e.g. off until unsupervised poses have settled
    surf_weight = float(lc.get("surface_depth_weight", 0.0))
    cov_weight = float(lc.get("depth_coverage_weight", 0.0))
    hull_weight = float(lc.get("hull_surface_weight", 0.0))
    rs = renderer.settings
    grid = None
    if sd_weight > 0 or surf_weight > 0 or cov_weight > 0 or hull_weight > 0:
        # All points (not only the dropout subset): every stray is pulled back, every
        # point pulled to the surface. [R, N, 3] grid coordinates under each view's pose.
        grid = world_to_grid(
            points[:, None, None].expand(b, K, M, -1, 3).reshape(R, -1, 3),
            quats.reshape(R, 4),
            camera_distance=rs.camera_distance,
            focal_length=rs.focal_length,
        )
    if sd_weight > 0:
        dist = batch["mask_distance"][:, :, None].expand(b, K, M, G, G)
        sd = silhouette_distance(grid, dist).view(b, K, M)
        terms["silhouette_distance"] = sd
        per_cand = per_cand + sd_weight * sd

    # depth and silhouette maps of the surface terms: the renderer's grid, or the data
    # set's own resolution with loss.surface_full_res (finer nearest-pixel lookups)
    if "depth_full" in batch:
        s_depth, s_mask = batch["depth_full"], batch["mask_full"]
    else:
        s_depth, s_mask = batch.get("depth"), masks
    if surf_weight > 0:
        # per cloud and candidate: the min over the object's K views
        H = s_depth.shape[-1]
        r, ok = surface_depth_residuals(
            grid.view(b, K, M, -1, 3),
            s_depth[:, :, None].expand(b, K, M, H, H),
            s_mask[:, :, None].expand(b, K, M, H, H),
            rs.camera_distance,
        )
        surf = surface_depth_loss(r.transpose(1, 2), ok.transpose(1, 2), G - 1)  # [b, M]
        surf = surf[:, None].expand(b, K, M)
        terms["surface_depth"] = surf
        per_cand = per_cand + surf_weight * surf

    if cov_weight > 0:
        # per view and candidate: the same sampled surface pixels for every candidate
        g = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + int(step) + 7)
        q, ok = depth_surface_samples(
            s_depth.flatten(0, 1),
            s_mask.flatten(0, 1),
            rs.camera_distance,
            int(lc.get("depth_coverage_samples", 256)),
            g,
        )
        S = q.shape[1]
        q = q.view(b, K, 1, S, 3).expand(b, K, M, S, 3).reshape(R, S, 3)
        ok = ok.view(b, K, 1, S).expand(b, K, M, S).reshape(R, S)
        cov = depth_coverage(grid, q, ok, G - 1).view(b, K, M)
        terms["depth_coverage"] = cov
        per_cand = per_cand + cov_weight * cov

    if hull_weight > 0:
        # per cloud and candidate: the min over the object's K views
        inner = batch["mask_inner_distance"][:, :, None].expand(b, K, M, G, G)
        hull = hull_surface_loss(grid.view(b, K, M, -1, 3).transpose(1, 2), inner.transpose(1, 2))
        hull = hull[:, None].expand(b, K, M)
        terms["hull_surface"] = hull
        per_cand = per_cand + hull_weight * hull

    bias, spread = None, None
    if predict_pose:
        # the spread is logged in every unsupervised run (it shows the one-sided collapse)
        sb, spread = spread_bias(quats, per_cand.detach(), float(lc.get("pose_spread_margin", 0.3)))
        spread_w = float(lc.get("pose_spread_weight", 0.0))
        if spread_w > 0:
            bias = spread_w * sb
        student_w = float(lc.get("pose_student_select_weight", 0.0))
        if student_w > 0 and out.pose_student is not None:
            stb = student_w * student_bias(quats, out.pose_student.view(b, K, 4))
            bias = stb if bias is None else bias + stb
    wta = winner_takes_all(per_cand, selection_bias=bias)
    winner = wta.winner if predict_pose else None
    loss = wta.loss
    sel = lambda t: t.gather(-1, wta.winner[..., None])[..., 0].mean()
    proj = per_view_l2(sil, masks[:, :, None])
    terms = {k: sel(v) for k, v in terms.items()}
    terms["projection_loss"] = sel(proj)
    if spread is not None:
        terms["pose_spread"] = spread  # |mean camera direction| of the unbiased winners
    student_weight = float(lc.pose_predictor_student_loss_weight)
    if predict_pose and out.pose_student is not None and student_weight > 0:
        teacher = quats.gather(2, wta.winner[..., None, None].expand(b, K, 1, 4))[:, :, 0]
        student = out.pose_student.float().view(b, K, 4)
        if lc.get("pose_student_align_loss", False) is True:  # the original's align form
            ref = align_reference_points(device=student.device)
            st = student_align_loss(student, teacher, ref)
        else:
            st = student_loss(student, teacher)
        terms["student_loss"] = st
        loss = loss + student_weight * st
    # Weight decay is not in this loss: the optimiser adds its gradient (parameter groups,
    # dpc.training.optim), the loop logs its value at log steps.
    terms["data_loss"] = loss
    return StepOutput(
        loss,
        terms,
        winner,
        sil.detach(),
        points.detach(),
        None if colors is None else colors.detach(),
        scale.detach(),
    )
