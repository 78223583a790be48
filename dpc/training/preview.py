"""Simple previews for training: image panels and point-cloud renderings (PIL only).

``python -m dpc.training.preview <run_dir> [--out PNG] [--n 6] [--split val]`` writes a
PNG with, per validation object: the input image, the ground-truth mask, the predicted
silhouette, and the predicted point cloud drawn from three directions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """[H, W] or [3, H, W] / [H, W, 3] floats in [0, 1] -> uint8 [H, W, 3]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    if x.ndim == 3 and x.shape[0] == 3:
        x = x.transpose(1, 2, 0)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, -1)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def draw_points(
    points: np.ndarray, size: int = 128, view: str = "side", colors: np.ndarray | None = None
) -> np.ndarray:
    """Orthographic drawing of ``points`` ``[N, 3]`` (object frame, y up) as uint8
    ``[size, size, 3]``; ``view`` in side (looking along -z), front (along x), top (along
    -y). Points are shaded by depth (near = dark) unless ``colors`` ``[N, 3]`` are given."""
    axes = {"side": (0, 1, 2), "front": (2, 1, 0), "top": (0, 2, 1)}[view]
    u, v, d = points[:, axes[0]], points[:, axes[1]], points[:, axes[2]]
    if view == "top":
        v = -v
    px = np.clip(((u + 0.5) * (size - 1)).round().astype(int), 0, size - 1)
    py = np.clip(((0.5 - v) * (size - 1)).round().astype(int), 0, size - 1)
    order = np.argsort(-d)  # far first, near drawn last
    img = np.full((size, size, 3), 255, np.uint8)
    if colors is None:
        shade = (40 + 160 * (d - d.min()) / max(np.ptp(d), 1e-6)).astype(np.uint8)
        col = np.stack([shade, shade, np.full_like(shade, 220)], -1)
    else:
        col = (np.clip(colors, 0, 1) * 255).astype(np.uint8)
    img[py[order], px[order]] = col[order]
    return img


def panel(
    rows: list[list[np.ndarray]], cell: int = 128, labels: list[str] | None = None
) -> Image.Image:
    """Grid of uint8 images (each resized to ``cell``), optional column labels on top."""
    top = 14 if labels else 0
    H, W = len(rows), max(len(r) for r in rows)
    out = Image.new("RGB", (W * cell, H * cell + top), "white")
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            out.paste(
                Image.fromarray(im).resize((cell, cell), Image.NEAREST), (j * cell, i * cell + top)
            )
    if labels:
        d = ImageDraw.Draw(out)
        for j, t in enumerate(labels):
            d.text((j * cell + 3, 1), t, fill="black")
    return out


@torch.no_grad()
def preview_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    n: int = 6,
    split: str = "val",
    device: str = "cpu",
) -> Path:
    """Write the preview PNG of a run (default ``<run_dir>/preview.png``); returns its path."""
    from dpc.data import build_batch_sampler, open_training_data, prepare_images
    from dpc.render import build_renderer
    from dpc.training.checkpoint import load_run

    model, cfg = load_run(run_dir, device)
    reader = open_training_data(cfg)
    s = build_batch_sampler(cfg, reader, split, 1, 1, with_targets=False)
    n = min(n, s.n)
    renderer = build_renderer(cfg)
    rows = []
    for i in range(n):
        img = prepare_images(s.images[i, :1], s.image_size)
        o = model(img.to(device))
        q = torch.from_numpy(np.ascontiguousarray(s.quats[i, :1])).float().to(device)
        if o.pose_student is not None:
            q = o.pose_student  # unsupervised: the student's pose
        elif o.pose_candidates is not None:
            q = o.pose_candidates[:, 0]
        sil = renderer(
            o.points, q, sigma=float(cfg.render.pc_relative_sigma_end), scale=o.scale
        ).silhouette
        mask = torch.from_numpy(np.ascontiguousarray(s.masks[i, 0])).float() / 255
        pts = o.points[0].cpu().numpy()
        cols = None if o.colors is None else o.colors[0].cpu().numpy()
        rows.append(
            [to_uint8(img[0]), to_uint8(mask), to_uint8(sil[0])]
            + [draw_points(pts, 128, v, cols) for v in ("side", "front", "top")]
        )
    out = Path(out) if out else Path(run_dir) / "preview.png"
    panel(
        rows,
        128,
        ["input", "GT mask", "pred silhouette", "points side", "points front", "points top"],
    ).save(out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="PNG path (default <run_dir>/preview.png)")
    p.add_argument("--n", type=int, default=6, help="number of objects")
    p.add_argument("--split", default="val")
    a = p.parse_args(argv)
    print(preview_run(a.run_dir, a.out, a.n, a.split))


if __name__ == "__main__":
    main()
