"""The CPU path against the reference, side by side in one run (issue 14).

    python profiling/bench_cpu.py                      # everything, 1 thread (~10 min)
    python profiling/bench_cpu.py --threads 2
    python profiling/bench_cpu.py --skip-train         # renderer only
    python profiling/bench_cpu.py --quick              # tiny sizes, seconds (CI smoke test)

Part 1, the renderer (``PointCloudRenderer``: rotation, perspective, splat, clip, blur,
scale, clip, ray termination; loss = squared error to a random target silhouette) at
``car_quick`` scale (128 clouds x 2000 points, G 32, K 7) and paper scale (128 x 8000,
64^3, K 21): median forward, backward and forward + backward ms for ``backend=reference``
and ``backend=auto`` (the CPU path). The two backends alternate repetition by repetition,
so load from other processes hits both alike; the ratio is what to read.

Part 2, full training steps (batch, networks, renderer, losses, backward, Adam) for
``car_quick`` and ``car_quick_camera_supervision`` on ``data/car_small``, timed by
:func:`dpc.training.time_steps.time_variant` with ``render.backend=reference`` and ``auto``,
alternating in rounds; medians of the rounds' medians.

``--thread-study`` times the fast path with 1 and 2 torch threads, on the machine as it
is and again while a busy-loop Python process (started and stopped here) loads a core:
renderer forward + backward at ``car_quick`` scale and ``car_quick`` training steps.

``--compare-logs BASE OTHER [OTHER ...]`` compares the per-step ``projection_loss`` of
training runs' ``train_log.jsonl`` (run with ``trainer.log_every=1``) instead: for each
other run, the relative difference |other - base| / base per step (max, median, and at
the last step), so the fast path's difference to the reference can be set against the
spread of a second reference run that differs only in float32 rounding (2 threads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpc.camera import random_quat  # noqa: E402
from dpc.render import PointCloudRenderer, RenderSettings  # noqa: E402

SCALES = {
    "car_quick": dict(B=128, N=2000, G=32, K=7, sigma=1.5),
    "paper": dict(B=128, N=8000, G=64, K=21, sigma=3.0),
    "quick": dict(B=4, N=300, G=12, K=5, sigma=1.0),
}
BACKENDS = ("reference", "auto")


def _inputs(B: int, N: int, G: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Clouds filling most of the unit cube, as a trained decoder's (tanh / 2) do.
    pts = (torch.rand(B, N, 3, generator=g) - 0.5) * 0.9
    quat = random_quat(B, g)
    scale = torch.rand(B, generator=g) * 0.5 + 0.5
    target = (torch.rand(B, G, G, generator=g) > 0.5).float()
    return pts, quat, scale, target


def time_renderer(
    scale: str, reps: int, warmup: int, backends=BACKENDS
) -> dict[str, dict[str, float]]:
    """Median fwd / bwd / fwd+bwd ms per backend at one scale (backends alternate)."""
    c = SCALES[scale]
    pts0, quat, sc0, target = _inputs(c["B"], c["N"], c["G"])
    rend = {
        b: PointCloudRenderer(RenderSettings(vox_size=c["G"], kernel_size=c["K"], backend=b))
        for b in backends
    }
    times = {b: {"fwd": [], "bwd": [], "fwd+bwd": []} for b in backends}
    for rep in range(warmup + reps):
        for b in backends:
            pts = pts0.clone().requires_grad_()
            sc = sc0.clone().requires_grad_()
            t0 = time.perf_counter()
            sil = rend[b](pts, quat, c["sigma"], sc).silhouette
            loss = 0.5 * ((sil - target) ** 2).sum()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if rep >= warmup:
                times[b]["fwd"].append(t1 - t0)
                times[b]["bwd"].append(t2 - t1)
                times[b]["fwd+bwd"].append(t2 - t0)
    return {b: {k: 1000 * statistics.median(v) for k, v in t.items()} for b, t in times.items()}


def time_training(
    experiment: str, rounds: int, steps: int, warmup: int, backends=BACKENDS
) -> dict[str, float]:
    """Median training-step ms per backend for ``+experiment=<experiment>``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from dpc.cli import CONFIGS
    from dpc.data import open_training_data
    from dpc.training.time_steps import time_variant

    cfgs, per = {}, {b: [] for b in backends}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for b in backends:
            cfgs[b] = compose(
                "train", overrides=[f"+experiment={experiment}", f"render.backend={b}"]
            )
            with open_dict(cfgs[b]):
                cfgs[b].paths.run_dir = "/tmp/unused"
    reader = open_training_data(cfgs[backends[0]])
    dev = torch.device("cpu")
    for _ in range(rounds):
        for b in backends:
            ms, _ = time_variant(cfgs[b], reader, False, False, 0, steps, warmup, dev)
            per[b].append(ms)
    return {b: statistics.median(v) for b, v in per.items()}


