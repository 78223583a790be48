"""Differentiable point-cloud rendering."""

from dpc.render.pipeline import (
    PointCloudRenderer,
    RenderOutput,
    RenderSettings,
    build_renderer,
    final_sigma,
    point_dropout,
)

__all__ = [
    "PointCloudRenderer",
    "RenderOutput",
    "RenderSettings",
    "build_renderer",
    "final_sigma",
    "point_dropout",
]
