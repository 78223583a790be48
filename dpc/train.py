"""Training: ``python -m dpc.train +experiment=car_quick`` (hydra), or
``torchrun --nproc_per_node=N -m dpc.train +experiment=car`` for DistributedDataParallel.

:func:`train` does the work (also callable from Python with a composed config);
:func:`main` is the thin hydra entry point. See docs/training.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from dpc.losses import add_weight_decay_grad, decay_parameters, l2_weight_decay
from dpc.models import build_model
from dpc.render import PointCloudRenderer, RenderSettings
from dpc.training import schedules
from dpc.training.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
    unwrap,
)
from dpc.training.data import BatchSampler, batch_iterator, open_training_data
from dpc.training.logging import ProgressLine, RunLogger
from dpc.training.step import compute_step


class NonFiniteLossError(RuntimeError):
    """Raised after ``trainer.nan_max_consecutive`` consecutive non-finite losses."""


def setup_distributed(device_cfg: str) -> tuple[int, int, int]:
    """Initialise torch.distributed when launched by torchrun (``WORLD_SIZE`` > 1):
    NCCL on CUDA, gloo on CPU. Returns ``(rank, world_size, local_rank)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_cfg in ("auto", "cuda")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local rank) when available, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=cuda but CUDA is not available; use device=auto or cpu")
        return torch.device("cuda", local_rank)
    if name != "cpu" and not name.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<i>, got {name!r}")
    return torch.device(name)