def thread_study(reps: int, steps: int) -> None:
    """Fast path with 1 and 2 threads, without and with a busy-loop process."""
    import subprocess

    print("\nThreads (fast path, median ms; 1 and 2 threads alternate)")
    print(f"{'load':22s} {'what':28s} {'1 thread':>9s} {'2 threads':>9s} {'1t/2t':>6s}")
    for load in ("as is", "+ busy-loop process"):
        busy = None
        if load != "as is":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            ren = {1: [], 2: []}
            for _ in range(3):
                for t in (1, 2):
                    torch.set_num_threads(t)
                    ren[t].append(time_renderer("car_quick", reps, 1, ("auto",))["auto"]["fwd+bwd"])
            r1, r2 = statistics.median(ren[1]), statistics.median(ren[2])
            print(
                f"{load:22s} {'renderer fwd+bwd car_quick':28s} {r1:9.1f} {r2:9.1f} {r1 / r2:6.2f}"
            )
            tr = {1: [], 2: []}
            for _ in range(2):
                for t in (1, 2):
                    torch.set_num_threads(t)
                    tr[t].append(time_training("car_quick", 1, steps, 3, ("auto",))["auto"])
            t1, t2 = statistics.median(tr[1]), statistics.median(tr[2])
            print(f"{load:22s} {'training step car_quick':28s} {t1:9.1f} {t2:9.1f} {t1 / t2:6.2f}")
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()


def compare_logs(paths: list[str], key: str = "projection_loss") -> None:
    """Print per-step relative differences of ``key`` of runs ``paths[1:]`` to ``paths[0]``."""
    import json

    def load(p):
        f = Path(p)
        f = f / "train_log.jsonl" if f.is_dir() else f
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        return {r["step"]: r[key] for r in rows if key in r}

    base = load(paths[0])
    print(f"{key}: relative difference per step to {paths[0]}")
    print(f"{'run':50s} {'steps':>5s} {'max':>9s} {'median':>9s} {'last':>9s} {'max@step':>8s}")
    for p in paths[1:]:
        other = load(p)
        steps = sorted(set(base) & set(other))
        rel = [abs(other[s] - base[s]) / abs(base[s]) for s in steps]
        worst = steps[max(range(len(rel)), key=rel.__getitem__)]
        print(
            f"{p[-50:]:50s} {len(steps):5d} {max(rel):9.2e} {statistics.median(rel):9.2e} "
            f"{rel[-1]:9.2e} {worst:8d}"
        )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=7, help="renderer repetitions (after warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="training rounds per backend")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument(
        "--experiments",
        default="car_quick,car_quick_camera_supervision",
        help="comma-separated experiments for the training-step part",
    )
    p.add_argument("--skip-renderer", action="store_true")
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny sizes only (smoke test)")
    p.add_argument("--thread-study", action="store_true", help="see above")
    p.add_argument("--compare-logs", nargs="+", metavar="RUN", help="see above")
    a = p.parse_args(argv)
    if a.compare_logs:
        compare_logs(a.compare_logs)
        return
    if a.thread_study:
        thread_study(a.reps, a.steps)
        return
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    scales = ["quick"] if a.quick else ["car_quick"] + ([] if a.skip_paper else ["paper"])
    print("\nRenderer (median ms; loss = squared error to a target silhouette)")
    print(f"{'scale':10s} {'pass':8s} {'reference':>10s} {'cpu':>9s} {'speed-up':>9s}")
    for s in [] if a.skip_renderer else scales:
        reps = 2 if a.quick else (a.reps if s == "car_quick" else max(3, a.reps // 2))
        r = time_renderer(s, reps, 1)
        for k in ("fwd", "bwd", "fwd+bwd"):
            ref, fast = r["reference"][k], r["auto"][k]
            print(f"{s:10s} {k:8s} {ref:10.1f} {fast:9.1f} {ref / fast:8.1f}x", flush=True)
    if a.skip_train or a.quick:
        return
    print("\nTraining step (median ms over rounds; dpc.training.time_steps.time_variant)")
    print(f"{'experiment':30s} {'reference':>10s} {'cpu':>9s} {'speed-up':>9s}")
    for exp in a.experiments.split(","):
        t = time_training(exp, a.rounds, a.steps, 3)
        ref, fast = t["reference"], t["auto"]
        print(f"{exp:30s} {ref:10.1f} {fast:9.1f} {ref / fast:8.1f}x", flush=True)


if __name__ == "__main__":
    main()
