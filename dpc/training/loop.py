"""The named pieces of the training loop (:func:`dpc.train.train` reads top to bottom
through them): data, model wrapping, the per-step host sync, stop signals, logging,
validation and the closing messages."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from dpc.cli import CONFIGS
from dpc.data import open_training_data
from dpc.eval.validate import scalars, summary_lines, validate
from dpc.runs import unwrap
from dpc.training.distributed import resolve_device, setup_distributed
from dpc.training.logging import (
    ProgressLine,
    RunLogger,
    format_eta,
    wandb_histograms,
    wandb_payload,
)
from dpc.training.optim import l2_weight_decay
from dpc.training.preview import training_preview
from dpc.training.step import StepOutput


class NonFiniteLossError(RuntimeError):
    """Raised after ``trainer.nan_max_consecutive`` consecutive non-finite losses."""


def check_loss_config(loss) -> None:
    """Clear errors for loss settings that would silently train something else."""
    for key, value in loss.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"loss.{key} must be >= 0, got {value}")
    for key in ("repulsion_radius", "repulsion_neighbors", "repulsion_queries"):
        if key in loss and not loss[key] > 0:  # a zero radius divides by zero
            raise ValueError(f"loss.{key} must be > 0, got {loss[key]}")


def start_process(cfg) -> tuple[int, int, int, torch.device]:
    """``(rank, world size, local rank, device)`` of this process (DDP under torchrun),
    with torch's CPU threads set to ``trainer.num_threads``."""
    rank, world, local_rank = setup_distributed(str(cfg.device))
    device = resolve_device(str(cfg.device), local_rank)
    if cfg.trainer.num_threads:
        torch.set_num_threads(int(cfg.trainer.num_threads))
    return rank, world, local_rank, device


def open_data(cfg, is_main: bool, world: int):
    """The training dataset reader; under DDP rank 0 builds a missing dataset first and
    the other ranks wait for it."""
    reader = open_training_data(cfg) if is_main else None
    if world > 1:
        dist.barrier()
    return reader if is_main else open_training_data(cfg)


def wrap_model(model: torch.nn.Module, cfg, device, world: int, local_rank: int):
    """The module the step calls: ``model`` under DDP (several processes) and/or
    ``torch.compile`` (``trainer.compile``)."""
    fwd: torch.nn.Module = model
    if world > 1:
        # heads whose loss weight is 0 get no gradient; DDP must be told to expect that
        unused = (
            cfg.model.predict_pose
            and cfg.model.pose_predictor_student
            and not cfg.loss.pose_predictor_student_loss_weight
        ) or (cfg.model.pc_rgb and not cfg.loss.color_weight)
        fwd = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[local_rank] if device.type == "cuda" else None,
            find_unused_parameters=bool(unused),
        )
    if cfg.trainer.compile:
        fwd = torch.compile(fwd)
    return fwd


def update_or_skip(out, finite: bool, model, optimizer, cfg, step: int, n_bad: int, logger,
                   save) -> int:  # fmt: skip
    """Back-propagate ``out.loss`` and step the optimiser (weight decay: its parameter
    groups) when the loss is finite on every rank; else skip the step, and after
    ``trainer.nan_max_consecutive`` skips in a row save (``save(step, ...)`` returns the
    checkpoint's path) and raise :class:`NonFiniteLossError`. Returns the number of
    non-finite steps in a row."""
    tr = cfg.trainer
    if finite:
        out.loss.backward()
        if tr.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tr.grad_clip))
        optimizer.step()
        return 0
    n_bad += 1
    logger.event(step, f"non-finite loss, step skipped ({n_bad} in a row)")
    if n_bad >= int(tr.nan_max_consecutive):
        # The weights have not changed since the last good step: save them.
        path = save(step, stopped_by="non-finite loss")
        raise NonFiniteLossError(
            f"{n_bad} consecutive non-finite losses at step {step}; stopped. The last good "
            f"state is in {path} (resume=<run dir> after fixing the cause, e.g. a lower optim.lr)"
        )
    return n_bad


def sync_flags(loss: torch.Tensor, stop_requested: bool, world: int) -> tuple[bool, bool]:
    """``(loss finite on every rank, a stop signal arrived on any rank)``: the loop's one
    host sync per step (free on CPU; where the finiteness check lives, the renderer has
    none) and, under DDP, one tiny all-reduce, so that all ranks skip the same steps and
    stop after the same step (a rank leaving alone would hang the others)."""
    flags = torch.stack(
        (~torch.isfinite(loss.detach()), torch.tensor(stop_requested, device=loss.device))
    ).to(torch.float32)
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    bad, stop = flags.tolist()
    return bad == 0.0, stop > 0.0