def resolve_run_dir(cfg) -> tuple[Path, Path | None]:
    """Run directory and, when resuming, the checkpoint to resume from.

    ``resume=false``: ``paths.run_dir``. ``resume=true``: the newest run directory of this
    experiment (under ``paths.output_root/<name>``) with a checkpoint, else a fresh start
    in ``paths.run_dir``. ``resume=<dir>``: that run directory (must have a checkpoint).
    """
    resume = cfg.resume
    if resume in (None, False, "false", "False"):
        return Path(str(cfg.paths.run_dir)), None
    if resume in (True, "true", "True"):
        base = Path(str(cfg.paths.output_root)) / str(cfg.name)
        cands = sorted(
            (p.parent.parent for p in base.glob("*/checkpoints/last.pt")),
            key=lambda p: (p / "checkpoints" / "last.pt").stat().st_mtime,
        )
        if not cands:
            print(
                f"[dpc.train] resume=true: no checkpoint under {base}; starting fresh",
                file=sys.stderr,
            )
            return Path(str(cfg.paths.run_dir)), None
        return cands[-1], cands[-1] / "checkpoints" / "last.pt"
    run_dir = Path(str(resume))
    return run_dir, find_checkpoint(run_dir)


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam (``optim.lr``); weight decay is the L2 term in the loss (dpc.losses)."""
    o = cfg.optim
    if o.name != "adam":
        raise ValueError(f"optim.name must be 'adam', got {o.name!r}")
    # fused Adam: one kernel over all parameters (CPU and CUDA); 12M parameters made the
    # unfused update ~25% of a car_quick CPU step
    return torch.optim.Adam(
        model.parameters(),
        lr=float(o.lr),
        betas=tuple(o.betas),
        eps=float(o.eps),
        fused=bool(o.fused),
    )


def _sync_flags(loss: torch.Tensor, stop_requested: bool, world: int) -> tuple[bool, bool]:
    """``(loss finite on every rank, a stop signal arrived on any rank)``: one host sync per
    step (free on CPU) and, under DDP, one tiny all-reduce, so that all ranks skip the same
    steps and stop after the same step (a rank leaving alone would hang the others)."""
    flags = torch.stack(
        (~torch.isfinite(loss.detach()), torch.tensor(stop_requested, device=loss.device))
    ).to(torch.float32)
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    bad, stop = flags.tolist()
    return bad == 0.0, stop > 0.0


def check_loss_config(loss) -> None:
    """Clear errors for loss settings that would silently train something else."""
    for key, value in loss.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"loss.{key} must be >= 0, got {value}")


def train(cfg: DictConfig) -> dict:
    """Train a model as configured; returns a summary dict (final step, last losses,
    validation metrics, wall time). Raises :class:`NonFiniteLossError` after too many
    consecutive non-finite losses (a checkpoint of the last good state is written first).
    """
    t_start = time.perf_counter()
    check_loss_config(cfg.loss)
    rank, world, local_rank = setup_distributed(str(cfg.device))
    is_main = rank == 0
    device = resolve_device(str(cfg.device), local_rank)
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    tr = cfg.trainer
    max_steps = int(tr.max_steps)

    run_dir, resume_ckpt = resolve_run_dir(cfg)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    # Data: rank 0 builds a missing dataset first, the others wait.
    if is_main:
        reader = open_training_data(cfg)
    if world > 1:
        dist.barrier()
    if not is_main:
        reader = open_training_data(cfg)
    sampler = BatchSampler(
        reader,
        str(cfg.data.split),
        int(tr.batch_size),
        int(cfg.data.views_per_item),
        int(cfg.data.image_size),
        int(cfg.render.vox_size),
        int(cfg.seed),
        rank,
        world,
        with_depth=float(cfg.loss.depth_weight) > 0
        or float(cfg.loss.get("surface_depth_weight", 0.0)) > 0,
        with_mask_distance=float(cfg.loss.get("silhouette_distance_weight", 0.0)) > 0,
    )
    b = int(tr.batch_size) // world
    rank_slice = slice(rank * b, (rank + 1) * b)

    torch.manual_seed(int(cfg.seed))  # the same initial weights on every rank
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    renderer = PointCloudRenderer(
        RenderSettings(
            vox_size=int(cfg.render.vox_size),
            kernel_size=int(cfg.render.pc_gauss_kernel_size),
            projection=str(cfg.render.projection),
            backend=str(cfg.render.backend),
        )
    )

    start_step = 0
    if resume_ckpt is not None:
        ck = load_checkpoint(resume_ckpt, map_location="cpu")
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        start_step = int(ck["step"])
        set_rng_state(ck["rng"])
        if is_main:
            print(f"[dpc.train] resumed {run_dir} at step {start_step}", file=sys.stderr)

    fwd_model: torch.nn.Module = model
    if world > 1:
        # heads whose loss weight is 0 get no gradient; DDP must be told to expect that
        unused = (
            cfg.model.predict_pose
            and cfg.model.pose_predictor_student
            and not cfg.loss.pose_student_align_loss
        ) or (cfg.model.pc_rgb and not cfg.loss.color_weight)
        fwd_model = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=bool(unused),
        )
    if tr.compile:
        fwd_model = torch.compile(fwd_model)

    logger = RunLogger(cfg, run_dir, is_main, start_step)
    progress = ProgressLine(start_step, max_steps)
    ckpt_path = run_dir / "checkpoints" / "last.pt"

    def save(step_next: int, **extra):
        if is_main:
            save_checkpoint(ckpt_path, model, optimizer, step_next, cfg, **extra)

    # Ctrl-C / SIGTERM: finish the current step, save, exit cleanly.
    stop = {"signal": None}

    def _on_signal(signum, _frame):
        stop["signal"] = signum

    old_handlers = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old_handlers[s] = signal.signal(s, _on_signal)
        except ValueError:  # not the main thread
            pass

    batches = batch_iterator(sampler, start_step, max_steps, int(cfg.data.num_workers))
    M = int(cfg.model.pose_predict_num_candidates) if cfg.model.predict_pose else 1
    summary: dict = {"start_step": start_step}
    consecutive_bad = 0
    decay_params, wd = decay_parameters(model), float(cfg.optim.weight_decay)
    step, stop_now, final = start_step, False, start_step
    t_last, steps_since = time.perf_counter(), 0
    last_terms: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    model.train()
    try:
        if is_main and cfg.val.every and cfg.val.at_start and start_step == 0:
            # the untrained network's numbers, for before/after comparisons
            val0 = {
                k: x
                for k, x in _validate(model, reader, cfg, device).items()
                if not k.startswith("_")
            }
            logger.metrics(0, val0, prefix="val_init")
            summary["val_init"] = val0
            print(
                "[dpc.train] val (untrained): "
                + ", ".join(f"{k} {v:.4g}" for k, v in val0.items()),
                flush=True,
            )
        for step in range(start_step, max_steps):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            sigma = schedules.blur_sigma(step, cfg)
            keep = schedules.keep_fraction(step, cfg)
            out = compute_step(
                fwd_model,
                model,
                renderer,
                batch,
                cfg,
                step,
                sigma,
                keep,
                rank_slice,
                amp=bool(tr.amp),
            )
            finite, stop_now = _sync_flags(out.loss, stop["signal"] is not None, world)
            if finite:
                out.loss.backward()
                add_weight_decay_grad(decay_params, wd)
                if tr.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(tr.grad_clip))
                optimizer.step()
                consecutive_bad = 0
            else:
                consecutive_bad += 1
                logger.event(step, f"non-finite loss, step skipped ({consecutive_bad} in a row)")
                if consecutive_bad >= int(tr.nan_max_consecutive):
                    # The weights have not changed since the last good step: save them.
                    save(step, stopped_by="non-finite loss")
                    raise NonFiniteLossError(
                        f"{consecutive_bad} consecutive non-finite losses at step {step}; stopped. "
                        f"The last good state is in {ckpt_path} (resume=<run dir> after fixing "
                        f"the cause, e.g. a lower optim.lr)"
                    )
            optimizer.zero_grad(set_to_none=True)
            steps_since += 1
            final = step + 1  # the next step to run

            last = step + 1 == max_steps
            if (step + 1) % int(tr.log_every) == 0 or last or step == start_step:
                # note: .item() is a host-device sync point; only here.
                logged = dict(out.terms)
                with torch.no_grad():
                    logged["weight_decay"] = (
                        l2_weight_decay(model, wd) if wd else out.loss.new_zeros(())
                    )
                logged["loss"] = out.loss.detach() + logged["weight_decay"]  # the full objective
                t = torch.stack([v.detach().float() for v in logged.values()])
                if world > 1:
                    dist.all_reduce(t)
                    t = t / world
                terms = dict(zip(logged, t.tolist()))
                now = time.perf_counter()
                rate = steps_since / max(now - t_last, 1e-9)
                t_last, steps_since = now, 0
                values = {
                    **terms,
                    "lr": optimizer.param_groups[0]["lr"],
                    "sigma": sigma,
                    "keep_fraction": keep,
                    "scale": float(out.scale.mean()),
                    "step_time": 1.0 / rate,
                    "steps_per_s": rate,
                }
                winners = out.winner.cpu().numpy() if out.winner is not None else None
                logger.scalars(step, values, winners, M)
                last_terms = terms
                if is_main and ((step + 1) % int(tr.print_every) == 0 or last):
                    print(
                        progress.line(step, terms["loss"], f"sigma {sigma:.2f} keep {keep:.2f}"),
                        flush=True,
                    )
            if is_main and tr.image_every and ((step + 1) % int(tr.image_every) == 0 or last):
                _log_media(logger, step, batch, out, M)
            if cfg.val.every and ((step + 1) % int(cfg.val.every) == 0 or last):
                if is_main:
                    from dpc.training.validate import wandb_media

                    val_res = _validate(model, reader, cfg, device)
                    val_metrics = {k: x for k, x in val_res.items() if not k.startswith("_")}
                    logger.metrics(step, val_metrics)
                    if logger.run is not None:
                        media = wandb_media(val_res)
                        if media:
                            logger.run.log(media, step=step)
                    print(
                        f"[dpc.train] val @ {step + 1}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in val_metrics.items()),
                        flush=True,
                    )
            if tr.checkpoint_every and (step + 1) % int(tr.checkpoint_every) == 0 and not last:
                save(step + 1)
            if tr.debug_step_sleep:
                time.sleep(float(tr.debug_step_sleep))  # test aid (SIGKILL test)
            if stop_now:
                break
        if stop_now:
            logger.event(
                step,
                f"interrupted by signal {stop['signal'] or '(on another rank)'}: "
                f"saved step {final}, exiting",
            )
        save(final)
        summary.update(step=final, losses=last_terms, val=val_metrics, interrupted=stop_now)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        logger.finish()
    summary["wall_time_s"] = time.perf_counter() - t_start
    summary["run_dir"] = str(run_dir)
    if is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _validate(model, reader, cfg, device) -> dict[str, float]:
    from dpc.training.validate import validate

    return validate(unwrap(model), reader, cfg, device)


def _log_media(logger: RunLogger, step: int, batch, out, M: int) -> None:
    """Preview image (input, GT mask, predicted silhouette per candidate, first view of up
    to 4 objects) and the first object's point cloud."""
    if not logger.active or logger.run is None:
        return
    from dpc.training.preview import draw_points, panel, to_uint8

    rows = []
    for i in range(min(4, batch["image"].shape[0])):
        rows.append(
            [to_uint8(batch["image"][i, 0]), to_uint8(batch["mask"][i, 0])]
            + [to_uint8(out.silhouette[i, 0, m]) for m in range(M)]
            + [draw_points(out.points[i].cpu().numpy(), 128, "side")]
        )
    img = np.asarray(panel(rows, 96))
    cols = out.colors[0].cpu().numpy() if out.colors is not None else None
    logger.media(step, img, out.points[0].cpu().numpy(), cols)


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> None:
    """Thin hydra shell around :func:`train`."""
    try:
        train(cfg)
    except NonFiniteLossError as e:
        print(f"[dpc.train] {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
