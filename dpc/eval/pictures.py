"""Pictures shared by the commands and the training preview: point clouds rendered with
the project's renderer from fixed viewpoints, and image grids with legible titles.

(``render_cloud_views``, ``to_rgb`` and ``grid_image`` moved here from ``dpc.visualize`` so
that ``dpc.predict`` and the training preview can use them without importing a command.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from dpc.camera import view_quat
from dpc.render import PointCloudRenderer, RenderSettings

# (azimuth, elevation) in degrees of the fixed viewpoints (dpc.camera.view_quat)
VIEWPOINTS = [(30.0, 20.0), (120.0, 20.0), (210.0, 20.0), (300.0, 60.0)]


def render_cloud_views(
    points: np.ndarray,  # [N, 3]
    size: int = 96,
    viewpoints=VIEWPOINTS,
    color=(60, 100, 200),
    sigma: float | None = None,
) -> list[np.ndarray]:
    """Depth-shaded renders ``[size, size, 3]`` uint8 of a cloud from ``viewpoints``,
    made with :class:`PointCloudRenderer` (silhouette for coverage, expected depth for
    shading: near surfaces bright, far ones dark)."""
    if sigma is None:
        # wide enough to close the gaps between neighbouring points of a sparse cloud
        sigma = float(np.clip(0.7 * (size / 96) * np.sqrt(4000 / max(len(points), 1)), 0.6, 2.0))
    r = PointCloudRenderer(RenderSettings(vox_size=size, kernel_size=7, backend="reference"))
    az = torch.tensor([math.radians(a) for a, _ in viewpoints])
    el = torch.tensor([math.radians(e) for _, e in viewpoints])
    q = view_quat(az, el)
    pts = torch.from_numpy(np.array(points, np.float32))[None].expand(len(viewpoints), -1, -1)
    with torch.no_grad():
        # Boost the occupancy so that one isolated point reaches ~0.6 at its centre after
        # the blur (a unit mass spreads to k0^3 at the peak): sparse clouds render solid.
        k0 = 1.0 / sum(math.exp(-(i * i) / (2.0 * sigma**2)) for i in range(-3, 4))
        boost = torch.full((len(viewpoints),), 0.6 / k0**3)
        out = r(pts.contiguous(), q, sigma=sigma, scale=boost, return_depth=True)
    sil = out.silhouette.clamp(0, 1).numpy()  # [K, S, S]
    depth = out.depth.numpy()
    imgs = []
    for s, d in zip(sil, depth):
        # expected depth mixes in the background (10) where the silhouette is partial:
        # undo that to get the surface depth, then map ~[1.5, 2.5] to brightness
        surf = (d - (1 - s) * 10.0) / np.maximum(s, 1e-3)
        shade = np.clip(1.15 - (surf - 1.5), 0.35, 1.0)
        shade = np.where(s > 1e-3, shade, 1.0)
        c = np.asarray(color, np.float32) / 255.0
        rgb = 1.0 - s[..., None] * (1.0 - c * shade[..., None])
        imgs.append((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    return imgs


def to_rgb(x) -> np.ndarray:
    """[H, W] / [H, W, 3] / [3, H, W] floats in [0, 1] (numpy or torch) or uint8 ->
    uint8 [H, W, 3]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[0] == 3 and x.shape[-1] != 3:
        x = x.transpose(1, 2, 0)
    if x.dtype != np.uint8:
        x = (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, -1)
    return x


def font(size: int = 14):
    """A scalable font (Pillow's bundled one), falling back to the bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def grid_image(rows: list[list[tuple[np.ndarray, str]]], cell: int, title: str) -> Image.Image:
    """Rows of (image, label) cells, each resized to ``cell`` px, labels under the cells."""
    f = font(max(10, min(14, cell // 9)))
    lab, top = f.size + 4 if hasattr(f, "size") else 12, 20
    W = max(len(r) for r in rows)
    img = Image.new("RGB", (W * cell, top + len(rows) * (cell + lab)), "white")
    d = ImageDraw.Draw(img)
    d.text((3, 2), title, fill=(0, 0, 0), font=f)
    for i, r in enumerate(rows):
        y = top + i * (cell + lab)
        for j, (im, text) in enumerate(r):
            img.paste(
                Image.fromarray(to_rgb(im)).resize((cell, cell), Image.BILINEAR), (j * cell, y)
            )
            d.text((j * cell + 2, y + cell + 1), _fit(d, text, cell - 4, f), fill=(0, 0, 0), font=f)
    return img


def _fit(d: ImageDraw.ImageDraw, text: str, width: int, f) -> str:
    """``text`` shortened (with an ellipsis) to fit ``width`` pixels."""
    if d.textlength(text, font=f) <= width:
        return text
    while text and d.textlength(text + "...", font=f) > width:
        text = text[:-1]
    return text + "..."


def titled_columns(
    rows: list[list[np.ndarray]],
    titles: list[str],
    cell: int = 128,
    captions: list[list[str]] | None = None,
    heading: str | None = None,
) -> Image.Image:
    """Grid with a title above each column (wrapped to the column width), optional
    per-cell captions under the cells (e.g. a loss) and an optional heading line."""
    f = font(14)
    fs = f.size if hasattr(f, "size") else 11
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [_wrap(probe, t, cell - 6, f) for t in titles]
    head_h = (fs + 6) if heading else 0
    title_h = max(len(w) for w in wrapped) * (fs + 3) + 6
    cap_h = (fs + 5) if captions else 0
    W = max(len(titles), max(len(r) for r in rows))
    img = Image.new("RGB", (W * cell, head_h + title_h + len(rows) * (cell + cap_h)), "white")
    d = ImageDraw.Draw(img)
    if heading:
        d.text((4, 2), heading, fill=(0, 0, 0), font=f)
    for j, lines in enumerate(wrapped):
        for k, line in enumerate(lines):
            w = d.textlength(line, font=f)
            d.text(
                (j * cell + (cell - w) / 2, head_h + 3 + k * (fs + 3)), line, fill=(0, 0, 0), font=f
            )
    y0 = head_h + title_h
    for i, r in enumerate(rows):
        y = y0 + i * (cell + cap_h)
        for j, im in enumerate(r):
            img.paste(
                Image.fromarray(to_rgb(im)).resize((cell, cell), Image.BILINEAR), (j * cell, y)
            )
            if captions and j < len(captions[i]) and captions[i][j]:
                t = _fit(d, captions[i][j], cell - 4, f)
                w = d.textlength(t, font=f)
                d.text((j * cell + (cell - w) / 2, y + cell + 1), t, fill=(40, 40, 40), font=f)
        d.line([(0, y - 1), (W * cell, y - 1)], fill=(210, 210, 210))
    for j in range(1, W):
        d.line([(j * cell, head_h), (j * cell, img.height)], fill=(210, 210, 210))
    return img


def _wrap(d: ImageDraw.ImageDraw, text: str, width: int, f) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        t = f"{cur} {word}".strip()
        if cur and d.textlength(t, font=f) > width:
            lines.append(cur)
            cur = word
        else:
            cur = t
    return lines + [cur] if cur else lines or [""]
