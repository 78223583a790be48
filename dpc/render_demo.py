"""Render a built-in primitive point cloud from several poses into a PNG grid.

    python -m dpc.render_demo [shape=chair|torus|box] [views=6] [out=render_demo.png]

Rows: silhouette, expected depth, expected colour (points coloured by position); columns:
cameras at evenly spaced azimuths. Look at it to see what the renderer does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from dpc.camera import view_quat
from dpc.cli import run_command
from dpc.render import PointCloudRenderer, RenderSettings


def _box_surface(n: int, lo, hi, g: torch.Generator) -> torch.Tensor:
    """``n`` points uniform on the surface of the axis-aligned box [lo, hi] -> [n, 3]."""
    lo, hi = torch.tensor(lo), torch.tensor(hi)
    ext = hi - lo
    areas = torch.stack((ext[1] * ext[2], ext[0] * ext[2], ext[0] * ext[1])).repeat(2)
    face = torch.multinomial(areas, n, replacement=True, generator=g)
    p = lo + torch.rand(n, 3, generator=g) * ext
    axis = face % 3
    side = (face >= 3).float()
    p[torch.arange(n), axis] = lo[axis] + side * ext[axis]
    return p


def primitive_points(shape: str, n: int = 8000, seed: int = 0) -> torch.Tensor:
    """Surface points ``[n, 3]`` of a built-in shape inside [-0.5, 0.5]^3 (y up)."""
    g = torch.Generator().manual_seed(seed)
    if shape == "box":
        return _box_surface(n, (-0.35, -0.2, -0.25), (0.35, 0.2, 0.25), g)
    if shape == "torus":
        u, v = torch.rand(n, generator=g) * 2 * math.pi, torch.rand(n, generator=g) * 2 * math.pi
        R, r = 0.3, 0.1
        return torch.stack(
            (
                (R + r * torch.cos(v)) * torch.cos(u),
                r * torch.sin(v),
                (R + r * torch.cos(v)) * torch.sin(u),
            ),
            -1,
        )
    if shape == "chair":  # seat, back, four legs: asymmetric, so poses are easy to read
        parts = [
            ((-0.25, -0.05, -0.25), (0.25, 0.02, 0.25)),
            ((0.2, 0.02, -0.25), (0.25, 0.45, 0.25)),
        ]
        for x in (-0.22, 0.17):
            for z in (-0.22, 0.17):
                parts.append(((x, -0.45, z), (x + 0.05, -0.05, z + 0.05)))
        vol = torch.tensor([np.prod(np.subtract(hi, lo)) ** (2 / 3) for lo, hi in parts])
        counts = torch.multinomial(vol, n, replacement=True, generator=g).bincount(
            minlength=len(parts)
        )
        return torch.cat([_box_surface(int(c), lo, hi, g) for c, (lo, hi) in zip(counts, parts)])
    raise ValueError(f"shape must be one of chair, torus, box; got {shape!r}")


def render_grid(shape: str = "chair", views: int = 6, size: int = 64, sigma: float = 0.7):
    """Render ``views`` azimuths; returns a uint8 image [3 * size, views * size, 3]."""
    pts = primitive_points(shape)[None].expand(views, -1, -1)
    cols = (pts + 0.5).clamp(0, 1)  # colour = position
    az = torch.linspace(0, 2 * math.pi, views + 1)[:-1]
    q = view_quat(az, torch.full((views,), math.radians(25.0)))
    r = PointCloudRenderer(RenderSettings(vox_size=size, kernel_size=7))
    with torch.no_grad():
        out = r(pts, q, sigma, colors=cols, return_depth=True)
    sil = out.silhouette
    depth = ((out.depth - 1.5).clamp(0, 1) * (sil > 0.5)).clamp(0, 1)  # near bright on black
    depth = torch.where(sil > 0.5, 1.0 - depth, torch.zeros_like(depth))
    rows = [
        sil[..., None].expand(-1, -1, -1, 3),
        depth[..., None].expand(-1, -1, -1, 3),
        out.color.permute(0, 2, 3, 1),
    ]
    img = torch.cat([torch.cat(list(r_), dim=1) for r_ in rows], dim=0)
    return (img.clamp(0, 1) * 255).round().byte().numpy()


def run(args) -> Path:
    """Write the PNG (the command's body); returns its path."""
    from PIL import Image

    if args.shape not in ("chair", "torus", "box"):
        raise ValueError(f"shape must be chair, torus or box, got {args.shape!r}")
    img = render_grid(str(args.shape), int(args.views), int(args.image_size))
    out = Path(str(args.out))
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(out)
    print(f"wrote {out} ({args.views} views of '{args.shape}': silhouette, depth, colour)")
    return out


def main(argv=None) -> None:
    """``python -m dpc.render_demo [key=value ...]`` (configs/render_demo.yaml)."""
    run_command("render_demo", run, argv)


if __name__ == "__main__":
    main()
