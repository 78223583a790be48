"""Annealing schedules (docs/METHOD.md, section 3), functions of the step counter only, so a resumed
run continues them exactly."""

from __future__ import annotations


def linear(step: int, start: float, end: float, num_steps: int) -> float:
    """Linear from ``start`` at step 0 to ``end`` at step ``num_steps``, then constant."""
    if num_steps <= 0:
        return float(end)
    t = min(max(step, 0) / num_steps, 1.0)
    return float(start + (end - start) * t)


def blur_sigma(step: int, cfg) -> float:
    """Blur std in cells of the renderer grid at ``step``: ``render.pc_relative_sigma`` ->
    ``render.pc_relative_sigma_end`` over ``render.sigma_anneal_steps`` (None = all
    ``trainer.max_steps``)."""
    r = cfg.render
    n = r.sigma_anneal_steps if r.sigma_anneal_steps is not None else cfg.trainer.max_steps
    return linear(step, r.pc_relative_sigma, r.pc_relative_sigma_end, int(n))


def keep_fraction(step: int, cfg) -> float:
    """Point-dropout keep fraction at ``step``: ``render.pc_point_dropout_start`` (paper
    0.07) -> 1.0 over ``render.pc_point_dropout_anneal_steps`` (None = all training)."""
    r = cfg.render
    if not r.pc_point_dropout_scheduled:
        return 1.0
    n = (
        r.pc_point_dropout_anneal_steps
        if r.pc_point_dropout_anneal_steps is not None
        else cfg.trainer.max_steps
    )
    return linear(step, r.pc_point_dropout_start, 1.0, int(n))
