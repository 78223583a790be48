"""Procedural chairs: four-legged, swivel (office), pedestal, sled-base and stools.

Canonical frame: y up, the chair faces -x (a sitter looks along -x; the back is at +x),
width along z, resting on the plane y = min. Parts: seat (box or round), legs of a
sampled base type, optional stretchers, back (solid panel, slats, spindles, or a frame
with a top rail; none for stools), optional arms. All parts are closed boxes and
cylinders (watertight); dimensions in metres, then normalised to the unit cube.
"""

from __future__ import annotations

import numpy as np
import trimesh

from dpc.data.mesh_utils import normalize_mesh
from dpc.data.sources.base import ProceduralSource
from dpc.data.sources.geometry import box, combine, cylinder, rotation_about

BASES = ("four_legs", "four_legs", "four_legs", "swivel", "pedestal", "sled")
BACKS = ("solid", "solid", "slats", "spindles", "frame", "none")

WOODS = np.array([[0.55, 0.35, 0.18], [0.70, 0.50, 0.30], [0.35, 0.22, 0.12], [0.85, 0.70, 0.50]])
FABRICS = np.array([[0.20, 0.25, 0.45], [0.55, 0.12, 0.12], [0.25, 0.25, 0.25], [0.85, 0.85, 0.80],
                    [0.20, 0.45, 0.30], [0.75, 0.55, 0.25]])
METAL = (0.65, 0.66, 0.70)
BLACK = (0.08, 0.08, 0.08)


