"""Simple previews for training: image panels and point-cloud renderings (PIL only).

``python -m dpc.training.preview run_dir=<run> [out=<png>] [n=6] [split=val]`` writes a
PNG with titled columns, per validation object: the input image, the ground-truth mask,
each pose candidate's silhouette (camera supervision: the ground-truth pose's) with its
projection loss, and the predicted point cloud from two viewpoints
(:func:`preview_panel`, also the wandb preview of training, :func:`training_preview`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from dpc.cli import run_command


def to_uint8(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """[H, W] or [3, H, W] / [H, W, 3] floats in [0, 1] -> uint8 [H, W, 3]."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    if x.ndim == 3 and x.shape[0] == 3:
        x = x.transpose(1, 2, 0)
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, -1)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


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


# viewpoints (azimuth, elevation in degrees) of the predicted cloud in the training preview
PREVIEW_VIEWPOINTS = [(30.0, 20.0), (120.0, 25.0)]


def preview_panel(
    images,  # [R, 3, S, S] inputs in [0, 1]
    masks,  # [R, G, G] ground-truth masks
    silhouettes,  # [R, M, G, G] rendered silhouettes, one per candidate (or the GT pose)
    points,  # [R, N, 3] predicted clouds
    camera_supervised: bool = False,
    cell: int = 128,
    heading: str | None = None,
    render_size: int = 96,
) -> Image.Image:
    """The labelled preview: titled columns input | GT mask | each candidate's silhouette,
    captioned with its projection loss (0.5 x sum of squares against the mask; the lowest
    per row marked "best") | the predicted cloud from two viewpoints (rendered with the
    project's renderer, depth-shaded). Returns a PIL image."""
    from dpc.eval.pictures import render_cloud_views, titled_columns
    from dpc.losses import per_view_l2

    sil = torch.as_tensor(silhouettes).detach().float().cpu()
    m = torch.as_tensor(masks).detach().float().cpu()
    R, M = sil.shape[:2]
    loss = per_view_l2(sil, m[:, None])  # [R, M]
    if camera_supervised:
        sil_titles = ["silhouette (GT pose)"] if M == 1 else [f"view {k}" for k in range(M)]
    else:
        sil_titles = [f"candidate {k} silhouette" for k in range(M)]
    titles = (
        ["input", "GT mask"]
        + sil_titles
        + [f"cloud az {a:.0f} el {e:.0f}" for a, e in PREVIEW_VIEWPOINTS]
    )
    rows, caps = [], []
    for r in range(R):
        best = int(loss[r].argmin())
        pts = torch.as_tensor(points[r]).detach().float().cpu().numpy()
        views = render_cloud_views(pts, render_size, PREVIEW_VIEWPOINTS)
        rows.append(
            [to_uint8(images[r]), to_uint8(1 - m[r])]
            + [to_uint8(1 - sil[r, k].clamp(0, 1)) for k in range(M)]
            + views
        )
        caps.append(
            ["", ""]
            + [
                f"loss {float(loss[r, k]):.1f}" + (" best" if k == best and M > 1 else "")
                for k in range(M)
            ]
            + ["", ""]
        )
    return titled_columns(rows, titles, cell, caps, heading=heading)


def training_preview(batch: dict, out, step: int, max_objects: int = 4, cell: int = 128):
    """uint8 ``[H, W, 3]`` preview of a training step (first view of up to ``max_objects``
    objects; ``batch``/``out`` as in :func:`dpc.training.step.compute_step`)."""
    R = min(max_objects, batch["image"].shape[0])
    cs = out.winner is None  # camera supervision: one silhouette, under the GT pose
    img = preview_panel(
        batch["image"][:R, 0],
        batch["mask"][:R, 0],
        out.silhouette[:R, 0],
        out.points[:R],
        camera_supervised=cs,
        cell=cell,
        heading=f"step {step + 1}: first view of {R} training objects"
        + ("" if cs else "; clouds in the model's frame"),
    )
    return np.asarray(img)


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
    from dpc.data.images import resize_masks
    from dpc.render import PointCloudRenderer
    from dpc.runs import open_run

    run = open_run(run_dir, device)
    model, cfg = run.model, run.cfg
    reader = open_training_data(cfg)
    s = build_batch_sampler(cfg, reader, split, 1, 1)
    n = min(n, s.n)
    renderer = PointCloudRenderer(run.settings.render)
    G = renderer.settings.vox_size
    sigma = run.settings.final_sigma
    imgs, masks, sils, clouds = [], [], [], []
    for i in range(n):
        img = prepare_images(s.images[i, :1], s.image_size)
        o = model(img.to(device))
        if o.pose_candidates is not None:
            q = o.pose_candidates[0]  # [M, 4]: every candidate training chooses among
        else:
            q = torch.from_numpy(np.ascontiguousarray(s.quats[i, :1])).float().to(device)
        M = q.shape[0]
        sil = renderer(
            o.points.expand(M, -1, -1), q, sigma=sigma, scale=o.scale.expand(M)
        ).silhouette
        mask = torch.from_numpy(np.ascontiguousarray(s.masks[i, :1])).float() / 255
        imgs.append(img[0])
        masks.append(resize_masks(mask, G)[0])
        sils.append(sil.cpu())
        clouds.append(o.points[0].cpu())
    out = Path(out) if out else Path(run_dir) / "preview.png"
    preview_panel(
        torch.stack(imgs),
        torch.stack(masks),
        torch.stack(sils),
        torch.stack(clouds),
        camera_supervised=not model.predict_pose,
        heading=f"{Path(run_dir).name}: first view of {n} {split} objects",
    ).save(out)
    return out


def main(argv=None) -> None:
    """``python -m dpc.training.preview run_dir=<run> [key=value ...]``."""

    def run(a):
        print(preview_run(str(a.run_dir), a.out, int(a.n), str(a.split), str(a.device)))

    run_command("preview", run, argv, prog="dpc.training.preview")


if __name__ == "__main__":
    main()
