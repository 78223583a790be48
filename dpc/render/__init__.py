"""Differentiable point-cloud rendering."""

from dpc.render.pipeline import PointCloudRenderer, RenderOutput, RenderSettings, point_dropout

__all__ = ["PointCloudRenderer", "RenderOutput", "RenderSettings", "point_dropout"]
