"""Validation hook called by the training loop every ``trainer.val_every`` steps.

``validate(model, reader, cfg, device)`` returns scalars logged as ``val/<name>``:
- ``projection_loss``: the training projection loss (per view, half sum of squares) on
  a fixed set of validation objects and views, at a fixed sigma
  (``val.sigma``, default the final training sigma) and without point dropout, so values
  are comparable across steps and runs. Camera supervision renders with the ground-truth
  poses; unsupervised runs take, per view, the best of the predicted candidates (the
  training objective).
- the evaluation metrics of :func:`dpc.eval.validate.validate` (docs/CONTRACTS.md,
  "Evaluation"): ``chamfer`` / ``precision`` / ``coverage`` (x100), and for pose-predicting
  runs ``pose_accuracy``, ``pose_median_deg``, ``alignment_deg`` (alignment fitted on the
  same subset). Without ``dpc.eval`` (or if it fails), camera-supervised runs fall back to
  a scipy Chamfer here. ``val.eval_metrics=false`` skips them.

The evaluation part's predicted clouds (``clouds``) are returned under ``"_clouds"`` for
wandb (see :func:`wandb_media`).
"""

from __future__ import annotations

import numpy as np
import torch

from dpc.losses import per_view_l2
from dpc.render import PointCloudRenderer, RenderSettings
from dpc.training.data import BatchSampler


def precision_coverage(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """Mean nearest-neighbour distances pred->gt (precision) and gt->pred (coverage) of
    clouds ``[N, 3]``, ``[P, 3]`` (Euclidean, not squared; scipy cKDTree)."""
    from scipy.spatial import cKDTree

    return (float(cKDTree(gt).query(pred)[0].mean()), float(cKDTree(pred).query(gt)[0].mean()))


@torch.no_grad()
def validate(model, reader, cfg, device, split: str = "val") -> dict[str, float]:
    """Validation scalars of ``model`` (a DPCModel, eval mode is set and restored)."""
    v = cfg.val
    G = int(cfg.render.vox_size)
    sampler = BatchSampler(
        reader,
        split,
        1,
        min(int(v.views), reader.num_views),
        int(cfg.data.image_size),
        G,
        int(cfg.seed) + 12345,
    )
    n = min(int(v.num_objects), sampler.n)
    renderer = PointCloudRenderer(
        RenderSettings(
            vox_size=G,
            kernel_size=int(cfg.render.pc_gauss_kernel_size),
            projection=str(cfg.render.projection),
            backend=str(cfg.render.backend),
        )
    )
    sigma = float(v.sigma) if v.sigma is not None else float(cfg.render.pc_relative_sigma_end)
    was_training = model.training
    model.eval()
    losses, prec, cov = [], [], []
    gts = reader.gt_points(split) if not cfg.model.predict_pose else None
    gts = None if gts is None else np.asarray(gts[:n])
    for i in range(n):
        # fixed views per object: those of "step" i of a dedicated sampler, object i
        _, views = sampler.indices(i)
        b = _item(sampler, i, views[0])
        images, masks = b["image"].to(device), b["mask"].to(device)  # [K,3,S,S], [K,G,G]
        K = masks.shape[0]
        if cfg.model.predict_pose:
            out = model(images, shape_index=torch.zeros(1, dtype=torch.long, device=device))
            q = out.pose_candidates  # [K, M, 4]
        else:
            out = model(images[:1])
            q = b["quat"].to(device)[:, None]
        M = q.shape[1]
        pts = out.points.expand(K * M, -1, -1)
        sil = renderer(
            pts, q.reshape(K * M, 4), sigma=sigma, scale=out.scale.expand(K * M)
        ).silhouette
        per = per_view_l2(sil.view(K, M, G, G), masks[:, None])  # [K, M]
        losses.append(per.min(dim=1).values.mean().item())
        if gts is not None:
            p, c = precision_coverage(out.points[0].float().cpu().numpy(), np.asarray(gts[i]))
            prec.append(p)
            cov.append(c)
    if was_training:
        model.train()
    res: dict = {"projection_loss": float(np.mean(losses))}
    if v.eval_metrics:
        try:
            from dpc.eval.validate import validate as eval_validate

            ev = eval_validate(
                model,
                reader,
                split=split,
                max_objects=n,
                device=device,
                image_size=int(cfg.data.image_size),
                renderer=renderer,
                sigma=sigma,
            )
            res.update(
                {k.removeprefix("val/"): float(x) for k, x in ev.items() if k.startswith("val/")}
            )
            res["_eval"] = ev
            prec = []  # the evaluation part's numbers replace the fallback
        except ImportError:
            pass
        except Exception as e:  # validation must not kill a training run
            import sys

            print(
                f"[dpc.train] dpc.eval validation failed: {type(e).__name__}: {e}", file=sys.stderr
            )
    if prec:
        res.update(precision=100 * float(np.mean(prec)), coverage=100 * float(np.mean(cov)))
        res["chamfer"] = res["precision"] + res["coverage"]
    return res


def _item(sampler: BatchSampler, obj: int, views: np.ndarray) -> dict[str, torch.Tensor]:
    """Object ``obj`` with ``views`` ``[K]`` as a batch of one (first dim dropped)."""
    s = sampler
    img = (
        torch.from_numpy(np.ascontiguousarray(s.images[obj, views])).permute(0, 3, 1, 2).float()
        / 255
    )
    if img.shape[-1] != s.image_size:
        img = torch.nn.functional.interpolate(
            img, size=(s.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
        )
    from dpc.camera import resize_masks

    mask = resize_masks(
        torch.from_numpy(np.ascontiguousarray(s.masks[obj, views])).float() / 255, s.mask_size
    )
    quat = torch.from_numpy(np.ascontiguousarray(s.quats[obj, views])).float()
    return {"image": img, "mask": mask, "quat": quat}


def wandb_media(result: dict) -> dict:
    """wandb payload (point clouds as Object3D) of the evaluation part's result, if any."""
    ev = result.get("_eval")
    if ev is None:
        return {}
    try:
        from dpc.eval.validate import wandb_payload

        out = {k: x for k, x in wandb_payload(ev).items() if not isinstance(x, (int, float))}
        if ev.get("pose_report"):  # pose-error histograms, paper and robust alignment
            from dpc.eval.pose_report import wandb_histograms

            out.update(wandb_histograms(ev["pose_report"]))
        return out
    except Exception:
        return {}
