"""Can an object's own visual hull tell a view from its silhouette twin? (RESULTS.md
"Round 10", tried and not kept.)

Training objects come with 20 views, so their shape can be carved from their masks and
each view's camera chosen between the truth and its twin by rendering the hull of the
*other* views (leave one out) at both. This script measures that on the airplane training
split with the ground-truth cameras, perturbed by Gaussian noise (degrees, azimuth and
elevation) and with a share of them swapped for their twin, as a trained model's cameras
would be:

* ``choose``: carve once, pick per view between the true camera and its twin;
* ``refine``: then also move each view's camera, for ``iters`` rounds, to the best of a
  local 5 x 5 grid (3-degree steps) around it and around its twin, re-carving each round.

    python results/diagnose_hull_choice.py choose objects=20 noise=10 twins=0.5 grid=64
    python results/diagnose_hull_choice.py refine objects=10 noise=10 twins=0.5 iters=6

Ground truth is used only to perturb the cameras and to score the choice.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpc.camera import azel_quat, camera_azel, perspective_transform, quat_angle, quat_rotate
from dpc.data import open_dataset, prepare_masks
from dpc.eval.predictions import silhouette_errors
from dpc.render import PointCloudRenderer, RenderSettings

HALF_WIDTH = 0.75  # objects fill [-0.5, 0.5]^3; a model's frame may turn them (0.71 at 45 deg)


def voxel_centers(resolution: int, half_width: float = HALF_WIDTH) -> Tensor:
    """``[R^3, 3]`` centres of a ``R^3`` grid over ``[-h, h]^3`` (float32)."""
    if int(resolution) < 4:
        raise ValueError(f"hull resolution must be >= 4, got {resolution}")
    n = int(resolution)
    c = ((torch.arange(n, dtype=torch.float32) + 0.5) / n - 0.5) * (2.0 * float(half_width))
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)


def hull_votes(masks: Tensor, quats: Tensor, centers: Tensor) -> Tensor:
    """``[V, P]`` bool: whether each point of ``centers [P, 3]`` projects inside each view's
    mask ``masks [V, H, W]`` (float in [0, 1]) at the view's camera ``quats [V, 4]``."""
    if masks.ndim != 3 or quats.shape != (masks.shape[0], 4):
        raise ValueError(f"need masks [V, H, W] and quats [V, 4], got {tuple(masks.shape)} "
                         f"and {tuple(quats.shape)}")  # fmt: skip
    V = masks.shape[0]
    cam = quat_rotate(quats.float(), centers[None].expand(V, -1, -1))
    g = perspective_transform(cam)  # (depth, row, col) in [-0.5, 0.5]
    xy = torch.stack((g[..., 2], g[..., 1]), -1)[:, :, None] * 2.0  # grid_sample's [-1, 1]
    inside = F.grid_sample(masks.float()[:, None], xy, align_corners=True, padding_mode="zeros")
    return inside[:, 0, :, 0] > 0.5


def leave_one_out_hull(votes: Tensor, view: int, slack: int) -> Tensor:
    """``[P]`` bool: the voxels that at most ``slack`` of the views other than ``view``
    vote out (``votes [V, P]``, :func:`hull_votes`)."""
    others = votes.shape[0] - 1
    out = others - (votes.sum(0) - votes[view].int())
    return out <= int(slack)