class StopSignals:
    """Context manager: Ctrl-C / SIGTERM set :attr:`signal` (the loop finishes the step,
    saves and exits cleanly) instead of raising; the old handlers come back on exit."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict = {}

    def _on_signal(self, signum, _frame):
        self.signal = signum

    def __enter__(self) -> StopSignals:
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class StepMeter:
    """Steps per second between log steps, the console progress line, and, once, a
    notice when a run on the CPU would take far too long (``cpu_notice_after`` steps in,
    see :func:`cpu_time_notice`)."""

    def __init__(self, cfg, device, start_step: int, cpu_notice_after: int = 10):
        self.cfg, self.start, self.max_steps = cfg, start_step, int(cfg.trainer.max_steps)
        self.progress = ProgressLine(start_step, self.max_steps)
        self.t_last, self.since = time.perf_counter(), 0
        self.notice_at = start_step + 1 + cpu_notice_after if device.type == "cpu" else None
        self.t_first: float | None = None

    def tick(self, step: int) -> None:
        """Call after each finished ``step``."""
        self.since += 1
        if self.notice_at is None:
            return
        if step == self.start:  # time from the end of the first (warm-up) step
            self.t_first = time.perf_counter()
        elif step + 1 == self.notice_at and self.t_first is not None:
            per_step = (time.perf_counter() - self.t_first) / (step - self.start)
            notice = cpu_time_notice(self.cfg, per_step, self.max_steps - step - 1)
            if notice:
                print(notice, file=sys.stderr, flush=True)

    def rate(self) -> float:
        """Steps per second since the previous call."""
        now = time.perf_counter()
        rate = self.since / max(now - self.t_last, 1e-9)
        self.t_last, self.since = now, 0
        return rate


def cpu_time_notice(cfg, s_per_step: float, steps_left: int, limit_h: float = 6.0) -> str:
    """A notice for a run on the CPU projected to take more than ``limit_h`` hours: the
    measured s/step, the projection, and the CPU-sized experiment to use instead."""
    eta = s_per_step * steps_left
    if eta < limit_h * 3600:
        return ""
    name = str(cfg.name)
    category, _, rest = name.partition("_")
    quick = f"{category}_quick" + (f"_{rest}" if rest else "")
    if "quick" in name or not (CONFIGS / "experiment" / f"{quick}.yaml").exists():
        quick = "car_quick"
    return (
        f"[dpc.train] NOTE: this run is on the CPU at {s_per_step:.2f} s/step (measured), so "
        f"its remaining {steps_left} steps would take {format_eta(eta)}. The paper-sized "
        f"experiments are meant for a GPU; on a CPU use a CPU-sized one instead, e.g. "
        f"python -m dpc.train +experiment={quick}"
    )


def log_step(
    logger: RunLogger,
    meter: StepMeter,
    step: int,
    out: StepOutput,
    model,
    optimizer,
    cfg,
    sigma: float,
    keep: float,
    world: int,
    M: int,
) -> dict[str, float]:
    """Log the step's loss terms (averaged over ranks; ``loss`` is the full objective,
    weight decay included) and settings; print the progress line every
    ``trainer.print_every`` steps. Returns the loss terms. One host sync."""
    wd = float(cfg.optim.weight_decay)
    logged = dict(out.terms)
    with torch.no_grad():
        logged["weight_decay"] = l2_weight_decay(model, wd) if wd else out.loss.new_zeros(())
    logged["loss"] = out.loss.detach() + logged["weight_decay"]  # the full objective
    t = torch.stack([v.detach().float() for v in logged.values()])
    if world > 1:
        dist.all_reduce(t)
        t = t / world
    terms = dict(zip(logged, t.tolist()))
    rate = meter.rate()
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
    last = step + 1 == meter.max_steps
    if logger.active and ((step + 1) % int(cfg.trainer.print_every) == 0 or last):
        line = meter.progress.line(step, terms["loss"], f"sigma {sigma:.2f} keep {keep:.2f}")
        print(line, flush=True)
    return terms


def validate_and_log(
    logger: RunLogger, model, reader, cfg, device, step: int, initial: bool = False
) -> dict[str, float]:
    """Run :func:`dpc.eval.validate.validate` (rank 0), log its scalars as ``val/<name>``
    (``val_init/<name>`` for the untrained network, ``initial``) and its clouds to wandb.
    A failure is logged as an event and training goes on."""
    try:
        res = validate(unwrap(model), reader, cfg, device)
    except Exception as e:  # a metric bug must not end a long run; it shows in the log
        logger.event(step, f"validation failed: {type(e).__name__}: {e}")
        return {}
    metrics = scalars(res)
    logger.metrics(step, metrics, prefix="val_init" if initial else "val")
    if not initial and logger.run is not None:
        clouds = {k: x for k, x in wandb_payload(res).items() if not isinstance(x, float)}
        if "pose_report" in res:  # per-view pose errors, paper and robust alignment
            clouds.update(wandb_histograms(res["pose_report"]))
        if clouds:
            logger.run.log(clouds, step=step)
    if initial:
        logger.initial_val = metrics
    label = "val (untrained)" if initial else f"val @ {step + 1}"
    n = int(cfg.val.num_objects)
    head = f"[dpc.train] {label} on val[:{n}]: projection loss {metrics['projection_loss']:.2f}"
    lines = summary_lines(metrics, None if initial else logger.initial_val)
    print("\n  ".join([head + " (every scalar: train_log.jsonl)", *lines]), flush=True)
    return metrics


def log_media(logger: RunLogger, step: int, batch, out: StepOutput, M: int) -> None:
    """Preview image (titled columns: input | GT mask | each candidate's silhouette with its
    loss | the cloud from two viewpoints) and the first object's point cloud, to wandb."""
    if not logger.active or logger.run is None:
        return
    img = training_preview(batch, out, step)  # titled columns, see dpc.training.preview
    cols = out.colors[0].cpu().numpy() if out.colors is not None else None
    logger.media(step, img, out.points[0].cpu().numpy(), cols)


def next_steps_message(run_dir: Path) -> str:
    """Where the run is and the commands that evaluate and visualise it."""
    return (
        f"[dpc.train] run directory: {run_dir}\n"
        f"  evaluate:  python -m dpc.evaluate run_dir={run_dir} split=test\n"
        f"  visualise: python -m dpc.visualize run_dir={run_dir} split=test"
    )
