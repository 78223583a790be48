"""Small watertight building blocks for the procedural categories.

Every part is a closed, consistently wound solid; an object is the concatenation of its
parts (vertices are not merged across parts), so every edge is shared by exactly two
faces and the whole mesh is watertight even where parts overlap. Interior surfaces of
overlapping parts are excluded from the ground truth by the visibility test in
:func:`dpc.data.mesh_utils.sample_visible_surface`.
"""

from __future__ import annotations

import numpy as np
import trimesh


def _colored(mesh: trimesh.Trimesh, color) -> trimesh.Trimesh:
    c = np.clip(np.asarray(color, np.float64), 0.0, 1.0)
    rgba = np.append(np.round(c * 255), 255).astype(np.uint8)
    mesh.visual.face_colors = np.tile(rgba, (len(mesh.faces), 1))
    return mesh


def box(extents, center, color, rotation: np.ndarray | None = None) -> trimesh.Trimesh:
    """Axis-aligned box (optionally rotated about its centre by a 3x3 matrix)."""
    m = trimesh.creation.box(extents=np.asarray(extents, np.float64))
    if rotation is not None:
        T = np.eye(4)
        T[:3, :3] = rotation
        m.apply_transform(T)
    m.apply_translation(np.asarray(center, np.float64))
    return _colored(m, color)


def cylinder(radius, p0, p1, color, sections: int = 20) -> trimesh.Trimesh:
    """Closed cylinder between points ``p0`` and ``p1``."""
    m = trimesh.creation.cylinder(
        radius=float(radius), segment=np.array([p0, p1], np.float64), sections=sections
    )
    return _colored(m, color)


def rotation_about(axis: str, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` radians about the x, y or z axis."""
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def loft(sections: np.ndarray) -> trimesh.Trimesh:
    """Closed solid through convex cross-sections ``[K, M, 3]`` (K sections of M points,
    each section a convex polygon in a plane, consecutive sections in order along the
    sweep). Side quads join consecutive sections; both ends are closed by a fan around
    the section's centroid. The winding is fixed so that the volume is positive.
    """
    K, M, _ = sections.shape
    verts = sections.reshape(-1, 3)
    idx = np.arange(K * M).reshape(K, M)
    a = idx[:-1, :]
    b = idx[1:, :]
    a1 = np.roll(a, -1, axis=1)
    b1 = np.roll(b, -1, axis=1)
    faces = [np.stack((a, b, b1), -1).reshape(-1, 3), np.stack((a, b1, a1), -1).reshape(-1, 3)]
    c0 = len(verts)
    c1 = c0 + 1
    verts = np.vstack((verts, sections[0].mean(0), sections[-1].mean(0)))
    ring0 = idx[0]
    ring1 = idx[-1]
    faces.append(np.stack((np.full(M, c0), ring0, np.roll(ring0, -1)), -1))
    faces.append(np.stack((np.full(M, c1), np.roll(ring1, -1), ring1), -1))
    mesh = trimesh.Trimesh(verts, np.vstack(faces), process=True)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


def combine(parts: list[trimesh.Trimesh]) -> trimesh.Trimesh:
    """Concatenate parts keeping per-face colours (no vertex merging across parts)."""
    return trimesh.util.concatenate(parts)
