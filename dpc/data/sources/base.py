"""What every dataset source provides: object ids per split and a mesh per id."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import trimesh

SPLITS = ("train", "val", "test")


def object_seed(base_seed: int, *parts: object) -> int:
    """A stable 63-bit seed from a base seed and any labels (split, index, name...).

    Uses a hash rather than ``base_seed + index`` so neighbouring seeds do not give
    correlated objects, and so each object's randomness is independent of split sizes
    (resumed and enlarged builds keep every existing object unchanged).
    """
    h = hashlib.sha256(repr((int(base_seed),) + tuple(parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


class MeshSource:
    """Base class of dataset sources (picklable: workers receive a copy).

    Subclasses implement :meth:`split_ids` and :meth:`load`. ``load`` returns a mesh in the
    canonical object frame (y up, forward along -x), normalised to [-0.5, 0.5]^3, or
    raises ``dpc.data.mesh_utils.MeshError`` / ``ValueError`` naming the bad file.
    """

    name: str = "source"

    def split_ids(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def load(self, object_id: str) -> trimesh.Trimesh:
        raise NotImplementedError

    def describe(self) -> dict:
        """Settings that define the source (recorded in the manifest, part of its key)."""
        return {"name": self.name}


@dataclass
class ProceduralSource(MeshSource):
    """A procedural category: ``n_<split>`` objects per split from a base seed.

    Object ids are ``<split>_<index:05d>``; object ``(split, i)`` depends only on
    ``(seed, split, i)``, so growing a split keeps the existing objects unchanged.
    """

    sizes: dict[str, int] = field(default_factory=lambda: {"train": 2000, "val": 200, "test": 200})
    seed: int = 0
    name: str = "procedural"

    def split_ids(self) -> dict[str, list[str]]:
        out = {}
        for split, n in self.sizes.items():
            if int(n) < 0:
                raise ValueError(f"split size for {split!r} must be >= 0, got {n}")
            out[split] = [f"{split}_{i:05d}" for i in range(int(n))]
        return out

    def rng_for(self, object_id: str) -> np.random.Generator:
        return np.random.default_rng(object_seed(self.seed, self.name, object_id))

    def describe(self) -> dict:
        return {"name": self.name, "seed": int(self.seed), "sizes": dict(self.sizes)}
