"""Time training steps under options (AMP, torch.compile, data workers).

``python -m dpc.training.time_steps +experiment=car_quick_camera_supervision [key=value]``
composes the training config (configs/time_steps.yaml: configs/train.yaml plus
``timing.*``), then times ``timing.steps`` full steps (batch, forward, renderer, backward,
Adam) after ``timing.warmup`` for each of ``timing.variants``, and prints medians in ms.
"""

from __future__ import annotations

import statistics
import time

import torch
from omegaconf import open_dict

from dpc.cli import run_command
from dpc.data import batch_iterator, build_batch_sampler, open_training_data
from dpc.models import build_model
from dpc.render import build_renderer
from dpc.runs import normalize_loss_config
from dpc.training.optim import build_optimizer
from dpc.training.step import compute_step
from dpc.training.terms import batch_targets


def time_variant(
    cfg,
    reader,
    amp: bool,
    compile_: bool,
    workers: int,
    steps: int,
    warmup: int,
    device,
    fused: bool = True,
) -> tuple[float, float]:
    """Median step time (ms) and median time waiting for the batch (ms)."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    with open_dict(cfg):
        cfg.optim.fused = fused
    opt = build_optimizer(cfg, model)
    fwd = torch.compile(model) if compile_ else model
    r = build_renderer(cfg)
    B = int(cfg.trainer.batch_size)
    s = build_batch_sampler(cfg, reader, "train", seed=0, targets=batch_targets(cfg))
    it = batch_iterator(s, 0, steps + warmup, workers)
    times, waits = [], []
    for step in range(steps + warmup):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(it).items()}
        t1 = time.perf_counter()
        out = compute_step(fwd, r, batch, cfg, step, 1.0, 0.5, slice(0, B), amp=amp)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            waits.append(t1 - t0)
    return 1000 * statistics.median(times), 1000 * statistics.median(waits)


def run(cfg) -> None:
    """Time the variants of ``cfg.timing`` (the command's body)."""
    a = cfg.timing
    torch.set_num_threads(int(a.threads))
    normalize_loss_config(cfg.loss)  # as dpc.train: a deprecated numeric student key
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    reader = open_training_data(cfg)
    opts = {
        "base": (False, False, 0, True),
        "amp": (True, False, 0, True),
        "compile": (False, True, 0, True),
        "workers2": (False, False, 2, True),
        "unfused_adam": (False, False, 0, False),
    }
    print(
        f"device {device}, threads {a.threads}, {cfg.name}: G {cfg.render.vox_size}, "
        f"N {cfg.model.pc_num_points}, B {cfg.trainer.batch_size}"
    )
    for v in a.variants:
        amp, comp, w, fused = opts[v]
        ms, wait = time_variant(
            cfg, reader, amp, comp, w, int(a.steps), int(a.warmup), device, fused
        )
        print(
            f"{v:12s} step {ms:8.1f} ms  ({1000 / ms:5.2f} steps/s)  batch wait {wait:6.1f} ms",
            flush=True,
        )


def main(argv=None) -> None:
    """``python -m dpc.training.time_steps [key=value ...]``."""
    run_command("time_steps", run, argv, prog="dpc.training.time_steps")


if __name__ == "__main__":
    main()
