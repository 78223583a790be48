"""Procedural cars: sedan, hatchback, wagon, SUV, van, pickup, sports car.

Canonical frame (shared by all built-in categories): y up, the car's nose along -x
(like the airplanes), width along z, wheels resting on the plane y = min. The body is a
single loft of convex cross-sections along x: a side profile (the roof line, with hood,
windshield, roof, rear window, trunk / hatch / bed sampled per type) over a floor that
rises at the bumpers, with the cabin narrowing above the belt line (tumblehome). Wheels
(tyre + hub), mirrors, spoilers and roof rails are separate closed parts. Every part is
watertight, so the car is. All dimensions are sampled in metres from per-type ranges and
the result is normalised to the unit cube.
"""

from __future__ import annotations

import numpy as np
import trimesh

from dpc.data.mesh_utils import normalize_mesh
from dpc.data.sources.base import ProceduralSource
from dpc.data.sources.geometry import box, combine, cylinder, loft

CAR_TYPES = ("sedan", "hatchback", "wagon", "suv", "van", "pickup", "sports")

PAINTS = np.array(
    [
        [0.80, 0.10, 0.10], [0.10, 0.25, 0.65], [0.92, 0.92, 0.92], [0.15, 0.15, 0.17],
        [0.60, 0.62, 0.65], [0.85, 0.70, 0.10], [0.10, 0.45, 0.20], [0.55, 0.30, 0.15],
        [0.95, 0.45, 0.05], [0.35, 0.20, 0.50], [0.35, 0.65, 0.80], [0.75, 0.75, 0.70],
    ]
)
GLASS = (0.12, 0.16, 0.22)
TYRE = (0.09, 0.09, 0.09)
HUB = (0.70, 0.70, 0.72)
TRIM = (0.12, 0.12, 0.12)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _profile(kind: str, rng: np.random.Generator) -> dict:
    """Per-type dimensions (metres) and the roof line as (u, height) points, u = 0 at the
    nose and 1 at the tail."""
    u = lambda lo, hi: _u(rng, lo, hi)
    if kind == "sedan":
        L, W, H, c, r = u(4.3, 5.0), u(1.72, 1.90), u(1.38, 1.50), u(0.13, 0.18), u(0.30, 0.34)
        hb = c + u(0.55, 0.65)
        hood, ws, roof_end, trunk = u(0.26, 0.33), u(0.42, 0.48), u(0.66, 0.74), u(0.83, 0.88)
        line = [(0, hb - u(0.10, 0.2)), (0.05, hb - 0.02), (hood, hb + 0.04), (ws, H),
                (roof_end, H), (trunk, hb + u(0.04, 0.1)), (1, hb - u(0.0, 0.1))]
        axles = (u(0.15, 0.19), u(0.78, 0.83))
    elif kind == "hatchback":
        L, W, H, c, r = u(3.6, 4.3), u(1.65, 1.82), u(1.40, 1.55), u(0.13, 0.17), u(0.28, 0.32)
        hb = c + u(0.58, 0.68)
        hood, ws, roof_end = u(0.20, 0.27), u(0.40, 0.46), u(0.78, 0.86)
        line = [(0, hb - u(0.10, 0.2)), (0.05, hb - 0.02), (hood, hb + 0.04), (ws, H),
                (roof_end, H), (0.97, hb + u(0.08, 0.2)), (1, hb - u(0.0, 0.1))]
        axles = (u(0.14, 0.18), u(0.82, 0.86))
    elif kind == "wagon":
        L, W, H, c, r = u(4.5, 5.0), u(1.75, 1.90), u(1.45, 1.58), u(0.14, 0.18), u(0.31, 0.34)
        hb = c + u(0.58, 0.66)
        hood, ws, roof_end = u(0.24, 0.30), u(0.40, 0.45), u(0.88, 0.93)
        line = [(0, hb - u(0.10, 0.2)), (0.05, hb - 0.02), (hood, hb + 0.04), (ws, H),
                (roof_end, H - 0.02), (0.99, hb + u(0.25, 0.4)), (1, hb - 0.05)]
        axles = (u(0.15, 0.18), u(0.78, 0.82))
    elif kind == "suv":
        L, W, H, c, r = u(4.3, 4.9), u(1.82, 2.00), u(1.65, 1.85), u(0.20, 0.26), u(0.35, 0.40)
        hb = c + u(0.75, 0.85)
        hood, ws, roof_end = u(0.22, 0.28), u(0.36, 0.41), u(0.88, 0.94)
        line = [(0, hb - u(0.10, 0.2)), (0.04, hb), (hood, hb + 0.06), (ws, H),
                (roof_end, H), (0.985, H - u(0.15, 0.3)), (1, hb - 0.05)]
        axles = (u(0.15, 0.19), u(0.79, 0.83))
    elif kind == "van":
        L, W, H, c, r = u(4.7, 5.4), u(1.85, 2.00), u(1.90, 2.15), u(0.16, 0.20), u(0.31, 0.35)
        hb = c + u(0.70, 0.85)
        hood, ws, roof_end = u(0.08, 0.14), u(0.20, 0.26), u(0.95, 0.98)
        line = [(0, hb - u(0.05, 0.15)), (0.03, hb), (hood, hb + 0.08), (ws, H),
                (roof_end, H), (1, H - u(0.05, 0.15))]
        axles = (u(0.13, 0.17), u(0.78, 0.84))
    elif kind == "pickup":
        L, W, H, c, r = u(5.0, 5.7), u(1.85, 2.00), u(1.75, 1.92), u(0.22, 0.28), u(0.36, 0.41)
        hb = c + u(0.78, 0.9)
        hood, ws, roof_end = u(0.22, 0.28), u(0.34, 0.38), u(0.52, 0.58)
        bed = hb + u(0.05, 0.12)
        line = [(0, hb - u(0.05, 0.15)), (0.04, hb), (hood, hb + 0.06), (ws, H),
                (roof_end, H), (roof_end + 0.02, bed), (0.99, bed), (1, bed - 0.1)]
        axles = (u(0.14, 0.18), u(0.78, 0.83))
    elif kind == "sports":
        L, W, H, c, r = u(4.1, 4.7), u(1.85, 1.98), u(1.12, 1.28), u(0.09, 0.13), u(0.31, 0.35)
        hb = c + u(0.50, 0.58)
        hood, ws, roof_end = u(0.30, 0.40), u(0.50, 0.56), u(0.60, 0.68)
        line = [(0, c + u(0.2, 0.3)), (0.06, hb - 0.08), (hood, hb + 0.02), (ws, H),
                (roof_end, H), (0.92, hb + u(0.06, 0.14)), (1, hb - u(0.0, 0.06))]
        axles = (u(0.16, 0.20), u(0.78, 0.82))
    else:
        raise ValueError(f"unknown car type {kind!r}; choose from {CAR_TYPES}")
    return dict(L=L, W=W, H=H, c=c, r=r, hb=hb, line=np.array(line), axles=axles)


