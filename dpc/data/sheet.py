"""Contact sheet of random dataset views: RGB, mask and depth side by side."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dpc.data.format import DatasetInfo


def contact_sheet(path: str | os.PathLike, out: str | os.PathLike, split: str = "train",
                  n: int = 12, cols: int = 3, seed: int = 0) -> Path:
    """Write a PNG of ``n`` random views of ``split``: per view RGB | mask | depth (depth
    shown near = dark, far = light, background white). Returns the PNG path."""
    info = DatasetInfo(path)
    images, masks, depths = info.images(split), info.masks(split), info.depths(split)
    n_obj, V = images.shape[:2]
    if n_obj == 0:
        raise ValueError(f"split {split!r} of {path} is empty")
    rng = np.random.default_rng(seed)
    picks = [(int(rng.integers(n_obj)), int(rng.integers(V))) for _ in range(n)]
    S = info.image_size
    tiles = []
    for o, v in picks:
        rgb = np.asarray(images[o, v])
        m = np.repeat(np.asarray(masks[o, v])[..., None], 3, -1)
        if depths is not None:
            d = np.asarray(depths[o, v], np.float32)
            fg = d < 9.99
            if fg.any():
                lo, hi = float(d[fg].min()), float(d[fg].max())
                g = np.where(fg, 40 + 180 * (d - lo) / max(hi - lo, 1e-6), 255)
            else:
                g = np.full_like(d, 255)
            dep = np.repeat(g.astype(np.uint8)[..., None], 3, -1)
        else:
            dep = np.full_like(rgb, 128)
        sep = np.full((S, 2, 3), 128, np.uint8)
        tiles.append(np.concatenate((rgb, sep, m, sep, dep), 1))
    rows = []
    blank = np.full_like(tiles[0], 255)
    for r in range(0, len(tiles), cols):
        row = tiles[r:r + cols] + [blank] * (cols - len(tiles[r:r + cols]))
        gap = np.full((S, 6, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in row for x in (t, gap)][:-1], 1))
    hgap = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    sheet = np.concatenate([x for r in rows for x in (r, hgap)][:-1], 0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out)
    return out
