"""Training: ``python -m dpc.train +experiment=car_quick`` (hydra), or
``torchrun --nproc_per_node=N -m dpc.train +experiment=car`` for DistributedDataParallel.

:func:`train` does the work (also callable from Python with a composed config) and reads
top to bottom; its pieces live in :mod:`dpc.training`. :func:`main` is the thin hydra
entry point. See docs/training.md.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from dpc.cli import run_command
from dpc.data import batch_iterator, build_batch_sampler
from dpc.models import build_model
from dpc.render import build_renderer
from dpc.runs import (
    RunSettings,
    checkpoint_path,
    environment,
    normalize_loss_config,
    resolve_run_dir,
    save_checkpoint,
    write_config,
)
from dpc.training import schedules
from dpc.training.checkpoint import restore_checkpoint
from dpc.training.distributed import teardown_distributed
from dpc.training.logging import RunLogger
from dpc.training.loop import (
    NonFiniteLossError,
    StepMeter,
    StopSignals,
    check_loss_config,
    log_media,
    log_step,
    next_steps_message,
    open_data,
    start_process,
    sync_flags,
    update_or_skip,
    validate_and_log,
    wrap_model,
)
from dpc.training.optim import build_optimizer
from dpc.training.shape_refit import check_shape_refit, refit_shape
from dpc.training.step import compute_step
from dpc.training.student_refit import check_refit, refit_student, silhouette_choice
from dpc.training.terms import batch_targets

__all__ = ["NonFiniteLossError", "check_loss_config", "main", "train"]


def train(cfg: DictConfig) -> dict:
    """Train a model as configured; returns a summary dict (final step, last losses,
    validation metrics, wall time). Raises :class:`NonFiniteLossError` after too many
    consecutive non-finite losses (a checkpoint of the last good state is written first).
    """
    t_start = time.perf_counter()
    normalize_loss_config(cfg.loss)  # deprecated keys -> current ones (saved that way)
    check_loss_config(cfg.loss)
    settings = RunSettings.from_cfg(cfg)  # also: clear errors for settings that do not fit
    refit_steps = check_refit(cfg)
    shape_steps = check_shape_refit(cfg)
    refits = bool(refit_steps or shape_steps)
    tr = cfg.trainer
    rank, world, local_rank, device = start_process(cfg)
    is_main = rank == 0
    max_steps = int(tr.max_steps)
    run_dir, resume_ckpt = resolve_run_dir(cfg)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(run_dir, cfg)

    reader = open_data(cfg, is_main, world)
    sampler = build_batch_sampler(
        cfg,
        reader,
        rank=rank,
        world_size=world,
        targets=batch_targets(cfg),
        mirror=bool(tr.get("mirror_augment", False)),  # trainer.mirror_augment
    )
    b = int(tr.batch_size) // world
    rank_slice = slice(rank * b, (rank + 1) * b)

    torch.manual_seed(int(cfg.seed))  # the same initial weights on every rank
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    renderer = build_renderer(cfg)
    start_step, refitted = 0, False
    if resume_ckpt is not None:
        start_step, refitted = restore_checkpoint(resume_ckpt, model, optimizer)
        if is_main:
            print(f"[dpc.train] resumed {run_dir} at step {start_step}", file=sys.stderr)
        refitted = refitted and start_step >= max_steps  # steps to train: refit after them
    fwd_model = wrap_model(model, cfg, device, world, local_rank)

    logger = RunLogger(cfg, run_dir, is_main, start_step)
    meter = StepMeter(cfg, device, start_step)

    def save(step_next: int, **extra) -> Path:
        if is_main:
            save_checkpoint(checkpoint_path(run_dir), model, optimizer, step_next, cfg, **extra)
        return checkpoint_path(run_dir)

    batches = batch_iterator(sampler, start_step, max_steps, int(cfg.data.num_workers))
    M = settings.num_candidates  # the range of the winner index (2M with flipped candidates)
    summary: dict = {"start_step": start_step, "environment": environment()}
    step = final = start_step
    n_bad, stop_now = 0, False
    last_terms: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    model.train()
    with StopSignals() as stop:
        try:
            if is_main and cfg.val.every and cfg.val.at_start and start_step == 0:
                # the untrained network's numbers, for before/after comparisons
                summary["val_init"] = validate_and_log(
                    logger, model, reader, cfg, device, 0, initial=True
                )
            for step in range(start_step, max_steps):
                batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
                sigma = schedules.blur_sigma(step, cfg)
                keep = schedules.keep_fraction(step, cfg)
                out = compute_step(
                    fwd_model, renderer, batch, cfg, step, sigma, keep, rank_slice, bool(tr.amp)
                )
                finite, stop_now = sync_flags(out.loss, stop.signal is not None, world)
                n_bad = update_or_skip(
                    out, finite, model, optimizer, cfg, step, n_bad, logger, save
                )
                optimizer.zero_grad(set_to_none=True)
                meter.tick(step)
                final = step + 1  # the next step to run
                last = final == max_steps
                if final % int(tr.log_every) == 0 or last or step == start_step:
                    last_terms = log_step(
                        logger, meter, step, out, model, optimizer, cfg, sigma, keep, world, M
                    )
                if is_main and tr.image_every and (final % int(tr.image_every) == 0 or last):
                    log_media(logger, step, batch, out, M)
                # with a refit, the last validation comes after it
                val_now = final % int(cfg.val.every or 1) == 0 or last
                val_now = val_now and not (last and refits)
                if is_main and cfg.val.every and val_now:
                    val_metrics = validate_and_log(logger, model, reader, cfg, device, step)
                if tr.checkpoint_every and final % int(tr.checkpoint_every) == 0 and not last:
                    save(final)
                if stop_now:
                    signal_name = stop.signal or "(on another rank)"
                    logger.event(
                        step, f"interrupted by signal {signal_name}: saved step {final}, exiting"
                    )
                    break
            if refits and final == max_steps and not stop_now and is_main and not refitted:
                args = (refit_steps, shape_steps, device, logger, final - 1)
                summary.update(run_refits(model, reader, renderer, settings, cfg, *args))
                refitted = True
                if cfg.val.every:
                    val_metrics = validate_and_log(logger, model, reader, cfg, device, final - 1)
            save(final, refitted=refitted)
            summary.update(step=final, losses=last_terms, val=val_metrics, interrupted=stop_now)
        finally:
            logger.finish()
    summary["wall_time_s"] = time.perf_counter() - t_start
    summary["run_dir"] = str(run_dir)
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print(next_steps_message(run_dir), flush=True)
    return summary


def run_refits(
    model, reader, renderer, settings: RunSettings, cfg, refit_steps: int, shape_steps: int,
    device, logger: RunLogger, step: int,
) -> dict:  # fmt: skip
    """After the last training step: the shape refit at the training views' chosen poses,
    then the student refit (and the selector's fit) to the candidates chosen with the
    refitted clouds (the shape refit changes no pose, the student refit no cloud)."""
    out: dict = {}
    sigma, size = settings.final_sigma, settings.image_size
    if shape_steps:
        choice = silhouette_choice(model, reader, renderer, sigma, size, device)
        out["shape_refit"] = r = refit_shape(
            model, reader, renderer, cfg, choice.quat, shape_steps, device
        )
        rep = ""
        if r["repulsion_start"] is not None:
            rep = f", repulsion {r['repulsion_start']:.3f} -> {r['repulsion_end']:.3f}"
        logger.event(
            step,
            f"shape refit: {shape_steps} steps at the chosen poses, projection "
            f"{r['projection_start']:.3f} -> {r['projection_end']:.3f}, hull surface "
            f"{r['hull_start']:.3f} -> {r['hull_end']:.3f}{rep} ({r['seconds']:.0f} s)",
        )
    if refit_steps:
        # from a fresh head, seeded: the same choice gives the same student
        out["student_refit"] = r = refit_student(
            model, reader, renderer, sigma, size, refit_steps, int(cfg.seed), device
        )
        sel = r.get("selector_agreement")
        logger.event(
            step,
            f"student refit: {refit_steps} steps on {r['views']} training views, "
            f"student loss {r['loss_start']:.4f} -> {r['loss_end']:.4f}"
            + ("" if sel is None else f"; selector picks the chosen head on {sel:.3f}"),
        )
    return out


def _command(cfg: DictConfig) -> int:
    finished = False
    try:
        train(cfg)
        finished = True
    except NonFiniteLossError as e:
        print(f"[dpc.train] {e}", file=sys.stderr)
        return 1
    finally:
        teardown_distributed(finished)
    return 0


def main(argv: list[str] | None = None) -> None:
    """``python -m dpc.train +experiment=<name> [key=value ...]`` (configs/train.yaml)."""
    run_command("train", _command, argv)


if __name__ == "__main__":
    main()
