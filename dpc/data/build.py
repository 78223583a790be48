"""Dataset builder: meshes from a source -> rendered views + GT points -> on-disk format.

Resumable: each finished object is written atomically to ``<out>/.partial/objects/``;
a rerun of the same command skips finished objects. The final arrays and, last of all,
``manifest.json`` are written only when every object is done, so an interrupted build
never looks complete. A rerun after completion finds the manifest with the same settings
key and returns at once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

from dpc.data.config import BuildSettings, make_settings, settings_for_name
from dpc.data.format import (
    ARRAYS,
    FORMAT_VERSION,
    MANIFEST,
    DatasetFormatError,
    read_manifest,
    sha256_file,
    write_json_atomic,
)
from dpc.data.mesh_render import MeshRenderer, MeshRenderSettings, embree_intersector
from dpc.data.mesh_utils import MeshError, check_mesh, sample_visible_surface
from dpc.data.sources.base import MeshSource, object_seed

log = logging.getLogger(__name__)

PARTIAL = ".partial"


class ObjectSkipped(Exception):
    """Raised inside a worker for an object the builder skips (with a warning)."""


def make_source(s: BuildSettings) -> MeshSource:
    """The mesh source of a build's category."""
    sizes = {"train": s.train, "val": s.val, "test": s.test}
    if s.category == "car":
        from dpc.data.sources.car import CarSource

        return CarSource(sizes, seed=s.seed)
    if s.category == "chair":
        from dpc.data.sources.chair import ChairSource

        return ChairSource(sizes, seed=s.seed)
    if s.category == "airplane":
        from dpc.data.sources.airplane import AirplaneSource

        return AirplaneSource(s.source, seed=s.seed, val_fraction=s.val_fraction,
                              test_fraction=s.test_fraction)
    if s.category == "folder":
        from dpc.data.sources.files import FolderSource

        if not s.source:
            raise ValueError("category=folder needs source=<folder of .obj/.ply/.off/.glb files>")
        return FolderSource(s.source, seed=s.seed, val_fraction=s.val_fraction,
                            test_fraction=s.test_fraction)
    raise ValueError(f"unknown category {s.category!r}")


