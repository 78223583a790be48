"""The on-disk dataset format (version 1) and its reader.

A dataset is a folder ``<root>/<name>/``::

    manifest.json             written last: its presence means the dataset is complete
    <split>/objects.json      object ids, in array order
    <split>/images.npy        uint8   [n, V, S, S, 3]  RGB on white
    <split>/masks.npy         uint8   [n, V, S, S]     255 = object (anti-aliased)
    <split>/depths.npy        float16 [n, V, S, S]     optical-axis depth, background 10
    <split>/quats.npy         float32 [n, V, 4]        camera quaternions (w, x, y, z)
    <split>/cam_pos.npy       float32 [n, V, 3]        camera positions, object frame
    <split>/gt_dense.npy      float32 [n, 16000, 3]    GT surface points
    <split>/gt_points.npy     float32 [n, 8000, 3]     GT, downsampled (paper's 8k set)

Arrays are plain ``.npy`` files opened with ``np.load(mmap_mode="r")``, so opening a
dataset costs milliseconds and indexing reads only the pages it touches. The manifest
holds the format version, counts, the build settings, renderer and camera settings,
skipped objects with reasons, and a SHA-256 per array file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("images", "masks", "depths", "quats", "cam_pos", "gt_dense", "gt_points")


class DatasetFormatError(ValueError):
    """A dataset folder that is incomplete, corrupt or from another format version."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` via a temporary file and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the dataset folder ``path``; raises naming the file on any problem."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        if (path / ".partial").exists():
            raise DatasetFormatError(
                f"{path} is an unfinished build (no {MANIFEST}; a .partial folder is there): "
                "re-run the same build command to resume it"
            )
        raise DatasetFormatError(f"{mf} not found: {path} is not a built dataset")
    try:
        with open(mf) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetFormatError(f"{mf} is not valid JSON: {exc}") from exc
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DatasetFormatError(
            f"{mf} has format_version {version!r}; this dpc reads version {FORMAT_VERSION}. "
            "Rebuild the dataset (delete the folder and run the build again)."
        )
    return manifest


class DatasetInfo:
    """Reader of a built dataset (memory-mapped arrays).

    Args:
        path: the dataset folder (``<root>/<name>``).
        verify: also recompute every array's SHA-256 against the manifest (slow for
            large sets: about 1 s per GB).
    """

    def __init__(self, path: str | os.PathLike, verify: bool = False):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.num_views = int(self.manifest["num_views"])
        self.image_size = int(self.manifest["image_size"])
        self.splits: dict[str, list[str]] = {}
        for split in self.manifest["splits"]:
            ids_file = self.path / split / "objects.json"
            try:
                with open(ids_file) as f:
                    self.splits[split] = list(json.load(f))
            except (OSError, json.JSONDecodeError) as exc:
                raise DatasetFormatError(f"{ids_file}: cannot read object list: {exc}") from exc
            n = self.manifest["splits"][split]["count"]
            if len(self.splits[split]) != n:
                raise DatasetFormatError(
                    f"{ids_file} lists {len(self.splits[split])} objects, manifest says {n}"
                )
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        if verify:
            self.verify()

    def __repr__(self) -> str:
        counts = {s: len(v) for s, v in self.splits.items()}
        return (f"DatasetInfo({str(self.path)!r}, splits={counts}, views={self.num_views}, "
                f"size={self.image_size})")

    def _array(self, split: str, name: str) -> np.ndarray:
        if split not in self.splits:
            raise KeyError(f"split {split!r} not in {self.path} (has {sorted(self.splits)})")
        key = (split, name)
        if key not in self._cache:
            f = self.path / split / f"{name}.npy"
            try:
                arr = np.load(f, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DatasetFormatError(f"{f}: cannot open array: {exc}") from exc
            n = len(self.splits[split])
            if arr.shape[0] != n:
                raise DatasetFormatError(f"{f} has {arr.shape[0]} rows, expected {n} objects")
            self._cache[key] = arr
        return self._cache[key]

    def images(self, split: str) -> np.ndarray:
        """uint8 [n_obj, V, S, S, 3], RGB on white (memmap)."""
        return self._array(split, "images")

    def masks(self, split: str) -> np.ndarray:
        """uint8 [n_obj, V, S, S], 255 = object (memmap)."""
        return self._array(split, "masks")

    def depths(self, split: str) -> np.ndarray | None:
        """float16 [n_obj, V, S, S] optical-axis depth, background 10 (memmap), or None."""
        if not self.manifest.get("has_depth", True):
            return None
        return self._array(split, "depths")

    def quats(self, split: str) -> np.ndarray:
        """float32 [n_obj, V, 4] camera quaternions (w, x, y, z), project convention."""
        return self._array(split, "quats")

    def cam_pos(self, split: str) -> np.ndarray:
        """float32 [n_obj, V, 3] camera positions in the object frame."""
        return self._array(split, "cam_pos")

    def gt_points(self, split: str, dense: bool = False) -> np.ndarray:
        """float32 [n_obj, 8000, 3] ground-truth points (dense=True: [n_obj, 16000, 3])."""
        return self._array(split, "gt_dense" if dense else "gt_points")

    def verify(self) -> None:
        """Recompute each array file's SHA-256 and compare with the manifest."""
        for rel, digest in self.manifest.get("checksums", {}).items():
            f = self.path / rel
            if not f.is_file():
                raise DatasetFormatError(f"{f} is missing")
            got = sha256_file(f)
            if got != digest:
                raise DatasetFormatError(f"{f}: checksum mismatch (file changed or corrupt)")


def open_dataset(path: str | os.PathLike, verify: bool = False) -> DatasetInfo:
    """Open a built dataset folder; see :class:`DatasetInfo`."""
    return DatasetInfo(path, verify=verify)
