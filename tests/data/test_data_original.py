"""Original-release layout: a fixture in that exact layout is generated here from a mesh
with known Blender cameras, rendered by an independent Blender-convention ray caster;
the imported poses must re-render the fixture's masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image
from scipy.io import savemat

from dpc.camera import look_at_quat, quat_to_matrix
from dpc.data import DatasetFormatError, open_dataset
from dpc.data.mesh_render import MeshRenderer, MeshRenderSettings, embree_intersector
from dpc.data.original import blender_pos_to_quat, import_original

SYNSET = "02958343"
S = 48
V = 3


def asymmetric_mesh() -> trimesh.Trimesh:
    """An object with no mirror symmetry (a row flip or a wrong handedness shows)."""
    parts = [
        trimesh.creation.box((0.8, 0.2, 0.3)),
        trimesh.creation.box((0.2, 0.5, 0.2)).apply_translation((0.3, 0.3, 0.05)),
        trimesh.creation.icosphere(2, 0.12).apply_translation((-0.3, 0.05, 0.25)),
    ]
    m = trimesh.util.concatenate(parts)
    lo, hi = m.bounds
    m.apply_translation(-(lo + hi) / 2)
    m.apply_scale(1 / (hi - lo).max())
    return m


def blender_camera(pos: np.ndarray) -> np.ndarray:
    """4x4 Blender world-to-camera extrinsic of a camera at ``pos`` (z up) tracking the
    origin: camera looks along its -Z with +Y up (Blender's camera convention)."""
    f = -pos / np.linalg.norm(pos)
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, f)
    R = np.stack((right, up, -f))  # rows: camera axes in the world
    E = np.eye(4)
    E[:3, :3] = R
    E[:3, 3] = -R @ pos
    return E


def blender_render(mesh_obj: trimesh.Trimesh, E: np.ndarray, size: int):
    """Mask (uint8, 255 inside) and Z-depth (background 10) of the mesh imported into
    Blender (object y up -> Blender z up: (x, y, z) -> (x, -z, y)) seen by the camera
    ``E``; focal 1.875 of the image width, pixel centres from -0.5 to 0.5 inclusive, row
    0 at the top."""
    m = mesh_obj.copy()
    T = np.eye(4)
    T[:3, :3] = [[1, 0, 0], [0, 0, -1], [0, 1, 0]]
    m.apply_transform(T)
    R, t = E[:3, :3], E[:3, 3]
    centre = -R.T @ t
    c = np.arange(size) / (size - 1) - 0.5
    x, y = np.meshgrid(c, -c)  # x right, y up (row 0 = top)
    d_cam = np.stack((x / 1.875, y / 1.875, -np.ones_like(x)), -1).reshape(-1, 3)
    d = d_cam @ R  # R^T d
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    loc, ray, _ = embree_intersector(m).intersects_location(
        np.broadcast_to(centre, d.shape), d, multiple_hits=False)
    mask = np.zeros(size * size, np.uint8)
    mask[ray] = 255
    depth = np.full(size * size, 10.0)
    depth[ray] = (loc - centre) @ -R[2]  # distance along the optical axis (-Z_cam)
    return mask.reshape(size, size), depth.reshape(size, size)


def make_fixture(root, models=("m0", "m1"), views=tuple(range(V)), depth=False):
    rng = np.random.default_rng(0)
    mesh = asymmetric_mesh()
    truth = {}
    for mid in models:
        d = root / "renders" / SYNSET / mid
        d.mkdir(parents=True)
        poses = []
        for k in views:
            az, el = rng.uniform(0, 2 * np.pi), np.deg2rad(rng.uniform(-20, 40))
            pos = 2.0 * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
            E = blender_camera(pos)
            mask, z = blender_render(mesh, E, S)
            if depth:  # the release's 16-bit encoding of 0..10
                Image.fromarray(np.round(z / 10 * 65535).astype(np.uint16)).save(
                    d / f"depth_{k}.png")
            rgba = np.zeros((S, S, 4), np.uint8)
            rgba[..., 0] = 200
            rgba[..., 3] = mask
            Image.fromarray(rgba, "RGBA").save(d / f"render_{k}.png")
            savemat(d / f"camera_{k}.mat", {"extrinsic": E, "pos": pos})
            poses.append(pos)
        g = root / "gt" / "downsampled" / SYNSET
        g.mkdir(parents=True, exist_ok=True)
        pts, _ = trimesh.sample.sample_surface(mesh, 3000, seed=1)
        savemat(g / f"{mid}.mat", {"points": pts})
        truth[mid] = np.array(poses)
    (root / "splits").mkdir()
    (root / "splits" / f"{SYNSET}_train.txt").write_text(models[0] + "\n")
    (root / "splits" / f"{SYNSET}_test.txt").write_text("\n".join(models[1:]) + "\n")
    return mesh, truth


def test_formula_is_look_at_of_the_blender_position():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(20, 3))
    q = blender_pos_to_quat(p)
    ql = look_at_quat(torch.tensor(np.stack((p[:, 0], p[:, 2], -p[:, 1]), 1))).numpy()
    np.testing.assert_allclose(np.abs((q * ql).sum(1)), 1.0, atol=1e-12)


