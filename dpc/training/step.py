"""One training step: the networks, the renderer over every pose candidate, the loss terms
of :mod:`dpc.training.terms` and winner-takes-all (docs/training.md, "The training step").

Dimension letters: b objects on this rank, K views per object, M pose candidates (flips
included: the model returns them), N points, G renderer grid, R = b * K * M.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from dpc.losses import winner_takes_all
from dpc.render import PointCloudRenderer, RenderOutput
from dpc.render import dropout_indices as render_dropout
from dpc.training.pose_spread import winner_spread
from dpc.training.terms import StepContext, active_terms


class StepOutput(NamedTuple):
    loss: Tensor  # scalar total (what is back-propagated)
    terms: dict[str, Tensor]  # scalar loss terms, for logging
    winner: Tensor | None  # [b, K] winning candidate per view, in [0, M)
    silhouette: Tensor  # [b, K, M, G, G] (detached)
    points: Tensor  # [b, N, 3] (detached)
    colors: Tensor | None  # [b, N, 3] (detached)
    scale: Tensor  # [b] (detached)


def dropout_indices(
    step: int,
    seed: int,
    global_batch: int,
    rank_slice: slice,
    num_points: int,
    keep: float,
    device,
    views: int | None = None,
) -> Tensor | None:
    """Training's point dropout at ``step`` (:func:`dpc.render.dropout_indices`): indices
    of the kept points (None = keep all).

    ``views=None`` (dpc): one subset per object, ``[b, n_keep]``. ``views=V``
    (``render.pc_point_dropout_per_view``, the original's): a different subset for each of
    the V images rendered of an object (each view and pose candidate), ``[b, V, n_keep]``,
    rounded down as the original (:func:`dpc.render.kept_count`). Drawn for the whole
    global batch from a generator seeded by ``(seed, step)`` and then sliced, so DDP ranks
    and a single process drop the same points of the same objects.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    rows = (global_batch,) if views is None else (global_batch, views)
    idx = render_dropout(keep, num_points, rows, g, per_view=views is not None)
    return None if idx is None else idx[rank_slice].to(device)


def _per_image(x: Tensor, idx: Tensor | None, views: int) -> Tensor:
    """``x [b, N, C]`` -> ``[b * views, n, C]``: the points each rendered image gets;
    ``idx`` from :func:`dropout_indices`, ``[b, n]`` (the same for all views) or
    ``[b, views, n]``."""
    b, N, C = x.shape
    if idx is not None and idx.dim() == 3:
        n = idx.shape[-1]
        flat = idx.reshape(b, views * n, 1).expand(-1, -1, C)
        return torch.gather(x, 1, flat).view(b * views, n, C)
    if idx is not None:
        x = torch.gather(x, 1, idx[..., None].expand(-1, -1, C))
    n = x.shape[1]
    return x[:, None].expand(b, views, n, C).reshape(b * views, n, C)


def render_candidates(
    renderer: PointCloudRenderer, ctx: StepContext, sigma: float, keep: float,
    rank_slice: slice, color: bool, depth: bool,
) -> RenderOutput:  # fmt: skip
    """Render every object's cloud (after point dropout) under each of its views' M
    candidate poses: ``[R, ...]``."""
    cfg, (b, K, M) = ctx.cfg, ctx.shape
    per_view = bool(cfg.render.pc_point_dropout_per_view)
    idx = dropout_indices(
        ctx.step, cfg.seed, int(cfg.trainer.batch_size), rank_slice, ctx.points.shape[1],
        keep, ctx.points.device, views=K * M if per_view else None,
    )  # fmt: skip
    if per_view and idx is None:  # every view gets all points (the same gather as below)
        idx = torch.arange(ctx.points.shape[1], device=ctx.points.device).expand(b, K * M, -1)
    color = color and ctx.colors is not None
    return renderer(
        _per_image(ctx.points, idx, K * M),
        ctx.quats.reshape(-1, 4),
        sigma=sigma,
        scale=ctx.out.scale.float()[:, None, None].expand(b, K, M).reshape(-1),
        colors=_per_image(ctx.colors, idx, K * M) if color else None,
        return_depth=depth,
    )


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
    """Forward pass of the networks and the renderer, and the loss.

    Unsupervised (``model.predict_pose``): every view's image is encoded for its pose, the
    shape comes from the first view of each object and is rendered into all K views with
    each of the M candidate poses the model returns (with ``model.pose_flip_candidates``
    each also flipped, :func:`dpc.camera.with_flipped_candidates`); winner-takes-all picks,
    per view, the candidate with the lowest weighted sum of the candidate terms; the other
    terms (the student, pulled to the winner) are added after. Camera supervision: only
    the first view is encoded and the shape is rendered with the K ground-truth poses.
    """
    images = batch["image"]  # [b, K, 3, S, S]
    b, K = images.shape[:2]
    predict_pose = bool(cfg.model.predict_pose)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
        if predict_pose:
            shape_index = torch.arange(b, device=images.device) * K  # first view of each object
            out = model(images.flatten(0, 1), shape_index=shape_index)
            quats = out.pose_candidates.view(b, K, -1, 4)  # [b, K, M, 4]
        else:
            out = model(images[:, 0])
            quats = batch["quat"][:, :, None]  # [b, K, 1, 4]
    colors = None if out.colors is None else out.colors.float()
    ctx = StepContext(
        cfg, step, batch, out, quats.float(), out.points.float(), colors,
        renderer.settings.camera_distance, renderer.settings.focal_length,
    )  # fmt: skip
    terms = active_terms(ctx)
    needs = {r for t, _ in terms for r in t.renders}
    ctx.render = render_candidates(
        renderer, ctx, sigma, keep, rank_slice, "color" in needs, "depth" in needs
    )
    per_cand, values = None, {}
    for term, w in (tw for tw in terms if tw[0].per_candidate):
        values[term.name] = v = term(ctx)  # [b, K, M]
        per_cand = w * v if per_cand is None else per_cand + w * v
    wta = winner_takes_all(per_cand)
    ctx.winner = wta.winner
    logged = {k: v.gather(-1, wta.winner[..., None])[..., 0].mean() for k, v in values.items()}
    if predict_pose:  # |mean camera direction| of the winners: ~1 when all sit on one side
        logged["pose_spread"] = winner_spread(quats, wta.winner)
    loss = wta.loss
    for term, w in (tw for tw in terms if not tw[0].per_candidate):
        logged[term.name] = v = term(ctx)  # scalar
        loss = loss + w * v
    # Weight decay is not in this loss: the optimiser adds its gradient (parameter groups,
    # dpc.training.optim), the loop logs its value at log steps.
    logged["data_loss"] = loss
    return StepOutput(
        loss,
        logged,
        wta.winner if predict_pose else None,
        ctx.silhouettes.detach(),
        ctx.points.detach(),
        None if colors is None else colors.detach(),
        out.scale.float().detach(),
    )
