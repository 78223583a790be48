"""Pictures of a trained run's predictions:
``python -m dpc.visualize run_dir=<dir> split=test objects=[0,1,2] out=<folder>``.

Per object, ``<out>/<object_id>.png`` with three rows:
  1. the input view, its ground-truth mask, and the predicted silhouette(s) of that view
     (masks and silhouettes drawn dark on white)
     (camera-supervised: rendered with the ground-truth pose; pose-predicting runs: one
     per candidate, plus the student, the selector's pick and, with
     ``model.pose_silhouette_weight``, the pose the model reads), with the projection
     error in the label;
  2. the predicted point cloud rendered from fixed viewpoints (depth-shaded, with the
     project's own differentiable renderer at a small blur);
  3. the ground-truth cloud from the same viewpoints.
and ``<out>/<object_id>.html``: an interactive 3D plot (plotly; predicted cloud, with the
ground truth as a second, toggleable trace). For runs that predict poses the predicted
cloud is shown in the ground-truth frame when ``<run_dir>/eval/alignment.json`` exists
(written by ``python -m dpc.evaluate``), else in the model's own frame (said in the title).
Options: ``configs/visualize.yaml`` (``python -m dpc.visualize --help``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from dpc.cli import run_command
from dpc.data import open_run_data, prepare_images, prepare_masks
from dpc.eval.alignment import AlignmentResult
from dpc.eval.metrics import align_points
from dpc.eval.pictures import VIEWPOINTS, grid_image, render_cloud_views
from dpc.eval.predictions import read_pose, reads_pose_with_masks
from dpc.eval.score import load_gt
from dpc.render import build_renderer, final_sigma
from dpc.runs import open_run
from dpc.training.distributed import resolve_device


def write_html(path: Path, pred: np.ndarray, gt: np.ndarray | None, title: str) -> Path | None:
    """Interactive 3D scatter (plotly, JS written once as ``plotly.min.js`` next to it)."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        warnings.warn("plotly is not installed (pip install plotly): no HTML written", stacklevel=2)
        return None

    def trace(p, name, color, visible=True):
        # plot y (up) as the vertical axis
        return go.Scatter3d(
            x=p[:, 0],
            y=p[:, 2],
            z=p[:, 1],
            mode="markers",
            name=name,
            marker=dict(size=1.5, color=color),
            visible=visible,
        )

    data = [trace(pred, "predicted", "#3c64c8")]
    if gt is not None:
        data.append(trace(gt, "ground truth", "#999999", "legendonly"))
    fig = go.Figure(data)
    rng = [-0.55, 0.55]
    fig.update_layout(
        title=title,
        margin=dict(l=0, r=0, t=30, b=0),
        scene=dict(
            xaxis=dict(range=rng, title="x"),
            yaxis=dict(range=rng, title="z"),
            zaxis=dict(range=rng, title="y (up)"),
            aspectmode="cube",
        ),
    )
    fig.write_html(str(path), include_plotlyjs="directory")
    return path


@torch.no_grad()
def run(o: DictConfig) -> list[Path]:
    """Write the PNGs (and HTMLs) described in the module docstring; returns the PNG paths."""
    if not o.run_dir:
        raise ValueError("run_dir is required: python -m dpc.visualize run_dir=<dir> objects=[0,1]")
    run_dir = Path(str(o.run_dir))
    device = resolve_device(str(o.device))
    run = open_run(run_dir, device)
    model, cfg = run.model, run.cfg
    reader = open_run_data(cfg, o.data_path, run_dir)
    split = str(o.split)
    if split not in reader.splits:
        raise ValueError(f"split must be one of {sorted(reader.splits)}, got {split!r}")
    images, masks, quats = reader.images(split), reader.masks(split), reader.quats(split)
    n, V = int(images.shape[0]), int(images.shape[1])
    objects = [int(i) for i in o.objects]
    bad = [i for i in objects if not 0 <= i < n]
    if bad:
        raise ValueError(f"objects {bad} out of range: split {split!r} has {n} objects")
    if not 0 <= int(o.view) < V:
        raise ValueError(f"view must be in [0, {V}), got {o.view}")
    gt_all = load_gt(reader, split, False)
    out = Path(str(o.out)) if o.out else run_dir / "vis" / split
    out.mkdir(parents=True, exist_ok=True)
    renderer = build_renderer(cfg)
    sigma = final_sigma(cfg)
    G = renderer.settings.vox_size
    q_al, frame = None, "GT frame"
    if model.predict_pose:
        al_path = run_dir / "eval" / "alignment.json"
        if al_path.exists():
            q_al = AlignmentResult.load(al_path).tensor()
        else:
            frame = "model frame (run dpc.evaluate for the alignment)"
    written = []
    v = int(o.view)
    for i in objects:
        oid = reader.splits[split][i]
        x = prepare_images(images[i : i + 1, v], int(cfg.data.image_size)).to(device)
        pred = model(x)
        pts = pred.points[:1].float()
        m_gt = prepare_masks(masks[i : i + 1, v], G)[0]
        row1 = [(np.asarray(images[i, v]), f"input view {v}"), (1 - m_gt.numpy(), "GT mask")]
        if pred.pose_candidates is not None:
            qs = [
                (pred.pose_candidates[0, k], f"cand {k}")
                for k in range(pred.pose_candidates.shape[1])
            ]
            if pred.pose_student is not None:
                qs.append((pred.pose_student[0], "student"))
            if pred.pose_selected is not None:
                qs.append((pred.pose_selected[0], "selector"))
            if pred.selector_logits is not None and reads_pose_with_masks(model):
                q, k = read_pose(model, x, pred, m_gt[None].to(device), renderer, sigma)
                qs.append((q[0], f"pose (cand {int(k[0])})"))
        else:
            qs = [(torch.from_numpy(np.array(quats[i, v], np.float32)), "GT pose")]
        for q, name in qs:
            sil = renderer(
                pts, q[None].float().to(device), sigma=sigma, scale=pred.scale[:1]
            ).silhouette[0]
            err = 0.5 * float((sil.cpu() - m_gt).pow(2).sum())
            row1.append((1 - sil.clamp(0, 1).cpu().numpy(), f"{name} L2 {err:.0f}"))
        p = pts[0].cpu()
        if q_al is not None:
            p = align_points(p[None].double(), q_al)[0].float()
        p = p.numpy()
        gt = np.asarray(gt_all[i], np.float32)
        names = [f"az{a:.0f} el{e:.0f}" for a, e in VIEWPOINTS]
        rs = int(o.render_size)
        row2 = list(zip(render_cloud_views(p, rs), ["pred " + s for s in names]))
        row3 = list(
            zip(render_cloud_views(gt, rs, color=(110, 110, 110)), ["GT " + s for s in names])
        )
        title = f"{oid} ({split} #{i}) - prediction in {frame}"
        png = out / f"{oid}.png"
        grid_image([row1, row2, row3], int(o.cell), title).save(png)
        written.append(png)
        if o.html:
            write_html(out / f"{oid}.html", p, gt, title)
    print(f"wrote {len(written)} PNG(s) to {out}")
    return written


def main(argv: list[str] | None = None) -> None:
    """``python -m dpc.visualize [key=value ...]`` (``argv``: the overrides, default the
    command line)."""
    run_command("visualize", run, argv)


if __name__ == "__main__":
    main()
