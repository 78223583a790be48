"""CPU mesh renderer for dataset synthesis (trimesh ray casting, embree backend).

The camera model is the project's (README "Conventions", docs/METHOD.md, section 3): the camera sits
at distance ``d = 2`` from the origin, focal ``f = 1.875`` relative to the full image
width, and pixel ``(i, j)`` of an ``S x S`` image looks along image-plane coordinates
``(x_right, y_up) = (j/(S-1) - 0.5, 0.5 - i/(S-1))``, i.e. along the camera-frame ray
``(1, y_up/f, x_right/f)`` (axes depth, up, right). Rendering a mesh's surface points
with :class:`dpc.render.PointCloudRenderer` at the same quaternion reproduces the mask.

Depth is the camera-frame depth coordinate plus ``d`` (distance along the optical axis,
the quantity the differentiable renderer's expected depth estimates); background 10.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from dpc.camera import CAMERA_DISTANCE, FOCAL_LENGTH

BACKGROUND_DEPTH = 10.0


def embree_intersector(mesh: trimesh.Trimesh):
    """Embree ray intersector of ``mesh``; raises if embreex is unavailable.

    Without embreex trimesh silently falls back to a pure-numpy intersector about 100x
    slower, which would turn a minutes-long dataset build into hours.
    """
    try:
        from trimesh.ray.ray_pyembree import RayMeshIntersector
    except Exception as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "The dataset renderer needs embree ray casting: `pip install embreex` "
            f"(trimesh could not import it: {exc})"
        ) from exc
    return RayMeshIntersector(mesh)


@dataclass
class MeshRenderSettings:
    """Settings of the CPU mesh renderer (recorded in each dataset's manifest)."""

    image_size: int = 128
    supersample: int = 2  # s x s rays per pixel, averaged (anti-aliased mask and RGB)
    camera_distance: float = CAMERA_DISTANCE
    focal_length: float = FOCAL_LENGTH
    ambient: float = 0.35  # shading = ambient + diffuse * |n . l|
    diffuse: float = 0.65
    background_depth: float = BACKGROUND_DEPTH

    def to_dict(self) -> dict:
        return asdict(self)


def camera_rays_cam(settings: MeshRenderSettings) -> np.ndarray:
    """Unnormalised camera-frame ray directions ``[S*s, S*s, 3]`` (depth, up, right).

    With supersampling ``s``, each pixel gets an ``s x s`` grid of sub-rays centred on the
    pixel centre, spaced ``1/((S-1) s)`` apart (the pixel pitch divided by s).
    """
    S, s, f = settings.image_size, settings.supersample, settings.focal_length
    pitch = 1.0 / (S - 1)
    sub = (np.arange(s) + 0.5) / s - 0.5  # sub-pixel offsets in pixel units, centred
    c = (np.arange(S)[:, None] + sub[None, :]).reshape(-1) * pitch - 0.5  # [S*s]
    y_up = -c  # row i -> 0.5 - i/(S-1)
    x_right = c
    dirs = np.empty((S * s, S * s, 3), np.float64)
    dirs[..., 0] = 1.0
    dirs[..., 1] = y_up[:, None] / f
    dirs[..., 2] = x_right[None, :] / f
    return dirs


class MeshRenderer:
    """Renders a triangle mesh (object frame, y up, inside [-0.5, 0.5]^3) from cameras.

    Face colours come from ``mesh.visual.face_colors`` when the mesh has them, else a
    neutral grey. Shading is a headlight (light at the camera): ``ambient + diffuse *
    |n . l|`` on the face normal, so flipped normals of game meshes still shade.
    """

    def __init__(self, settings: MeshRenderSettings | None = None):
        self.settings = settings or MeshRenderSettings()
        if self.settings.image_size < 2:
            raise ValueError(f"image_size must be >= 2, got {self.settings.image_size}")
        if self.settings.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.settings.supersample}")
        self._dirs_cam = camera_rays_cam(self.settings).reshape(-1, 3)

    def render(
        self,
        mesh: trimesh.Trimesh,
        rotations: np.ndarray,  # [V, 3, 3] object -> camera frame (quat_to_matrix(q))
        intersector=None,
    ) -> dict[str, np.ndarray]:
        """Render ``V`` views.

        Returns a dict with ``image`` uint8 [V, S, S, 3] (white background), ``mask``
        uint8 [V, S, S] (255 = object; fraction of covered sub-rays), ``depth`` float32
        [V, S, S] (mean depth of the covered sub-rays, background 10).
        """
        st = self.settings
        S, s = st.image_size, st.supersample
        if intersector is None:
            intersector = embree_intersector(mesh)
        colors = _face_colors(mesh).astype(np.float32)  # [F, 3] in [0, 1]
        normals = np.asarray(mesh.face_normals, np.float64)
        V = rotations.shape[0]
        out_img = np.empty((V, S, S, 3), np.uint8)
        out_mask = np.empty((V, S, S), np.uint8)
        out_depth = np.empty((V, S, S), np.float32)
        n_rays = self._dirs_cam.shape[0]
        v0_all = np.asarray(mesh.triangles[:, 0], np.float64)  # [F, 3] a vertex per face
        for v in range(V):
            R = np.asarray(rotations[v], np.float64)
            origin = R.T @ np.array([-st.camera_distance, 0.0, 0.0])  # camera, object frame
            dirs = self._dirs_cam @ R  # rows R^T d: object-frame rays, depth component 1
            inv_len = 1.0 / np.linalg.norm(dirs, axis=1)
            tri = intersector.intersects_first(
                np.broadcast_to(origin, dirs.shape), dirs * inv_len[:, None]
            )
            ray = np.flatnonzero(tri >= 0)
            tri = tri[ray]
            hit = np.zeros(n_rays, bool)
            hit[ray] = True
            n = normals[tri]
            d = dirs[ray]
            dn = (d * n).sum(1)
            # Ray parameter of the hit on the face's plane. The camera-frame ray is
            # (1, y/f, x/f), so t is the optical-axis depth directly.
            t = ((v0_all[tri] - origin) * n).sum(1) / np.where(np.abs(dn) > 1e-12, dn, 1e-12)
            rgb = np.ones((n_rays, 3), np.float32)
            cosang = np.abs(dn) * inv_len[ray]  # headlight: light along the ray
            shade = st.ambient + st.diffuse * cosang
            rgb[ray] = np.clip(colors[tri] * shade[:, None], 0.0, 1.0)
            depth = np.zeros(n_rays, np.float32)
            depth[ray] = t
            # average the s x s sub-rays of each pixel
            cnt = hit.reshape(S, s, S, s).sum(axis=(1, 3))
            rgb_p = rgb.reshape(S, s, S, s, 3).sum(axis=(1, 3)) / (s * s)
            dsum = depth.reshape(S, s, S, s).sum(axis=(1, 3))
            out_mask[v] = np.round(cnt * (255.0 / (s * s))).astype(np.uint8)
            out_img[v] = np.round(rgb_p * 255.0).astype(np.uint8)
            out_depth[v] = np.where(cnt > 0, dsum / np.maximum(cnt, 1), st.background_depth)
        return {"image": out_img, "mask": out_mask, "depth": out_depth}


def _face_colors(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-face RGB in [0, 1] ``[F, 3]``; grey when the mesh carries no face colours."""
    vis = mesh.visual
    if getattr(vis, "kind", None) == "face":
        return np.asarray(vis.face_colors[:, :3], np.float64) / 255.0
    if getattr(vis, "kind", None) == "vertex":
        vc = np.asarray(vis.vertex_colors[:, :3], np.float64) / 255.0
        return vc[mesh.faces].mean(1)
    return np.full((len(mesh.faces), 3), 0.7)
