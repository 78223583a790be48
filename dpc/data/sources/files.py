"""Sources backed by mesh files: a generic folder of meshes, split by seeded hashing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from dpc.data.mesh_utils import MeshError, normalize_mesh
from dpc.data.sources.base import MeshSource, object_seed

MESH_SUFFIXES = (".obj", ".ply", ".off", ".glb", ".gltf", ".stl")


def split_by_hash(ids: list[str], seed: int, val_fraction: float,
                  test_fraction: float) -> dict[str, list[str]]:
    """Deterministic train/val/test split of ``ids``: order by a seeded hash of each id,
    then the first round(test_fraction n) go to test, the next round(val_fraction n) to
    val. Adding files moves few existing objects between splits."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in [0, 1) with sum < 1, got "
                         f"{val_fraction}, {test_fraction}")
    order = sorted(ids, key=lambda i: object_seed(seed, "split", i))
    n = len(order)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    test = sorted(order[:n_test])
    val = sorted(order[n_test:n_test + n_val])
    train = sorted(order[n_test + n_val:])
    return {"train": train, "val": val, "test": test}


def load_mesh_file(path: str | os.PathLike) -> trimesh.Trimesh:
    """Load any mesh file trimesh reads as one triangle mesh (scenes are concatenated
    with their node transforms). Raises :class:`MeshError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MeshError(f"{path}: file not found")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many exception types on bad files
        raise MeshError(f"{path}: failed to load mesh: {type(exc).__name__}: {exc}") from exc
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError(f"{path}: no triangle mesh in the file (got {type(loaded).__name__})")
    if len(loaded.faces) == 0:
        raise MeshError(f"{path}: mesh is empty (no faces)")
    return loaded


class FolderSource(MeshSource):
    """Every mesh file under ``folder`` (recursively: .obj .ply .off .glb .gltf .stl).

    Meshes are used in their files' frame (they should be y up, forward along -x like the
    built-in categories) and normalised to the unit cube. Object ids are the relative
    paths without suffix, with ``/`` replaced by ``__``.
    """

    name = "folder"

    def __init__(self, folder: str | os.PathLike, seed: int = 0, val_fraction: float = 0.1,
                 test_fraction: float = 0.1):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"mesh folder {self.folder} does not exist")
        self.seed, self.val_fraction, self.test_fraction = seed, val_fraction, test_fraction
        files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in MESH_SUFFIXES)
        if not files:
            raise FileNotFoundError(
                f"no mesh files ({', '.join(MESH_SUFFIXES)}) under {self.folder}")
        self.files = {self._id(p): str(p.relative_to(self.folder)) for p in files}

    def _id(self, p: Path) -> str:
        return str(p.relative_to(self.folder).with_suffix("")).replace(os.sep, "__")

    def split_ids(self) -> dict[str, list[str]]:
        return split_by_hash(list(self.files), self.seed, self.val_fraction, self.test_fraction)

    def load(self, object_id: str) -> trimesh.Trimesh:
        mesh = load_mesh_file(self.folder / self.files[object_id])
        if not np.isfinite(np.asarray(mesh.vertices)).all():
            raise MeshError(f"{self.folder / self.files[object_id]}: NaN or infinite vertices")
        return normalize_mesh(mesh)

    def describe(self) -> dict:
        return {"name": self.name, "folder": str(self.folder.resolve()), "seed": self.seed,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "files": len(self.files)}
