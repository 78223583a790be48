"""Importer for the original DPC release's data layout (ShapeNet renders).

Layout (``<src>`` is the release's data folder)::

    renders/<synset>/<model>/render_<k>.png    RGBA 128x128; alpha = mask; composite on white
    renders/<synset>/<model>/camera_<k>.mat    extrinsic (4x4 Blender world-to-camera), pos (3)
    gt/downsampled/<synset>/<model>.mat        points (N x 3), object frame
    splits/<synset>_<split>.txt                model ids, one per line (split = train/val/test)

Camera conversion (docs/METHOD.md, section 1): the view quaternion depends on the Blender camera
position only. :func:`blender_pos_to_quat` implements the original's yaw/pitch formula;
geometrically the camera sits at (X, Z, -Y) in the object frame (y up), looking at the
origin with +y up, i.e. ``look_at_quat((X, Z, -Y))`` (tested). The project's projection
writes rows top-down, so the PNGs are used as they are (the original flipped rows
instead). ``extrinsic`` is checked for consistency: its camera centre ``-R^T t`` must
point along ``pos``.

Optional ``depth_<k>.png`` (16-bit, 0..10) are imported when present. Renders are taken in
numeric order of k (the first V). The release has only the downsampled GT: ``gt_points`` (8000) and
``gt_dense`` (16000) are resampled from ``points`` (without replacement where there are
enough points, else with replacement); the manifest says so.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from dpc.data.format import (
    FORMAT_VERSION,
    MANIFEST,
    DatasetFormatError,
    read_manifest,
    sha256_file,
    write_json_atomic,
)
from dpc.data.sources.base import object_seed

SYNSETS = {"chair": "03001627", "car": "02958343", "airplane": "02691156"}


class OriginalImportError(ValueError):
    """An object of the original layout that cannot be imported (names the file)."""


def blender_pos_to_quat(pos: np.ndarray) -> np.ndarray:
    """Camera quaternions ``[..., 4]`` (w, x, y, z; project convention) of Blender camera
    positions ``[..., 3]`` (Blender world, z up), as in the original DPC code:
    yaw = acos(X / sqrt(X^2 + Y^2)) (2 pi - yaw when Y > 0), yaw += pi, pitch = asin(Z)
    of the normalised position, roll 0, q = q_x(roll) q_z(pitch) q_y(yaw)."""
    import torch

    from dpc.camera import quat_from_axis_angle, quat_mul

    p = np.asarray(pos, np.float64)
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    X, Y, Z = p[..., 0], p[..., 1], p[..., 2]
    yaw = np.arccos(np.clip(X / np.maximum(np.sqrt(X**2 + Y**2), 1e-12), -1.0, 1.0))
    yaw = np.where(Y > 0, 2 * np.pi - yaw, yaw) + np.pi
    pitch = np.arcsin(np.clip(Z, -1.0, 1.0))
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)
    ax = lambda i: t(np.broadcast_to(np.eye(3)[i], p.shape).copy())
    q_yaw = quat_from_axis_angle(ax(1), t(yaw))
    q_pitch = quat_from_axis_angle(ax(2), t(pitch))
    q = quat_mul(q_pitch, q_yaw)  # roll = 0: q_x(0) is the identity
    q = torch.where(q[..., :1] < 0, -q, q)
    return q.numpy()


def _load_mat(path: Path, keys: tuple[str, ...]) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise OriginalImportError(f"{path}: file is missing")
    try:
        d = loadmat(path)
    except Exception as exc:  # scipy raises ValueError/TypeError/... on corrupt files
        raise OriginalImportError(f"{path}: cannot read .mat file: {exc}") from exc
    for k in keys:
        if k not in d:
            have = sorted(x for x in d if not x.startswith("__"))
            raise OriginalImportError(f"{path}: no {k!r} variable (has {have})")
    return d


def _load_rgba(path: Path, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """RGB composited over white uint8 [S, S, 3] and mask uint8 [S, S] of a render PNG."""
    from PIL import Image

    if not path.is_file():
        raise OriginalImportError(f"{path}: file is missing")
    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later
            rgba = np.asarray(im.convert("RGBA"), np.float32)
    except (OSError, ValueError, SyntaxError) as exc:
        raise OriginalImportError(f"{path}: corrupt or truncated image: {exc}") from exc
    if rgba.shape[0] != rgba.shape[1] or (size is not None and rgba.shape[0] != size):
        raise OriginalImportError(f"{path}: image is {rgba.shape[1]}x{rgba.shape[0]}, expected "
                           f"{size}x{size}" if size else f"{path}: image is not square")
    a = rgba[..., 3:4] / 255.0
    rgb = rgba[..., :3] * a + 255.0 * (1.0 - a)
    return np.round(rgb).astype(np.uint8), rgba[..., 3].astype(np.uint8)


def _resample(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return points[rng.choice(len(points), n, replace=len(points) < n)].astype(np.float32)


def _import_split(d: Path, src: Path, synset: str, split: str, ids: list[str], num_views: int,
                  S: int, gt_sizes: tuple[int, int], seed: int, has_depth: bool, strict: bool,
                  progress: bool, checksums: dict) -> list[dict]:  # fmt: skip
    """Import one split's objects into ``d`` (arrays, ``objects.json``; their checksums
    into ``checksums``); returns the skipped objects."""
    from numpy.lib.format import open_memmap
    from tqdm.auto import tqdm

    gt_points, gt_points_dense = gt_sizes
    d.mkdir()
    n = len(ids)
    shapes = {"images": ((n, num_views, S, S, 3), np.uint8),
              "masks": ((n, num_views, S, S), np.uint8),
              "quats": ((n, num_views, 4), np.float32),
              "cam_pos": ((n, num_views, 3), np.float32),
              **({"depths": ((n, num_views, S, S), np.float16)} if has_depth else {}),
              "gt_dense": ((n, gt_points_dense, 3), np.float32),
              "gt_points": ((n, gt_points, 3), np.float32)}
    arrs = {k: open_memmap(d / f"{k}.npy.tmp", mode="w+", dtype=dt, shape=sh)
            for k, (sh, dt) in shapes.items()}
    ok: list[str] = []
    skipped: list[dict] = []
    for oid in tqdm(ids, desc=f"import {split}", disable=None if progress else True):
        try:
            row = _import_object(src, synset, oid, num_views, S, gt_points,
                                 gt_points_dense, seed, split, has_depth)
        except OriginalImportError as exc:
            if strict:
                raise
            warnings.warn(f"skipping {split}/{oid}: {exc}", stacklevel=3)
            skipped.append({"id": oid, "reason": str(exc)})
            continue
        i = len(ok)
        for k, v in row.items():
            arrs[k][i] = v
        ok.append(oid)
    for k, (sh, dt) in shapes.items():
        arrs[k].flush()
        if len(ok) < n:  # compact: copy the imported rows into a right-sized file
            fin = open_memmap(d / f"{k}.npy", mode="w+", dtype=dt, shape=(len(ok),) + sh[1:])
            fin[:] = arrs[k][: len(ok)]
            fin.flush()
            del fin
            arrs[k] = None
            os.unlink(d / f"{k}.npy.tmp")
        else:
            arrs[k] = None
            os.replace(d / f"{k}.npy.tmp", d / f"{k}.npy")
        checksums[f"{split}/{k}.npy"] = sha256_file(d / f"{k}.npy")
    write_json_atomic(d / "objects.json", ok)
    return skipped


def import_original(
    src: str | os.PathLike,
    synset: str,
    out: str | os.PathLike,
    splits_dir: str | os.PathLike | None = None,
    num_views: int | None = None,
    gt_points: int = 8000,
    gt_points_dense: int = 16000,
    strict: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Convert the original release's layout into a dataset folder ``out``.

    Args:
        src: folder holding ``renders/``, ``gt/`` and (unless ``splits_dir``) ``splits/``.
        synset: ShapeNet synset id, or one of ``chair``, ``car``, ``airplane``.
        out: the dataset folder to write (``<root>/<name>``).
        splits_dir: folder of ``<synset>_<split>.txt`` lists (default ``<src>/splits``).
        num_views: views per object (default: the number of ``render_*.png`` of the first
            listed object).
        strict: raise on the first bad object instead of skipping it with a warning.

    Objects with a missing/corrupt image or camera file, a missing GT file, or listed in
    a split file without a render folder are skipped with a warning naming the file, and
    counted in the manifest (``skipped``), unless ``strict``.
    """
    src, out = Path(src), Path(out)
    synset = SYNSETS.get(synset, synset)
    splits_dir = Path(splits_dir) if splits_dir else src / "splits"
    lists = {}
    for split in ("train", "val", "test"):
        f = splits_dir / f"{synset}_{split}.txt"
        if f.is_file():
            lists[split] = [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]
    if not lists:
        raise FileNotFoundError(f"no split lists {splits_dir}/{synset}_<train|val|test>.txt")
    identity = {"importer": "original v1", "src": str(src.resolve()), "synset": synset,
                "lists": {k: len(v) for k, v in lists.items()}, "num_views": num_views,
                "gt_points": gt_points, "gt_points_dense": gt_points_dense, "seed": seed}
    key = object_seed(0, json.dumps(identity, sort_keys=True)).to_bytes(8, "little").hex()
    if (out / MANIFEST).exists():
        m = read_manifest(out)
        if m.get("key") == key:
            return out
        raise DatasetFormatError(f"{out} holds another dataset (key {m.get('key')} != {key}); "
                                 "choose another output folder or delete it")
    render_root = src / "renders" / synset
    first = next((render_root / o for v in lists.values() for o in v
                  if (render_root / o).is_dir()), None)
    if first is None:
        raise FileNotFoundError(f"none of the listed models has a folder under {render_root}")
    first_views = _view_indices(first)
    if not first_views:
        raise FileNotFoundError(f"{first}: no render_<k>.png files")
    if num_views is None:
        num_views = len(first_views)
    S = _load_rgba(first / f"render_{first_views[0]}.png", None)[0].shape[0]
    # depth_<k>.png (16 bit, 0..10) is optional in the release: import it when the first
    # object has it, and then require it of every object
    has_depth = (first / f"depth_{first_views[0]}.png").is_file()

    if out.exists():
        shutil.rmtree(out)  # no manifest: an unfinished import, start over
    out.mkdir(parents=True)
    t0 = time.time()
    splits_meta, skipped, checksums = {}, {}, {}
    for split, ids in lists.items():
        skipped[split] = _import_split(out / split, src, synset, split, ids, num_views, S,
                                       (gt_points, gt_points_dense), seed, has_depth, strict,
                                       progress, checksums)  # fmt: skip
        splits_meta[split] = {"count": len(ids) - len(skipped[split]),
                              "skipped": len(skipped[split])}  # fmt: skip
    n_skipped = sum(len(v) for v in skipped.values())
    if n_skipped:
        warnings.warn(f"{out}: skipped {n_skipped} object(s); see 'skipped' in the manifest",
                      stacklevel=2)
    manifest = {
        "format_version": FORMAT_VERSION, "name": out.name, "category": synset, "key": key,
        "num_views": num_views, "image_size": S, "has_depth": has_depth, "splits": splits_meta,
        "num_skipped": n_skipped, "skipped": skipped, "settings": identity,
        "source": {"name": "original_release", "src": str(src.resolve()), "synset": synset},
        "renderer": {"engine": "original release renders (Blender)", "camera_distance": 2.0,
                     "focal_length": 1.875,
                     "quaternion_convention": "(w, x, y, z), object -> camera (depth, up, right)",
                     "camera_conversion": "docs/METHOD.md, section 1 yaw/pitch formula from pos"},
        "gt_sampling": "gt_points and gt_dense resampled from gt/downsampled points "
                       "(with replacement when too few)",
        "checksums": checksums, "build_seconds": round(time.time() - t0, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(out / MANIFEST, manifest)
    return out


def _view_indices(folder: Path) -> list[int]:
    """The k of every ``render_<k>.png`` in ``folder``, in numeric order (the original
    takes the first V of them and reads ``camera_<k>.mat`` by the same k)."""
    ks = []
    for f in folder.glob("render_*.png"):
        stem = f.stem[len("render_"):]
        if stem.isdigit():
            ks.append(int(stem))
    return sorted(ks)


def _load_depth(path: Path, size: int) -> np.ndarray:
    """Depth map float32 [S, S] from a 16-bit PNG encoding 0..10 (the release's format)."""
    from PIL import Image

    if not path.is_file():
        raise OriginalImportError(f"{path}: file is missing")
    try:
        with Image.open(path) as im:
            im.load()
            d = np.asarray(im, np.float32)
    except (OSError, ValueError, SyntaxError) as exc:
        raise OriginalImportError(f"{path}: corrupt or truncated image: {exc}") from exc
    if d.shape != (size, size):
        raise OriginalImportError(f"{path}: depth map is {d.shape}, expected ({size}, {size})")
    return d * (10.0 / 65535.0)


def _import_object(src: Path, synset: str, oid: str, V: int, S: int, n_gt: int, n_dense: int,
                   seed: int, split: str, has_depth: bool = False) -> dict[str, np.ndarray]:
    folder = src / "renders" / synset / oid
    if not folder.is_dir():
        raise OriginalImportError(f"listed in splits/{synset}_{split}.txt but {folder} is missing")
    ks = _view_indices(folder)
    if len(ks) < V:
        raise OriginalImportError(f"{folder}: {len(ks)} render_<k>.png files, expected {V}")
    images = np.empty((V, S, S, 3), np.uint8)
    masks = np.empty((V, S, S), np.uint8)
    depths = np.empty((V, S, S), np.float16) if has_depth else None
    pos = np.empty((V, 3), np.float64)
    for v, k in enumerate(ks[:V]):
        images[v], masks[v] = _load_rgba(folder / f"render_{k}.png", S)
        if depths is not None:
            depths[v] = _load_depth(folder / f"depth_{k}.png", S)
        cam_file = folder / f"camera_{k}.mat"
        cam = _load_mat(cam_file, ("extrinsic", "pos"))
        p = np.asarray(cam["pos"], np.float64).reshape(-1)
        E = np.asarray(cam["extrinsic"], np.float64)
        if p.shape != (3,) or not np.isfinite(p).all() or np.linalg.norm(p) < 1e-6:
            raise OriginalImportError(f"{cam_file}: 'pos' must be a finite nonzero 3-vector")
        if E.shape not in ((4, 4), (3, 4)) or not np.isfinite(E).all():
            raise OriginalImportError(
                f"{cam_file}: 'extrinsic' must be a finite 4x4 (or 3x4) matrix")
        centre = -E[:3, :3].T @ E[:3, 3]
        if np.linalg.norm(centre) > 1e-6:
            cosang = centre @ p / (np.linalg.norm(centre) * np.linalg.norm(p))
            if cosang < 0.999:
                raise OriginalImportError(
                    f"{cam_file}: 'extrinsic' camera centre {centre.round(3)} "
                    f"does not point along 'pos' {p.round(3)}")
        pos[v] = p
    q = blender_pos_to_quat(pos)
    # object-frame camera position at the project's distance 2 (direction from pos)
    pn = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    cam_pos = 2.0 * np.stack((pn[:, 0], pn[:, 2], -pn[:, 1]), 1)
    gt_file = src / "gt" / "downsampled" / synset / f"{oid}.mat"
    pts = np.asarray(_load_mat(gt_file, ("points",))["points"], np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise OriginalImportError(f"{gt_file}: 'points' must be N x 3 with N > 0, got {pts.shape}")
    if not np.isfinite(pts).all():
        raise OriginalImportError(f"{gt_file}: 'points' has NaN or infinite values")
    rng = np.random.default_rng(object_seed(seed, "gt", oid))
    out = {"images": images, "masks": masks, "quats": q.astype(np.float32),
           "cam_pos": cam_pos.astype(np.float32), "gt_dense": _resample(pts, n_dense, rng),
           "gt_points": _resample(pts, n_gt, rng)}
    if depths is not None:
        out["depths"] = depths
    return out
