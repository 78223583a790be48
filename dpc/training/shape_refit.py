"""``trainer.shape_refit_steps`` (not in the paper): after training (before the student
refit), fine-tune the shape path alone at fixed poses, with the hull-surface term and,
with ``trainer.shape_refit_repulsion_weight``, the point repulsion that spreads the points
over the surface.

Unsupervised clouds at CPU size fill the object's volume (RESULTS.md: car Chamfer 8.8,
above the 6.20 of a cloud filling the volume), and the hull-surface term that moves points
onto the surface costs pose accuracy when it runs during training: its gradient reaches the
poses while they are still being learnt (0.62 against 0.72 on cars). Here the poses are
settled and frozen: each training view's pose is the candidate whose render best matches
the view's own mask (the choice the student refit fits to, ``pose_from="silhouette"`` on
the TRAINING split), and the camera-supervised step (projection loss + ``w`` x hull
surface [+ ``r`` x repulsion], :mod:`dpc.training.step`) runs with those poses for ``n``
Adam steps, updating only the layers that feed the shape and nothing that feeds a pose
(:data:`SHAPE_PARAMETERS`), so every pose the model predicts, student or selector, stays
bit for bit what it was.

Test time reads the image alone, as in the paper. The refit continues from the trained
weights, so it is not idempotent: :func:`dpc.train.train` runs it once, in the process that
trains the last step, and the checkpoint records that it ran (``refitted``).
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from dpc.data import build_batch_sampler
from dpc.training import schedules
from dpc.training.step import compute_step
from dpc.training.terms import batch_targets

# Parameter-name prefixes of the shape path: encoder.fc3 reads the trunk's last shared
# layer (fc2) and feeds only the shape code; the pose code comes from fc2 via fc_pose.
SHAPE_PARAMETERS = ("encoder.fc3.", "decoder.", "scale_head.")
SEED_OFFSET = 77  # the refit draws its batches apart from training's


def check_shape_refit(cfg) -> int:
    """``trainer.shape_refit_steps`` as an int, with a clear error when it cannot apply."""
    tr = cfg.trainer
    steps = int(tr.get("shape_refit_steps", 0) or 0)
    if steps < 0:
        raise ValueError(f"trainer.shape_refit_steps must be >= 0, got {steps}")
    if not steps:
        return 0
    if not cfg.model.predict_pose:
        raise ValueError(
            "trainer.shape_refit_steps > 0 is for unsupervised runs (model.predict_pose=true): "
            "with ground-truth poses, train with loss.hull_surface_weight instead"
        )
    for key in ("shape_refit_hull_weight", "shape_refit_repulsion_weight"):
        if float(tr[key]) < 0:
            raise ValueError(f"trainer.{key} must be >= 0, got {tr[key]}")
    if float(tr.shape_refit_lr) <= 0:
        raise ValueError(f"trainer.shape_refit_lr must be > 0, got {tr.shape_refit_lr}")
    return steps


def refit_cfg(cfg):
    """The config of the refit's steps: ``cfg`` with the poses given (the batch's ``quat``,
    as camera supervision reads them) and the hull-surface term at
    ``trainer.shape_refit_hull_weight`` from the first step, and the point repulsion at
    ``trainer.shape_refit_repulsion_weight``."""
    c = copy.deepcopy(cfg)
    c.model.predict_pose = False
    c.loss.hull_surface_weight = float(cfg.trainer.shape_refit_hull_weight)
    c.loss.hull_surface_from_step = 0
    c.loss.repulsion_weight = float(cfg.trainer.shape_refit_repulsion_weight)
    c.loss.repulsion_from_step = 0
    return c


def refit_shape(
    model,
    reader,
    renderer,
    cfg,
    poses: np.ndarray,
    steps: int,
    device="cpu",
    progress: bool = True,
) -> dict:
    """Fine-tune the shape path of ``model`` in place (see the module docstring) at the
    training views' ``poses [n_obj, V, 4]``; returns ``{"steps", "projection_start",
    "projection_end", "hull_start", "hull_end", "repulsion_start", "repulsion_end",
    "seconds"}`` (the terms of the first and last step's batch; repulsion None when off)."""
    c = refit_cfg(cfg)
    sampler = build_batch_sampler(
        c, reader, seed=int(cfg.seed) + SEED_OFFSET, targets=batch_targets(c)
    )
    if sampler.quats.shape != poses.shape:
        raise ValueError(
            f"poses must be [n_obj, V, 4] = {tuple(sampler.quats.shape)} (the training "
            f"split's views), got {tuple(poses.shape)}"
        )
    sampler.quats = np.ascontiguousarray(poses, dtype=np.float32)
    T = int(cfg.trainer.max_steps)
    sigma, keep = schedules.blur_sigma(T - 1, cfg), schedules.keep_fraction(T - 1, cfg)
    params = [p for n, p in model.named_parameters() if n.startswith(SHAPE_PARAMETERS)]
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith(SHAPE_PARAMETERS))
    opt = torch.optim.Adam(params, lr=float(cfg.trainer.shape_refit_lr))
    was_training = model.training
    model.train()
    t0, first, last = time.perf_counter(), {}, {}
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="shape refit", unit="step", disable=None)  # off when not a tty
    try:
        for i in it:
            batch = {k: v.to(device) for k, v in sampler(i).items()}
            # step T + i: dropout indices apart from training's, and every term on
            out = compute_step(model, renderer, batch, c, T + i, sigma, keep, slice(None))
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            last = {k: float(v.detach()) for k, v in out.terms.items()}
            first = first or last
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(frozen[n])
        model.train(was_training)
    return {
        "steps": steps,
        "projection_start": first.get("projection_loss"),
        "projection_end": last.get("projection_loss"),
        "hull_start": first.get("hull_surface"),
        "hull_end": last.get("hull_surface"),
        "repulsion_start": first.get("repulsion"),
        "repulsion_end": last.get("repulsion"),
        "seconds": time.perf_counter() - t0,
    }