def sample_points(points: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``[n, 3]``: ``n`` of ``points [P, 3]`` drawn with replacement (the origin when
    ``P`` is 0: an empty hull renders nothing, as it should)."""
    if len(points) == 0:
        return torch.zeros(n, 3)
    return points[torch.randint(0, len(points), (n,), generator=generator)]


@torch.no_grad()
def hull_choice(masks: Tensor, quats: Tensor, cands: Tensor, renderer, sigma: float,
                scale: float, resolution: int = 48, slack: int = 2, points: int = 4000,
                seed: int = 0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """One object's views: per view, the candidate whose render of the other views' hull
    best matches the view's mask.

    Args:
        masks: ``[V, G, G]`` float in [0, 1] at the renderer's grid size ``G``.
        quats: ``[V, 4]`` the cameras the hull is carved with (the current choice).
        cands: ``[V, M, 4]`` the candidates to choose among.
        renderer, sigma, scale: dpc's renderer, its blur (cells) and occupancy scale.
        resolution, slack: the hull's grid and the views that may vote a voxel out.
        points: hull voxels drawn per view to render (with replacement).

    Returns ``(index [V], errors [V, M])``: the chosen candidates and each candidate's
    silhouette error (L2 against the mask).
    """
    V, M = cands.shape[:2]
    if V < 2:
        raise ValueError(f"a hull needs at least 2 views of the object, got {V}")
    centers = voxel_centers(resolution)
    votes = hull_votes(masks, quats, centers)
    g = torch.Generator().manual_seed(int(seed))
    clouds = torch.stack([sample_points(centers[leave_one_out_hull(votes, i, slack)], points, g)
                          for i in range(V)])  # fmt: skip
    err = silhouette_errors(clouds, torch.full((V,), float(scale)), cands.float(), masks.float(),
                            renderer, sigma)  # fmt: skip
    return err.argmin(1), err


def project(points: Tensor, cams: Tensor, size: int) -> Tensor:
    """``[C, S, S]`` bool: the pixels hit by ``points [P, 3]`` under each camera of
    ``cams [C, 4]`` (each point splatted to the 2 x 2 pixels nearest it)."""
    C = len(cams)
    g = perspective_transform(quat_rotate(cams, points[None].expand(C, -1, -1)))
    u, v = (g[..., 1] + 0.5) * (size - 1), (g[..., 2] + 0.5) * (size - 1)
    img = torch.zeros(C * size * size, dtype=torch.bool)
    base = torch.arange(C)[:, None] * size * size
    for du in (-0.3, 0.3):
        for dv in (-0.3, 0.3):
            ui, vi = (u + du).round().long(), (v + dv).round().long()
            ok = (ui >= 0) & (ui < size) & (vi >= 0) & (vi < size)
            img[(base + ui * size + vi)[ok]] = True
    return img.view(C, size, size)


def local_grid(az: Tensor, el: Tensor) -> Tensor:
    """``[25, 4]`` cameras within +-6 degrees of ``(az, el)`` (3-degree steps)."""
    d = torch.deg2rad(torch.tensor([-6.0, -3.0, 0.0, 3.0, 6.0], dtype=torch.float64))
    a, e = torch.meshgrid(d, d, indexing="ij")
    return azel_quat(az + a.flatten(), el + e.flatten()).float()


def perturbed(q: Tensor, noise: float, twins: float, g: torch.Generator) -> Tensor:
    """The cameras ``q [V, 4]`` with Gaussian noise (degrees) and a share swapped for
    their twin ``(180 - az, -el)``."""
    az, el = camera_azel(q)
    tw = torch.rand(len(q), generator=g, dtype=torch.float64) < twins
    az = az + torch.randn(len(q), generator=g, dtype=torch.float64) * math.radians(noise)
    el = el + torch.randn(len(q), generator=g, dtype=torch.float64) * math.radians(noise)
    return azel_quat(torch.where(tw, math.pi - az, az), torch.where(tw, -el, el)).float()


def main(argv: list[str]) -> None:
    mode = argv[0] if argv else "choose"
    a = {"objects": 20, "noise": 0.0, "twins": 0.0, "grid": 32, "resolution": 64, "slack": 2,
         "scale": 0.1, "iters": 4, "image": 64}  # fmt: skip
    for kv in argv[1:]:
        k, v = kv.split("=", 1)
        if k not in a:
            raise SystemExit(f"unknown argument {k!r}; known: {sorted(a)}")
        a[k] = type(a[k])(v)
    torch.set_num_threads(1)
    ds = open_dataset("data/airplane_views20")
    n = int(a["objects"])
    masks = np.asarray(ds.masks("train"))[:n]
    quats = torch.tensor(np.asarray(ds.quats("train"))[:n], dtype=torch.float64)
    g, t, right, before, after = torch.Generator().manual_seed(0), time.time(), [], [], []
    renderer = PointCloudRenderer(RenderSettings(vox_size=a["grid"], kernel_size=7))
    centers = voxel_centers(a["resolution"])
    for o in range(n):
        q = quats[o]
        az, el = camera_azel(q)
        twin = azel_quat(math.pi - az, -el)
        cams = perturbed(q, a["noise"], a["twins"], g)
        if mode == "choose":
            cands = torch.stack((q, twin), 1).float()
            idx, _ = hull_choice(prepare_masks(masks[o], a["grid"]), cams, cands, renderer, 0.5,
                                 a["scale"], a["resolution"], a["slack"])  # fmt: skip
            right.append((idx == 0).float())
            continue
        m = torch.from_numpy(np.array(masks[o])).float()[:, None] / 255.0
        m64 = F.interpolate(m, size=(64, 64), mode="bilinear", align_corners=True)[:, 0]
        S = int(a["image"])
        mk = F.interpolate(m, size=(S, S), mode="bilinear", align_corners=True)[:, 0] > 0.5
        before.append(quat_angle(cams.double(), q))
        for _ in range(int(a["iters"])):
            votes, new = hull_votes(m64, cams, centers), cams.clone()
            for i in range(len(q)):
                pts = centers[leave_one_out_hull(votes, i, a["slack"])]
                if len(pts) == 0:
                    continue
                ca, ce = camera_azel(cams[i : i + 1].double())
                c = torch.cat((local_grid(ca, ce), local_grid(math.pi - ca, -ce)))
                new[i] = c[(project(pts, c, S) ^ mk[i][None]).flatten(1).sum(1).argmin()]
            cams = new
        after.append(quat_angle(cams.double(), q))
        right.append(quat_angle(cams.double(), q) < quat_angle(cams.double(), twin))
    r = torch.cat(right).float()
    line = f"{mode} {a}: views {len(r)}, nearer the truth than its twin {r.mean():.3f}"
    if mode == "refine":
        b, e = torch.cat(before).rad2deg(), torch.cat(after).rad2deg()
        line += (f"; within 30 deg {(b < 30).float().mean():.3f} -> {(e < 30).float().mean():.3f},"
                 f" median {b.median():.1f} -> {e.median():.1f} deg")  # fmt: skip
    print(line + f" ({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