def make_chair(rng: np.random.Generator, base: str | None = None,
               back: str | None = None) -> tuple[trimesh.Trimesh, dict]:
    """One random chair (metres, before normalisation) and its parameters."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))
    base = base or BASES[int(rng.integers(len(BASES)))]
    back = back or BACKS[int(rng.integers(len(BACKS)))]
    wood = WOODS[int(rng.integers(len(WOODS)))]
    fabric = FABRICS[int(rng.integers(len(FABRICS)))]
    frame_col = wood if rng.random() < 0.6 else np.array(METAL if rng.random() < 0.5 else BLACK)
    seat_col = fabric if rng.random() < 0.6 else frame_col

    W, D = u(0.40, 0.58), u(0.38, 0.55)  # seat width (z), depth (x)
    H = u(0.40, 0.50)  # seat top height
    t = u(0.03, 0.10)  # seat thickness
    parts: list[trimesh.Trimesh] = []
    round_seat = base in ("swivel", "pedestal") and rng.random() < 0.3
    if round_seat:
        # stools get a smaller seat, so they do not read as small tables
        radius = u(0.17, 0.23) if back == "none" else 0.5 * max(W, D)
        parts.append(cylinder(radius, (0, H - t, 0), (0, H, 0), seat_col, 28))
    else:
        parts.append(box((D, t, W), (0, H - t / 2, 0), seat_col))
    y0 = H - t  # underside of the seat

    if base == "four_legs":
        lw = u(0.025, 0.06)
        inset = u(0.0, 0.05)
        splay = u(0.0, 0.06) if rng.random() < 0.4 else 0.0
        round_legs = rng.random() < 0.4
        corners = [(sx * (D / 2 - lw / 2 - inset), sz * (W / 2 - lw / 2 - inset))
                   for sx in (-1, 1) for sz in (-1, 1)]
        for x, z in corners:
            top = np.array([x, y0, z])
            bot = np.array([x + np.sign(x) * splay, 0.0, z + np.sign(z) * splay])
            if round_legs:
                parts.append(cylinder(lw / 2, bot, top, frame_col, 12))
            else:
                parts.append(_beam(bot, top, lw, frame_col))
        if rng.random() < 0.45:  # stretchers between the legs
            ys = u(0.08, 0.2)
            f = 1 - ys / y0
            for sz in (-1, 1):
                zz = sz * (W / 2 - lw / 2 - inset + splay * (1 - f))
                parts.append(box((D - 2 * inset, 0.6 * lw, 0.6 * lw), (0, ys, zz), frame_col))
            if rng.random() < 0.5:
                parts.append(box((0.6 * lw, 0.6 * lw, W - 2 * inset), (0, ys, 0), frame_col))
    elif base == "swivel":
        col_r = u(0.025, 0.04)
        yb = u(0.08, 0.12)
        parts.append(cylinder(col_r, (0, yb, 0), (0, y0, 0), METAL, 16))
        parts.append(box((0.18, 0.05, 0.18), (0, y0 - 0.025, 0), BLACK))  # mechanism
        arm_len = u(0.26, 0.34)
        n_star = 5
        for k in range(n_star):
            ang = 2 * np.pi * k / n_star + u(0, 0.2)
            d = np.array([np.cos(ang), 0, np.sin(ang)])
            end = d * arm_len + np.array([0, yb - 0.02, 0])
            parts.append(_beam(np.array([0, yb, 0]), end, 0.045, BLACK))
            parts.append(box((0.05, 0.05, 0.04), end + [0, -0.045, 0], BLACK))  # caster
    elif base == "pedestal":
        parts.append(cylinder(u(0.03, 0.06), (0, 0.02, 0), (0, y0, 0), frame_col, 16))
        parts.append(cylinder(u(0.2, 0.28), (0, 0, 0), (0, 0.03, 0), frame_col, 28))
    elif base == "sled":
        rw = u(0.02, 0.035)
        for sz in (-1, 1):
            z = sz * (W / 2 - rw)
            parts.append(box((D + 0.04, rw, rw), (0, rw / 2, z), METAL))  # runner
            for sx in (-1, 1):
                x = sx * (D / 2 - rw)
                parts.append(box((rw, y0, rw), (x, y0 / 2, z), METAL))
    else:
        raise ValueError(f"unknown chair base {base!r}")

    # back, at +x
    bh = u(0.35, 0.6)
    bt = u(0.03, 0.08)
    tilt = u(0.0, 0.25)  # radians, leaning backwards (towards +x)
    bx = D / 2 - bt / 2
    R = rotation_about("z", -tilt)  # rotating the back's +y axis towards +x

    def back_part(ext, center_local, col):
        c = np.array([bx, H, 0.0]) + R @ np.asarray(center_local, np.float64)
        return box(ext, c, col, rotation=R)

    if back == "solid":
        bw = W * u(0.8, 1.0)
        parts.append(back_part((bt, bh, bw), (0, bh / 2, 0), seat_col))
    elif back in ("slats", "spindles", "frame"):
        pw = u(0.025, 0.05)
        for sz in (-1, 1):
            parts.append(back_part((bt, bh, pw), (0, bh / 2, sz * (W / 2 - pw / 2)), frame_col))
        rail = u(0.04, 0.12)
        parts.append(back_part((bt, rail, W), (0, bh - rail / 2, 0), frame_col))
        if back == "slats":
            n = int(rng.integers(1, 4))
            for k in range(n):
                yk = bh * (0.25 + 0.45 * k / max(n, 1))
                parts.append(back_part((bt * 0.7, 0.04, W - 2 * pw), (0, yk, 0), frame_col))
        elif back == "spindles":
            n = int(rng.integers(3, 7))
            for k in range(n):
                zk = (W / 2 - pw) * (2 * (k + 1) / (n + 1) - 1)
                parts.append(back_part((bt * 0.6, bh - rail, 0.02), (0, (bh - rail) / 2, zk),
                                       frame_col))
    elif back != "none":
        raise ValueError(f"unknown chair back {back!r}")

    arms = back != "none" and rng.random() < 0.35
    if arms:
        ah = u(0.18, 0.28)
        aw = u(0.04, 0.08)
        for sz in (-1, 1):
            z = sz * (W / 2 + aw / 2)
            parts.append(box((D * 0.85, 0.04, aw), (0.05 * D, H + ah, z), frame_col))
            parts.append(box((0.04, ah + t, 0.04), (-D * 0.3, H - t + (ah + t) / 2, z),
                             frame_col))
    mesh = combine(parts)
    info = {"base": base, "back": back, "arms": bool(arms), "round_seat": bool(round_seat)}
    return mesh, info


def _beam(p0: np.ndarray, p1: np.ndarray, width: float, color) -> trimesh.Trimesh:
    """Square beam of side ``width`` from p0 to p1 (a box aligned with the segment)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    d = p1 - p0
    L = float(np.linalg.norm(d))
    m = trimesh.creation.box(extents=(width, L, width))
    T = trimesh.geometry.align_vectors([0, 1, 0], d / L)
    m.apply_transform(T)
    m.apply_translation((p0 + p1) / 2)
    rgba = np.append(np.round(np.clip(color, 0, 1) * 255), 255).astype(np.uint8)
    m.visual.face_colors = np.tile(rgba, (len(m.faces), 1))
    return m


class ChairSource(ProceduralSource):
    """The ``chair`` category: procedural chairs, normalised to the unit cube."""

    def __init__(self, sizes: dict[str, int] | None = None, seed: int = 0):
        super().__init__(sizes=sizes or {"train": 2000, "val": 200, "test": 200},
                         seed=seed, name="chair")

    def load(self, object_id: str) -> trimesh.Trimesh:
        mesh, info = make_chair(self.rng_for(object_id))
        mesh.metadata = {"info": info}
        return normalize_mesh(mesh)

    def describe(self) -> dict:
        return {**super().describe(), "generator": "dpc.data.sources.chair v1"}