def make_car(rng: np.random.Generator, kind: str | None = None) -> tuple[trimesh.Trimesh, dict]:
    """One random car (metres, before normalisation) and its parameters."""
    if kind is None:
        kind = CAR_TYPES[int(rng.integers(len(CAR_TYPES)))]
    p = _profile(kind, rng)
    L, W, c, r, hb, line = p["L"], p["W"], p["c"], p["r"], p["hb"], p["line"]
    paint = np.clip(PAINTS[int(rng.integers(len(PAINTS)))] + rng.normal(0, 0.03, 3), 0, 1)
    tumble = _u(rng, 0.25, 0.45)  # inward slope of the cabin sides above the belt line
    plan_round = _u(rng, 0.05, 0.14)  # plan-view narrowing at nose and tail

    # Sections at uniform u plus the profile's corners, so creases stay sharp.
    us = np.unique(np.concatenate((np.linspace(0, 1, 40), line[:, 0])))
    yt = np.interp(us, line[:, 0], line[:, 1])
    end = np.clip((np.abs(2 * us - 1) - 0.85) / 0.15, 0, 1)
    yb = c + 0.12 * end**2  # floor rising at the bumpers
    yt = np.maximum(yt, yb + 0.15)
    w = W * (1 - plan_round * end**2)
    yl = np.minimum(hb, yt - 0.04)
    wt = np.maximum(w - 2 * tumble * (yt - yl), 0.55 * w)
    rr = np.minimum(0.015 + 0.25 * (yt - yl), 0.06)
    h = w / 2
    ht = wt / 2
    ylow = yb + 0.35 * (yl - yb)
    zs = np.stack((-0.94 * h, -h, -h, -ht, -ht + rr, ht - rr, ht, h, h, 0.94 * h), 1)
    ys = np.stack((yb, ylow, yl, yt - rr, yt, yt, yt - rr, yl, ylow, yb), 1)
    xs = np.broadcast_to((-L / 2 + us * L)[:, None], zs.shape)
    body = loft(np.stack((xs, ys, zs), -1))
    # Colours: glass above the belt line on faces that are not roughly horizontal.
    centers = body.triangles_center
    glass = (centers[:, 1] > hb + 0.05) & (np.abs(body.face_normals[:, 1]) < 0.9)
    cols = np.tile(np.append(np.round(paint * 255), 255), (len(body.faces), 1))
    cols[glass, :3] = np.round(np.array(GLASS) * 255)
    body.visual.face_colors = cols.astype(np.uint8)
    parts = [body]

    tyre_w = _u(rng, 0.18, 0.27)
    for ua in p["axles"]:
        x = -L / 2 + ua * L
        for s in (-1, 1):
            zo = s * (W / 2 - tyre_w / 2 + 0.03)
            parts.append(cylinder(r, (x, r, zo - tyre_w / 2), (x, r, zo + tyre_w / 2), TYRE, 24))
            zh = s * (W / 2 + 0.035)
            parts.append(cylinder(0.6 * r, (x, r, zh - 0.03), (x, r, zh + 0.03), HUB, 16))
    # mirrors at the windshield base
    if rng.random() < 0.8:
        ux = line[2, 0] + 0.03
        x = -L / 2 + ux * L
        ym = hb + 0.12
        for s in (-1, 1):
            parts.append(box((0.12, 0.1, 0.18), (x, ym, s * (W / 2 + 0.05)), paint))
    extras = []
    if kind in ("sports", "hatchback") and rng.random() < 0.4:  # rear spoiler on two struts
        x = L / 2 - _u(rng, 0.1, 0.2)
        y = float(np.interp(1 - 0.15 / L, line[:, 0], line[:, 1])) + 0.12
        parts.append(box((0.22, 0.04, 0.9 * W), (x, y, 0.0), TRIM))
        for s in (-1, 1):
            parts.append(box((0.06, 0.2, 0.05), (x, y - 0.1, s * 0.3 * W), TRIM))
        extras.append("spoiler")
    if kind in ("suv", "wagon", "van") and rng.random() < 0.35:  # roof rails
        u0, u1 = line[3, 0] + 0.05, line[4, 0] - 0.03
        x0, x1 = -L / 2 + u0 * L, -L / 2 + u1 * L
        for s in (-1, 1):
            parts.append(box((x1 - x0, 0.05, 0.05), ((x0 + x1) / 2, p["H"] + 0.02,
                                                      s * 0.35 * W), TRIM))
        extras.append("roof_rails")
    mesh = combine(parts)
    info = {"type": kind, "length_m": round(L, 3), "width_m": round(W, 3),
            "height_m": round(p["H"], 3), "extras": extras}
    return mesh, info


class CarSource(ProceduralSource):
    """The ``car`` category: procedural cars, normalised to the unit cube."""

    def __init__(self, sizes: dict[str, int] | None = None, seed: int = 0):
        super().__init__(sizes=sizes or {"train": 2000, "val": 200, "test": 200},
                         seed=seed, name="car")

    def load(self, object_id: str) -> trimesh.Trimesh:
        mesh, info = make_car(self.rng_for(object_id))
        mesh.metadata = {"info": info}
        return normalize_mesh(mesh)

    def describe(self) -> dict:
        return {**super().describe(), "generator": "dpc.data.sources.car v1"}