def sample_views(s: BuildSettings, object_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded random views of one object: azimuth uniform on [0, 2 pi), elevation uniform
    in [elevation_min, elevation_max] degrees. Returns quats [V, 4], cam_pos [V, 3] and
    rotation matrices [V, 3, 3] (object -> camera)."""
    import torch

    from dpc.camera import camera_position, quat_to_matrix, view_quat

    rng = np.random.default_rng(object_seed(s.seed, "views", object_id))
    az = rng.uniform(0.0, 2 * np.pi, s.views)
    el = np.deg2rad(rng.uniform(s.elevation_min, s.elevation_max, s.views))
    q = view_quat(torch.from_numpy(az), torch.from_numpy(el))  # float64
    pos = camera_position(q)
    R = quat_to_matrix(q)
    return q.float().numpy(), pos.float().numpy(), R.numpy()


# ---- worker side -------------------------------------------------------------------------

_W: dict = {}


def _init_worker(source: MeshSource, settings: BuildSettings, staging: str) -> None:
    import torch

    torch.set_num_threads(1)
    _W["source"] = source
    _W["settings"] = settings
    _W["staging"] = Path(staging)
    s = settings
    _W["renderer"] = MeshRenderer(
        MeshRenderSettings(image_size=s.image_size, supersample=s.supersample)
    )


def normalize_mesh(mesh, s: BuildSettings) -> None:
    """Scale ``mesh`` in place to the dataset's size convention (``s.normalize``): sources
    give longest side 1 (``cube``); ``diagonal`` makes the bounding-box diagonal 1."""
    if s.normalize == "diagonal":
        mesh.apply_scale(1.0 / float(np.linalg.norm(mesh.bounds[1] - mesh.bounds[0])))


def render_object(source: MeshSource, s: BuildSettings, renderer: MeshRenderer,
                  object_id: str) -> dict[str, np.ndarray]:
    """Load, check, render and sample one object. Raises ObjectSkipped for bad meshes."""
    try:
        mesh = source.load(object_id)
        check_mesh(mesh, f"{source.name}:{object_id}")
    except (MeshError, ValueError, OSError) as exc:
        raise ObjectSkipped(str(exc)) from exc
    normalize_mesh(mesh, s)
    quats, cam_pos, R = sample_views(s, object_id)
    inter = embree_intersector(mesh)
    views = renderer.render(mesh, R, intersector=inter)
    rng = np.random.default_rng(object_seed(s.seed, "gt", object_id))
    dense = sample_visible_surface(mesh, s.gt_points_dense, rng, intersector=inter)
    sub = dense[rng.choice(len(dense), s.gt_points, replace=False)]
    out = {
        "images": views["image"], "masks": views["mask"], "quats": quats, "cam_pos": cam_pos,
        "gt_dense": dense, "gt_points": sub,
    }
    if s.depth:
        out["depths"] = views["depth"].astype(np.float16)
    return out


def _work(task: tuple[str, str]) -> tuple[str, str, str | None]:
    split, object_id = task
    staging: Path = _W["staging"]
    try:
        arrays = render_object(_W["source"], _W["settings"], _W["renderer"], object_id)
    except ObjectSkipped as exc:
        write_json_atomic(staging / "failed" / split / f"{object_id}.json", {"reason": str(exc)})
        return split, object_id, str(exc)
    f = staging / "objects" / split / f"{object_id}.npz"
    tmp = f.with_name(f.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, f)
    return split, object_id, None


# ---- driver ------------------------------------------------------------------------------


def build_dataset(settings: BuildSettings | None = None, mesh_source: MeshSource | None = None,
                  overwrite: bool = False, **kwargs) -> Path:
    """Build (or reuse, or resume) a dataset; returns its folder.

    Args:
        settings: build settings (or give keyword arguments, see ``make_settings``).
        mesh_source: a mesh source object replacing the category's (tests, custom sources).
        overwrite: delete an existing complete dataset built with other settings.
    """
    s = settings or make_settings(**kwargs)
    out = Path(s.root) / s.dataset_name
    key = s.key()
    if (out / MANIFEST).exists():
        try:
            manifest = read_manifest(out)
        except DatasetFormatError:
            if not overwrite:
                raise
            manifest = None
        # Same settings: reuse. The category's own source is not re-described here (the
        # airplane catalogue takes seconds); an explicitly given source must also match.
        same_source = mesh_source is None or (
            manifest is not None
            and manifest.get("source") == json.loads(json.dumps(mesh_source.describe())))
        if manifest is not None and manifest.get("key") == key and same_source:
            log.info("dataset %s is complete; reusing it", out)
            return out
        if not overwrite:
            raise DatasetFormatError(
                f"{out} holds a dataset built with other settings (key "
                f"{manifest.get('key') if manifest else '?'} != {key}); choose another name=..., "
                "or pass overwrite=true to replace it"
            )
        shutil.rmtree(out)
    src = mesh_source or make_source(s)
    identity = {"settings": s.identity(), "source": src.describe()}
    staging = out / PARTIAL
    key_file = staging / "key.json"
    if staging.exists():
        try:
            old = json.loads(key_file.read_text())
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(identity)):
            warnings.warn(f"{staging}: unfinished build with other settings; starting over",
                          stacklevel=2)
            shutil.rmtree(staging)
    ids = src.split_ids()
    for split in ids:
        (staging / "objects" / split).mkdir(parents=True, exist_ok=True)
        (staging / "failed" / split).mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        write_json_atomic(key_file, identity)

    todo = [
        (split, oid)
        for split, lst in ids.items()
        for oid in lst
        if not (staging / "objects" / split / f"{oid}.npz").exists()
        and not (staging / "failed" / split / f"{oid}.json").exists()
    ]
    total = sum(len(v) for v in ids.values())
    t0 = time.time()
    _run_tasks(todo, src, s, staging, total)
    elapsed_render = time.time() - t0
    _assemble(out, staging, ids, s, src, key, elapsed_render)
    return out


def _run_tasks(todo, src, s: BuildSettings, staging: Path, total: int) -> None:
    if not todo:
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=total - len(todo), desc=f"build {s.dataset_name}",
               unit="obj", disable=None if s.progress else True, smoothing=0.05)
    try:
        if s.workers <= 0:
            _init_worker(src, s, str(staging))
            for task in todo:
                _report(_work(task))
                bar.update(1)
        else:
            # spawn: workers must not inherit the parent's torch/OpenMP thread state
            ctx = mp.get_context("spawn")
            with ctx.Pool(s.workers, initializer=_init_worker,
                          initargs=(src, s, str(staging))) as pool:
                for res in pool.imap_unordered(_work, todo, chunksize=4):
                    _report(res)
                    bar.update(1)
    finally:
        bar.close()


def _report(res) -> None:
    split, oid, err = res
    if err is not None:
        warnings.warn(f"skipping {split}/{oid}: {err}", stacklevel=3)


def _assemble(out: Path, staging: Path, ids: dict[str, list[str]], s: BuildSettings,
              src: MeshSource, key: str, elapsed_render: float) -> None:
    """Stack the per-object files into the final arrays, then write the manifest."""
    from numpy.lib.format import open_memmap

    names = [a for a in ARRAYS if a != "depths" or s.depth]
    splits_meta: dict = {}
    skipped: dict = {}
    checksums: dict = {}
    for split, lst in ids.items():
        ok = [o for o in lst if (staging / "objects" / split / f"{o}.npz").exists()]
        bad = [o for o in lst if o not in set(ok)]
        skipped[split] = []
        for o in bad:
            f = staging / "failed" / split / f"{o}.json"
            reason = json.loads(f.read_text())["reason"] if f.exists() else "missing output"
            skipped[split].append({"id": o, "reason": reason})
        d = out / split
        d.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for i, o in enumerate(ok):
            with np.load(staging / "objects" / split / f"{o}.npz") as z:
                if not arrays:
                    for n in names:
                        arrays[n] = open_memmap(d / f"{n}.npy.tmp", mode="w+",
                                                dtype=z[n].dtype, shape=(len(ok),) + z[n].shape)
                for n in names:
                    arrays[n][i] = z[n]
        if not ok:  # an empty split still gets well-formed empty arrays
            S, V = s.image_size, s.views
            shapes = {"images": ((0, V, S, S, 3), np.uint8), "masks": ((0, V, S, S), np.uint8),
                      "depths": ((0, V, S, S), np.float16), "quats": ((0, V, 4), np.float32),
                      "cam_pos": ((0, V, 3), np.float32),
                      "gt_dense": ((0, s.gt_points_dense, 3), np.float32),
                      "gt_points": ((0, s.gt_points, 3), np.float32)}
            for n in names:
                arrays[n] = open_memmap(d / f"{n}.npy.tmp", mode="w+", dtype=shapes[n][1],
                                        shape=shapes[n][0])
        for arr in arrays.values():
            arr.flush()
        arrays.clear()  # drop the memmaps before renaming their files
        for n in names:
            os.replace(d / f"{n}.npy.tmp", d / f"{n}.npy")
            checksums[f"{split}/{n}.npy"] = sha256_file(d / f"{n}.npy")
        write_json_atomic(d / "objects.json", ok)
        splits_meta[split] = {"count": len(ok), "skipped": len(bad)}
    n_skipped = sum(len(v) for v in skipped.values())
    if n_skipped:
        warnings.warn(f"{out}: skipped {n_skipped} object(s); see 'skipped' in the manifest",
                      stacklevel=3)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": s.dataset_name,
        "category": s.category,
        "key": key,
        "num_views": s.views,
        "image_size": s.image_size,
        "has_depth": bool(s.depth),
        "splits": splits_meta,
        "num_skipped": n_skipped,
        "skipped": skipped,
        "settings": s.identity(),
        "source": src.describe(),
        "renderer": {
            **MeshRenderSettings(image_size=s.image_size, supersample=s.supersample).to_dict(),
            "engine": "trimesh + embree ray casting",
            "pixel_convention": "pixel (i, j) at (x_right, y_up) = (j/(S-1)-0.5, 0.5-i/(S-1))",
            "quaternion_convention": "(w, x, y, z), object -> camera (depth, up, right)",
            "depth": "optical-axis distance from the camera; background 10",
        },
        "gt_sampling": "area-uniform surface samples visible from outside (64 directions); "
                       "gt_points = random subset of gt_dense",
        "checksums": checksums,
        "build_seconds": round(elapsed_render, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json_atomic(out / MANIFEST, manifest)
    shutil.rmtree(staging, ignore_errors=True)


def ensure_dataset(cfg_or_name=None, root: str | os.PathLike = "data", **overrides) -> Path:
    """Path of a built dataset, building it first if it is missing (with a progress bar).

    Args:
        cfg_or_name: a dataset name (``"car"``, ``"car_quick"``: ``<category>[_<preset>]``),
            a mapping / DictConfig of
            :class:`~dpc.data.config.BuildSettings` fields (e.g. ``{"category": "car",
            "preset": "small"}``), or the path of an existing dataset folder.
        root: where datasets live (``<root>/<name>``) unless the mapping sets ``root``.
        **overrides: further BuildSettings fields.
    """
    if cfg_or_name is None:
        cfg = {}
    elif isinstance(cfg_or_name, (str, os.PathLike)):
        p = Path(cfg_or_name)
        if (p / MANIFEST).exists():
            read_manifest(p)  # version check
            return p
        cfg = settings_for_name(str(cfg_or_name))
    else:
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(cfg_or_name, DictConfig):
                cfg_or_name = OmegaConf.to_container(cfg_or_name, resolve=True)
        except ImportError:  # pragma: no cover
            pass
        cfg = dict(cfg_or_name)
    cfg.setdefault("root", str(root))
    cfg.update(overrides)
    return build_dataset(make_settings(**cfg))
