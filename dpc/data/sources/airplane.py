"""The ``airplane`` category: real aircraft from the Debian package flightgear-data-ai.

The package installs FlightGear's AI aircraft as AC3D files under
``/usr/share/games/flightgear/AI/Aircraft/<aircraft>/...``. Their frame already is the
project's canonical one: y up, nose along -x (checked by rendering; FlightGear's own
x-aft/z-up frame is the AC3D frame rotated on import). Selection, all automatic:

* drop the ``balloon`` folder (hot-air balloons) and ``Ferry`` (a boat);
* drop parts, not aircraft: files in ``light``/``refuel`` sub-folders, files whose name
  says part (wheels, banner, tank, light, flare, exhaust, toggle, probe), and files
  smaller than half the largest model of their aircraft folder (tanks, engines, lights);
* deduplicate liveries: the same geometry under another file name (equal vertex sets
  after normalisation), and near-identical variants within one aircraft folder (bounding
  box equal to 1% and face count within 5%), keeping the first file by name.

The kept list and every exclusion with its reason are recorded in the manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import trimesh

from dpc.data.mesh_utils import MeshError, normalize_mesh
from dpc.data.sources.base import MeshSource
from dpc.data.sources.files import split_by_hash

DEBIAN_AI_FOLDER = "/usr/share/games/flightgear/AI/Aircraft"
INSTALL_HINT = (
    "The airplane category needs FlightGear's AI aircraft (Debian/Ubuntu package "
    "flightgear-data-ai):\n    sudo apt-get update && sudo apt-get install -y "
    "flightgear-data-ai\nwhich installs them under " + DEBIAN_AI_FOLDER + " (or pass "
    "source=<FlightGear>/AI/Aircraft), and the AC3D loader: pip install 'assimp-py>=1.1'"
)
NOT_AIRCRAFT = {"balloon": "balloon", "Ferry": "not an aircraft (boat)"}
PART_NAME = re.compile(r"wheel|banner|tank|light|flare|exhaust|toggle|probe|refuel", re.I)


def find_ai_folder(folder: str | os.PathLike | None = None) -> Path:
    """The FlightGear AI aircraft folder (``folder``, $FG_ROOT/AI/Aircraft or Debian's)."""
    cands = [Path(folder)] if folder else []
    if not folder:
        if os.environ.get("FG_ROOT"):
            cands.append(Path(os.environ["FG_ROOT"]) / "AI" / "Aircraft")
        cands.append(Path(DEBIAN_AI_FOLDER))
    for c in cands:
        if c.is_dir() and any(c.rglob("*.ac")):
            return c
    raise FileNotFoundError(f"no AC3D aircraft found in {[str(c) for c in cands]}.\n{INSTALL_HINT}")


def _geometry_key(mesh: trimesh.Trimesh) -> str:
    lo, hi = mesh.bounds
    v = (mesh.vertices - (lo + hi) / 2) / float((hi - lo).max())
    key = np.round(v, 3)
    key = key[np.lexsort(key.T[::-1])]
    return hashlib.sha1(key.tobytes()).hexdigest()[:16]


def catalogue(folder: Path) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """(kept ``{object_id: relative path}``, excluded ``[(relative path, reason)]``)."""
    from dpc.data.sources.ac3d import load_ac

    excluded: list[tuple[str, str]] = []
    by_aircraft: dict[str, list[tuple[str, float, str, int, np.ndarray]]] = {}
    for p in sorted(folder.rglob("*.ac")):
        rel = p.relative_to(folder).as_posix()
        parts = rel.split("/")
        if parts[0] in NOT_AIRCRAFT:
            excluded.append((rel, NOT_AIRCRAFT[parts[0]]))
            continue
        if any(re.search("light|refuel", d, re.I) for d in parts[1:-1]) or \
                PART_NAME.search(Path(parts[-1]).stem):
            excluded.append((rel, "part (lights, wheels, tanks...)"))
            continue
        try:
            m = load_ac(p, texture_colors=False)
        except (MeshError, ValueError) as exc:
            excluded.append((rel, f"failed to load: {exc}"))
            continue
        ext = m.bounds[1] - m.bounds[0]
        by_aircraft.setdefault(parts[0], []).append(
            (rel, float(ext.max()), _geometry_key(m), len(m.faces), ext))
    kept: dict[str, str] = {}
    seen: dict[str, str] = {}
    for aircraft, items in sorted(by_aircraft.items()):
        biggest = max(e for _, e, _, _, _ in items)
        chosen: list[tuple[str, np.ndarray, int]] = []
        for rel, e, key, nf, ext in items:
            if e < 0.5 * biggest:
                excluded.append((rel, "part (smaller than half its aircraft)"))
                continue
            if key in seen:
                excluded.append((rel, f"same geometry as {seen[key]}"))
                continue
            twin = next((r for r, x, n in chosen
                         if np.allclose(ext, x, rtol=0.01) and abs(nf - n) <= 0.05 * n), None)
            if twin is not None:
                excluded.append((rel, f"variant of {twin} (same size, similar faces)"))
                continue
            seen[key] = rel
            chosen.append((rel, ext, nf))
            oid = f"{aircraft}-{Path(rel).stem}"
            kept[oid] = rel
    return kept, excluded


class AirplaneSource(MeshSource):
    """FlightGear AI aircraft, split 80/10/10 by a seeded hash of the object id."""

    name = "airplane"

    def __init__(self, folder: str | os.PathLike | None = None, seed: int = 0,
                 val_fraction: float = 0.1, test_fraction: float = 0.1):
        self.folder = find_ai_folder(folder)
        self.seed, self.val_fraction, self.test_fraction = seed, val_fraction, test_fraction
        self._kept: dict[str, str] | None = None
        self._excluded: list = []

    def _ensure(self) -> dict[str, str]:
        if self._kept is None:
            self._kept, self._excluded = catalogue(self.folder)
        return self._kept

    def split_ids(self) -> dict[str, list[str]]:
        return split_by_hash(list(self._ensure()), self.seed, self.val_fraction,
                             self.test_fraction)

    def load(self, object_id: str) -> trimesh.Trimesh:
        from dpc.data.sources.ac3d import load_ac

        kept = self._ensure()
        if object_id not in kept:
            raise MeshError(f"airplane {object_id!r} is not in the catalogue of {self.folder}")
        return normalize_mesh(load_ac(self.folder / kept[object_id]))

    def describe(self) -> dict:
        kept = self._ensure()
        return {"name": self.name, "folder": str(self.folder), "seed": self.seed,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction,
                "count": len(kept), "files": dict(sorted(kept.items())),
                "excluded": [list(x) for x in self._excluded]}
