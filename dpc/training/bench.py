"""Time training steps under options (AMP, torch.compile, data workers).

``python -m dpc.training.bench +experiment=car_quick_camera_supervision [key=value ...]``
composes the training config, then times ``--steps`` full steps (batch, forward, renderer,
backward, Adam) after ``--warmup`` for each variant, and prints medians in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from dpc.data import batch_iterator, build_batch_sampler, open_training_data
from dpc.losses import normalize_loss_config
from dpc.models import build_model
from dpc.render import build_renderer
from dpc.training.optim import build_optimizer
from dpc.training.step import compute_step

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


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
    s = build_batch_sampler(cfg, reader, "train", seed=0)
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="base,amp,compile,workers2")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose("train", overrides=a.overrides)
    with open_dict(cfg):
        cfg.paths.run_dir = "/tmp/unused"
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
    for v in a.variants.split(","):
        amp, comp, w, fused = opts[v]
        ms, wait = time_variant(cfg, reader, amp, comp, w, a.steps, a.warmup, device, fused)
        print(
            f"{v:12s} step {ms:8.1f} ms  ({1000 / ms:5.2f} steps/s)  batch wait {wait:6.1f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
