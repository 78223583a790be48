"""Differentiable point-cloud rendering."""

from dpc.render.pipeline import (
    PointCloudRenderer,
    RenderOutput,
    RenderSettings,
    build_renderer,
    dropout_indices,
    final_sigma,
    kept_count,
)

__all__ = [
    "PointCloudRenderer",
    "RenderOutput",
    "RenderSettings",
    "build_renderer",
    "dropout_indices",
    "final_sigma",
    "kept_count",
]
