"""The CPU mesh renderer: known answers on a sphere, and agreement with the
differentiable point-cloud renderer at the same pose (mask reprojection)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from dpc.camera import camera_position, quat_to_matrix, view_quat
from dpc.data.mesh_render import (
    MeshRenderer,
    MeshRenderSettings,
    camera_rays_cam,
    embree_intersector,
)
from dpc.data.sources.car import CarSource
from dpc.render import PointCloudRenderer, RenderSettings


def test_embree_is_active():
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    inter = embree_intersector(trimesh.creation.box())
    assert isinstance(inter, RayMeshIntersector)


def test_pixel_centres_follow_the_convention():
    d = camera_rays_cam(MeshRenderSettings(image_size=5, supersample=1, focal_length=2.0))
    # row 0 is y_up = +0.5, last column is x_right = +0.5, ray = (1, y/f, x/f)
    np.testing.assert_allclose(d[0, 0], [1.0, 0.25, -0.25])
    np.testing.assert_allclose(d[4, 4], [1.0, -0.25, 0.25])
    np.testing.assert_allclose(d[2, 2], [1.0, 0.0, 0.0])


def test_sphere_mask_and_depth_known_answer():
    """A sphere of radius r at the origin: a pixel's ray (1, y/f, x/f) from distance d
    hits it iff its distance to the origin is < r; the hit's optical-axis depth solves
    |o + t v| = r. Checked for every pixel away from the rim."""
    r, S = 0.4, 48
    sphere = trimesh.creation.icosphere(subdivisions=6, radius=r)
    st = MeshRenderSettings(image_size=S, supersample=1)
    f64 = torch.float64
    q = view_quat(torch.tensor([0.7], dtype=f64), torch.tensor([0.3], dtype=f64))
    out = MeshRenderer(st).render(sphere, quat_to_matrix(q).numpy())
    v = camera_rays_cam(st).reshape(S, S, 3)  # camera frame, depth component 1
    o = np.array([-2.0, 0.0, 0.0])
    # |o + t v|^2 = r^2  ->  a t^2 + b t + c = 0
    a = (v**2).sum(-1)
    b = 2 * (v @ o)
    c = o @ o - r**2
    disc = b**2 - 4 * a * c
    inside = disc > 0
    t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
    # pixels whose ray passes clearly inside/outside (tessellation error < 0.5% of r)
    dist = np.sqrt(np.maximum(c - b**2 / (4 * a) + r**2, 0))  # ray distance to the origin
    clear = np.abs(dist - r) > 0.01
    mask = out["mask"][0] > 127
    assert (mask[clear] == inside[clear]).all()
    sel = clear & inside
    np.testing.assert_allclose(out["depth"][0][sel], t[sel], atol=2e-3)
    assert (out["depth"][0][~inside & clear] == 10.0).all()
    assert (out["image"][0][~inside & clear] == 255).all()


@pytest.mark.parametrize("supersample", [1, 2])
def test_mask_reprojects_with_point_renderer(supersample):
    """Surface points of a car rendered by PointCloudRenderer at the dataset's quaternion
    reproduce the mesh mask.

    Thresholds: the point renderer's trilinear splat spreads each point over two cells
    per axis and the blur widens it further, so its silhouette is the true one dilated by
    about one cell. For a car ~30 px across at 64 px that rim alone costs 10-15% IoU
    (measured plain IoU 0.84-0.89, min over 24 views); against the mask dilated by one
    pixel (3x3 max-pool) the measured IoU is 0.94-0.95. A mirrored image (wrong row
    convention) scores 0.78-0.82 against the same dilated mask, and a one-pixel
    centre offset moves the centroids by a pixel, so the thresholds 0.9 (dilated), 0.8
    (plain) and 0.5 px (centroid) separate right from wrong conventions.
    """
    G = 64
    g = torch.Generator().manual_seed(0)
    az = torch.rand(6, generator=g, dtype=torch.float64) * 2 * np.pi
    el = torch.deg2rad(torch.empty(6, dtype=torch.float64).uniform_(-20, 40, generator=g))
    q = view_quat(az, el)
    mr = MeshRenderer(MeshRenderSettings(image_size=G, supersample=supersample))
    pr = PointCloudRenderer(RenderSettings(vox_size=G, kernel_size=5, backend="reference"))
    mesh = CarSource(seed=3).load("train_00001")
    masks = torch.from_numpy(mr.render(mesh, quat_to_matrix(q).numpy())["mask"]).float() / 255
    pts, _ = trimesh.sample.sample_surface(mesh, 20000, seed=0)
    P = torch.tensor(pts, dtype=torch.float32)[None].expand(6, -1, -1)
    sil = pr(P, q.float(), sigma=0.5).silhouette
    a, b = sil > 0.5, masks > 0.5
    bd = F.max_pool2d(b.float()[:, None], 3, 1, 1)[:, 0] > 0.5

    def iou(x, y):
        return (x & y).sum((1, 2)).float() / (x | y).sum((1, 2)).float()

    assert iou(a, bd).min() > 0.9
    assert iou(a, b).min() > 0.8
    assert iou(a, bd.flip(1)).mean() < iou(a, bd).mean() - 0.08
    ii, jj = torch.meshgrid(torch.arange(G), torch.arange(G), indexing="ij")
    for v in range(6):
        ca = torch.stack(((sil[v] * ii).sum(), (sil[v] * jj).sum())) / sil[v].sum()
        cb = torch.stack(((masks[v] * ii).sum(), (masks[v] * jj).sum())) / masks[v].sum()
        assert (ca - cb).abs().max() < 0.5, (v, ca, cb)


def test_camera_position_matches_view():
    q = view_quat(torch.tensor([0.3]), torch.tensor([0.2]))
    p = camera_position(q)
    torch.testing.assert_close(p.norm(dim=-1), torch.tensor([2.0]))
