"""Mesh checks, normalisation to the unit cube, and ground-truth surface sampling."""

from __future__ import annotations

import numpy as np
import trimesh

from dpc.data.mesh_render import embree_intersector


class MeshError(ValueError):
    """A mesh that cannot be used (fails to load, empty, non-finite vertices)."""


def check_mesh(mesh: trimesh.Trimesh, name: str) -> None:
    """Raise :class:`MeshError` naming ``name`` if ``mesh`` is empty or has NaN/inf vertices."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise MeshError(f"{name}: expected a triangle mesh, got {type(mesh).__name__}")
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise MeshError(f"{name}: mesh is empty (no faces)")
    if not np.isfinite(np.asarray(mesh.vertices)).all():
        raise MeshError(f"{name}: mesh has NaN or infinite vertex coordinates")
    if float(mesh.area) <= 0.0:
        raise MeshError(f"{name}: mesh has zero surface area")
    ext = mesh.bounds[1] - mesh.bounds[0]
    if float(ext.max()) <= 0.0:
        raise MeshError(f"{name}: mesh has zero extent")


def normalize_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale its longest side to 1, in place
    (docs/METHOD.md, section 1: objects fit the unit cube [-0.5, 0.5]^3)."""
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2.0)
    mesh.apply_scale(1.0 / float((hi - lo).max()))
    return mesh


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` roughly uniform unit directions ``[n, 3]`` on the sphere."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack((np.cos(theta) * np.sin(phi), np.cos(phi), np.sin(theta) * np.sin(phi)), 1)


def sample_visible_surface(
    mesh: trimesh.Trimesh,
    n_points: int,
    rng: np.random.Generator,
    n_directions: int = 64,
    oversample: float = 1.6,
    intersector=None,
) -> np.ndarray:
    """Ground-truth cloud ``[n_points, 3]``: area-uniform surface samples that are visible
    from outside the object.

    A sample counts as visible when a ray from it (offset by 1e-4) escapes to infinity,
    without hitting the mesh, along at least one of ``n_directions`` Fibonacci directions.
    This drops surfaces inside the object (wheels inside a car body, overlapping parts,
    cockpit interiors of game meshes) that no silhouette can explain, and works for
    meshes that are not watertight. Visible samples are drawn without replacement when
    enough exist (oversampling the surface by ``oversample``), else topped up with
    replacement so the count is always ``n_points``.
    """
    if intersector is None:
        intersector = embree_intersector(mesh)
    n_cand = int(n_points * oversample)
    pts, _ = trimesh.sample.sample_surface(mesh, n_cand, seed=rng)
    pts = np.asarray(pts, np.float64)
    dirs = fibonacci_directions(n_directions)
    dirs = dirs[rng.permutation(n_directions)]
    visible = np.zeros(n_cand, bool)
    for d in dirs:
        todo = np.flatnonzero(~visible)
        if todo.size == 0:
            break
        origins = pts[todo] + 1e-4 * d
        blocked = intersector.intersects_any(origins, np.broadcast_to(d, origins.shape))
        visible[todo[~blocked]] = True
    vis = pts[visible]
    if len(vis) == 0:  # degenerate (e.g. a closed box around the object): keep everything
        vis = pts
    replace = len(vis) < n_points
    idx = rng.choice(len(vis), n_points, replace=replace)
    return vis[idx].astype(np.float32)