def test_fixture_round_trip(tmp_path):
    mesh, truth = make_fixture(tmp_path / "release")
    out = import_original(tmp_path / "release", "car", tmp_path / "data" / "orig", progress=False)
    ds = open_dataset(out)
    assert ds.splits == {"train": ["m0"], "test": ["m1"]} and ds.num_views == V
    assert ds.depths("train") is None
    assert ds.gt_points("test").shape == (1, 8000, 3)
    r = MeshRenderer(MeshRenderSettings(image_size=S, supersample=1))
    for split in ("train", "test"):
        q = torch.from_numpy(np.array(ds.quats(split)[0]))
        ours = r.render(mesh, quat_to_matrix(q.double()).numpy())["mask"] > 127
        theirs = ds.masks(split)[0] > 127
        for k in range(V):
            iou = (ours[k] & theirs[k]).sum() / (ours[k] | theirs[k]).sum()
            # same mesh, same pixel grid: only rays grazing an edge may differ
            assert iou > 0.98, (split, k, iou)
            flipped = theirs[k][::-1]
            assert (ours[k] & flipped).sum() / (ours[k] | flipped).sum() < 0.9
        # camera positions: 2 * (X, Z, -Y) / |p|
        p = truth[ds.splits[split][0]]
        expect = 2 * np.stack((p[:, 0], p[:, 2], -p[:, 1]), 1) / np.linalg.norm(p, axis=1)[:, None]
        np.testing.assert_allclose(ds.cam_pos(split)[0], expect, atol=1e-5)
    # images are composited over white
    img, m = ds.images("train")[0], ds.masks("train")[0]
    assert (img[m == 0] == 255).all() and (img[m == 255][:, 0] == 200).all()
    # a rerun reuses the import
    assert import_original(tmp_path / "release", "car", out, progress=False) == out


def test_fixture_with_depth_and_sparse_view_numbers(tmp_path):
    """render_0, render_2, render_10 (numeric order, as the original reads them) with
    16-bit depth maps: depths match the project's renderer at the converted poses."""
    mesh, _ = make_fixture(tmp_path / "release", views=(10, 0, 2), depth=True)
    out = import_original(tmp_path / "release", SYNSET, tmp_path / "out", progress=False)
    ds = open_dataset(out)
    assert ds.num_views == 3 and ds.manifest["has_depth"]
    q = torch.from_numpy(np.array(ds.quats("train")[0])).double()
    ours = MeshRenderer(MeshRenderSettings(image_size=S, supersample=1)).render(
        mesh, quat_to_matrix(q).numpy())
    theirs = ds.depths("train")[0].astype(np.float32)
    both = (ours["mask"] > 127) & (ds.masks("train")[0] > 127)
    assert both.sum() > 100
    # float16 storage: ~2e-3 resolution at depth 2
    np.testing.assert_allclose(theirs[both], ours["depth"][both], atol=5e-3)
    assert (theirs[ds.masks("train")[0] == 0] == 10).all()


@pytest.mark.parametrize("damage", ["corrupt_png", "truncated_png", "missing_camera",
                                    "missing_object", "bad_extrinsic", "missing_gt"])
def test_bad_inputs_are_skipped_with_reason(tmp_path, damage):
    src = tmp_path / "release"
    make_fixture(src, models=("m0", "m1", "m2"))
    d = src / "renders" / SYNSET / "m2"
    if damage == "corrupt_png":
        (d / "render_1.png").write_bytes(b"not a png at all")
        needle = "render_1.png: corrupt or truncated image"
    elif damage == "truncated_png":
        data = (d / "render_2.png").read_bytes()
        (d / "render_2.png").write_bytes(data[: len(data) // 2])
        needle = "render_2.png: corrupt or truncated image"
    elif damage == "missing_camera":
        (d / "camera_0.mat").unlink()
        needle = "camera_0.mat: file is missing"
    elif damage == "missing_object":
        (src / "splits" / f"{SYNSET}_test.txt").write_text("m1\nm2\nghost\n")
        needle = "ghost is missing"
    elif damage == "bad_extrinsic":
        E = blender_camera(np.array([0.0, 2.0, 0.5]))
        savemat(d / "camera_1.mat", {"extrinsic": E, "pos": np.array([2.0, 0.0, 0.5])})
        needle = "camera_1.mat: 'extrinsic' camera centre"
    else:
        (src / "gt" / "downsampled" / SYNSET / "m2.mat").unlink()
        needle = "m2.mat: file is missing"
    with pytest.warns(UserWarning, match="skipping"):
        out = import_original(src, SYNSET, tmp_path / "out", progress=False)
    ds = open_dataset(out)
    assert ds.manifest["num_skipped"] == 1
    reason = ds.manifest["skipped"]["test"][0]["reason"]
    assert needle in reason, reason
    n_ok = 2 if damage == "missing_object" else 1  # m1 (+ m2 when only ghost is bad)
    assert len(ds.splits["test"]) == n_ok and ds.masks("test").shape[0] == n_ok
    with pytest.raises(ValueError, match=needle.split(":")[0]):
        import_original(src, SYNSET, tmp_path / "strict", strict=True, progress=False)


def test_no_split_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match="split lists"):
        import_original(tmp_path, SYNSET, tmp_path / "out", progress=False)
    out = tmp_path / "x"
    out.mkdir()
    with pytest.raises(DatasetFormatError):
        open_dataset(out)
