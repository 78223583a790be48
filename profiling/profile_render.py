"""Time the whole renderer (forward, backward, forward+backward) per backend.

Providers: ``eager`` (the pure-PyTorch reference), ``compile`` (the reference under
``torch.compile``), ``triton`` (the Triton kernels: blur passes, then the projection;
``RenderSettings.kernel_variant="passes"``) and ``triton-fused`` (smoothing and
projection fused, ``kernel_variant="fused"``, kernels/fused.py). Configurations: the paper's
training scale (128 views = 8 objects x 4 views x 4 pose candidates, 8000 points, 64^3
grid, 21-tap blur) and variations (32^3, 128^3; 1000 and 16000 points).

Reports median milliseconds (CUDA events, warm-up excluded), the peak memory of a
forward+backward step above the inputs, speedups over eager and compiled, and the
achieved fraction of a memory-bandwidth floor (see :func:`floor_bytes` for what it
counts) at the copy bandwidth measured on the same device. Writes ``results.md`` and
``results.json`` into ``--out``.

    python profiling/profile_render.py                 # GPU, all configs (~10 min)
    python profiling/profile_render.py --quick         # tiny sizes, CPU, seconds (CI)

On a CPU-only machine ``--quick`` times the eager reference and, when triton is
installed, the Triton kernels through the interpreter (``TRITON_INTERPRET=1``): those
numbers only show that the script runs; they say nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# The interpreter must be chosen before `kernels` imports triton (see tests/conftest.py).
if "--quick" in sys.argv and os.environ.get("TRITON_INTERPRET") is None:
    import torch  # noqa: E402

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpc.render import PointCloudRenderer, RenderSettings  # noqa: E402
from kernels._utils import has_triton, triton_interpreting  # noqa: E402


@dataclass(frozen=True)
class Config:
    name: str
    views: int  # B: point clouds projected per step
    points: int  # N
    grid: int  # G (G^3 cells, G x G image)
    kernel: int  # K blur taps
    sigma: float = 3.0  # blur std in cells (paper start value; cost does not depend on it)


PAPER = [
    Config("paper: 128 views, 8000 pts, 64^3, K21", 128, 8000, 64, 21),
    Config("32^3", 128, 8000, 32, 21),
    Config("128^3", 128, 8000, 128, 21),
    Config("1000 pts", 128, 1000, 64, 21),
    Config("16000 pts", 128, 16000, 64, 21),
]
QUICK = [
    Config("quick: 2 views, 200 pts, 16^3, K5", 2, 200, 16, 5, 1.0),
    Config("quick: 3 views, 500 pts, 12^3, K3", 3, 500, 12, 3, 1.0),
]


def floor_bytes(cfg: Config, elem: int = 4) -> dict[str, int]:
    """Bytes the render must at least move through memory, per pass.

    V = B * G^3 cells, P = B * N points, I = B * G^2 pixels; float32 (``elem`` = 4).
    Forward: read points (12 P) and write the splatted volume (V); the smoothing reads it
    and writes the occupancy (2 V; its three 1-D passes could in principle stay on chip);
    the projection reads the occupancy (V) and writes the image (I).
    Backward: the projection reads the occupancy and the image gradient and writes the
    occupancy gradient (2 V + I); the smoothing reads that gradient and one saved volume
    for the clip masks and writes the splat gradient (3 V); the splat backward gathers 8
    corners per point (at most min(V, 8 P) cells), reads the points and writes their
    gradient (24 P). Quaternion / scale gradients and the camera transform are
    O(P) and counted in the 12 P / 24 P terms only.
    """
    V = cfg.views * cfg.grid**3 * elem
    P = cfg.views * cfg.points
    Iw = cfg.views * cfg.grid**2 * elem
    fwd = 12 * P + V + 2 * V + V + Iw
    bwd = 2 * V + Iw + 3 * V + min(V, 8 * P * elem) + 24 * P
    return {"forward": fwd, "backward": bwd, "fwd+bwd": fwd + bwd}


def make_inputs(cfg: Config, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Points of a blob in the unit cube, cameras at random poses, scales in (0.5, 1).
    pts = (torch.rand(cfg.views, cfg.points, 3, generator=g) - 0.5) * 0.8
    quat = torch.randn(cfg.views, 4, generator=g)
    scale = torch.rand(cfg.views, generator=g) * 0.5 + 0.5
    cot = torch.randn(cfg.views, cfg.grid, cfg.grid, generator=g)  # d loss / d silhouette
    return [t.to(device) for t in (pts, quat, scale, cot)]


class Timer:
    """Median wall time of a callable: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, setup, fn, warmup: int, iters: int) -> float:
        times = []
        for i in range(warmup + iters):
            state = setup()
            self.sync()
            if self.cuda:
                start, end = (
                    torch.cuda.Event(enable_timing=True),
                    torch.cuda.Event(enable_timing=True),
                )
                start.record()
                fn(state)
                end.record()
                torch.cuda.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.perf_counter()
                fn(state)
                ms = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times.append(ms)
        return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (reads + writes counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    t = Timer(device)
    ms = t(lambda: None, lambda _: y.copy_(x), warmup=3, iters=10)
    return 2 * nbytes / (ms * 1e-3)


PROVIDERS = ("eager", "compile", "triton", "triton-fused")


def build(provider: str, cfg: Config):
    backend = "triton" if provider.startswith("triton") else "reference"
    variant = "fused" if provider == "triton-fused" else "passes"
    r = PointCloudRenderer(
        RenderSettings(
            vox_size=cfg.grid, kernel_size=cfg.kernel, backend=backend, kernel_variant=variant
        )
    )
    if provider == "compile":
        return torch.compile(r)
    return r


def profile_one(provider: str, cfg: Config, device: str, warmup: int, iters: int) -> dict:
    pts, quat, scale, cot = make_inputs(cfg, device)
    render = build(provider, cfg)
    timer = Timer(device)

    def leaves():
        return [t.detach().requires_grad_() for t in (pts, quat, scale)]

    def forward(state):
        p, q, s = state
        return render(p, q, cfg.sigma, scale=s).silhouette

    def fwd_setup():
        return leaves()

    def bwd_setup():
        st = leaves()
        return st, forward(st)

    def backward(state):
        _, sil = state
        sil.backward(cot)

    def step(state):
        forward(state).backward(cot)

    t_fwd = timer(fwd_setup, forward, warmup, iters)
    t_bwd = timer(bwd_setup, backward, warmup, iters)
    t_all = timer(fwd_setup, step, warmup, iters)
    peak = None
    if device.startswith("cuda"):
        st = leaves()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(st)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return {"forward_ms": t_fwd, "backward_ms": t_bwd, "fwd+bwd_ms": t_all, "peak_mb": peak}


def parity(cfg: Config, device: str, provider: str = "triton") -> float:
    """Relative L2 difference of a Triton provider's silhouette vs the eager reference."""
    pts, quat, scale, _ = make_inputs(cfg, device)
    a = build("eager", cfg)(pts, quat, cfg.sigma, scale=scale).silhouette
    b = build(provider, cfg)(pts, quat, cfg.sigma, scale=scale).silhouette
    return ((a - b).norm() / a.norm().clamp_min(1e-30)).item()


def env_info(device: str, argv: list[str]) -> dict:
    # gpu_check.sh passes the commit it read from .wheelhouse/COMMIT: the device's copy of
    # the tree can hold a stale .git (2026-12-04: its HEAD was an older commit)
    sha = os.environ.get("DPC_COMMIT", "")[:7]
    try:
        sha = (
            sha
            or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
        )
    except Exception:
        sha = "unknown"
    triton_version = None
    if has_triton():
        import triton

        triton_version = triton.__version__
    cpu = platform.processor() or platform.machine()
    return {
        "device": torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU ({cpu}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "triton": triton_version,
        "triton_interpreter": triton_interpreting(),
        "git": sha,
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "command": "python profiling/profile_render.py " + " ".join(argv),
    }


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


def to_markdown(info: dict, rows: list[dict], bw: float | None) -> str:
    lines = [
        f"Device: {info['device']}; torch {info['torch']}; triton {info['triton']}"
        + (" (interpreter: CPU, not GPU speed)" if info["triton_interpreter"] else "")
        + f"; git {info['git']}; {info['date_utc']} UTC",
        f"Command: `{info['command']}`",
        "",
    ]
    if bw:
        lines.append(f"Measured copy bandwidth: {bw / 1e9:.0f} GB/s (floor fractions use it)")
        lines.append("")
    lines += [
        "| config | provider | fwd ms | bwd ms | fwd+bwd ms | peak MB | x eager | x compile "
        "| x triton (passes) | floor fraction | parity (rel L2) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['provider']} | {fmt(r['forward_ms'])} | "
            f"{fmt(r['backward_ms'])} | {fmt(r['fwd+bwd_ms'])} | {fmt(r['peak_mb'], '.0f')} | "
            f"{fmt(r.get('speedup_vs_eager'))} | {fmt(r.get('speedup_vs_compile'))} | "
            f"{fmt(r.get('speedup_vs_triton'))} | "
            f"{fmt(r.get('floor_fraction'), '.3f')} | {fmt(r.get('parity_rel_l2'), '.1e')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU, seconds; for CI)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--providers",
        default=None,
        help="comma list of eager,compile,triton,triton-fused (default: all that can run)",
    )
    ap.add_argument("--configs", default=None, help="comma list of config indices")
    ap.add_argument(
        "--custom",
        default=None,
        metavar="B,N,G,K",
        help="one custom config instead: views, points, grid, taps",
    )
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "profiling" / "out")
    args = ap.parse_args(argv)

    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available")
    configs = QUICK if args.quick else PAPER
    if args.configs:
        configs = [configs[int(i)] for i in args.configs.split(",")]
    if args.custom:
        try:
            B, N, G, K = (int(v) for v in args.custom.split(","))
        except ValueError as e:
            raise ValueError(f"--custom must be B,N,G,K ints, got {args.custom!r}") from e
        configs = [Config(f"{B} views, {N} pts, {G}^3, K{K}", B, N, G, K)]
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    iters = args.iters if args.iters is not None else (5 if args.quick else 20)
    triton_ok = has_triton() and (on_gpu or triton_interpreting())
    if args.providers:
        providers = args.providers.split(",")
        bad = set(providers) - set(PROVIDERS)
        if bad:
            raise ValueError(f"--providers: unknown {sorted(bad)}")
        if any(p.startswith("triton") for p in providers) and not triton_ok:
            raise ValueError("--providers triton needs CUDA (or TRITON_INTERPRET=1 and triton)")
    else:
        # torch.compile takes ~20 s per config on the CPU: not in the quick CI run.
        providers = (
            ["eager"]
            + ([] if args.quick else ["compile"])
            + (["triton", "triton-fused"] if triton_ok else [])
        )
    if not on_gpu:
        torch.set_num_threads(min(2, torch.get_num_threads()))

    info = env_info(args.device, argv)
    bw = copy_bandwidth(args.device, 1 << 30) if on_gpu else None
    rows = []
    for cfg in configs:
        by_provider = {}
        for prov in providers:
            t0 = time.perf_counter()
            res = profile_one(prov, cfg, args.device, warmup, iters)
            interp = prov.startswith("triton") and not on_gpu
            label = prov + (" (interpreter)" if interp else "")
            row = {"config": cfg.name, "provider": label, **asdict(cfg), **res}
            if prov.startswith("triton"):
                row["parity_rel_l2"] = parity(cfg, args.device, prov)
            by_provider[prov] = row
            rows.append(row)
            print(
                f"{cfg.name:<40} {label:<22} fwd {res['forward_ms']:9.2f} ms  "
                f"bwd {res['backward_ms']:9.2f} ms  fwd+bwd {res['fwd+bwd_ms']:9.2f} ms  "
                f"peak {fmt(res['peak_mb'], '.0f')} MB  ({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
        fb = floor_bytes(cfg)
        for prov, row in by_provider.items():
            row["floor_bytes"] = fb
            for ref in ("eager", "compile", "triton"):
                # Interpreter timings are not comparable to anything: no speedups.
                interp = prov.startswith("triton") and not on_gpu
                if ref in by_provider and ref != prov and not interp:
                    row[f"speedup_vs_{ref}"] = by_provider[ref]["fwd+bwd_ms"] / row["fwd+bwd_ms"]
            if bw:
                row["floor_fraction"] = fb["fwd+bwd"] / bw * 1e3 / row["fwd+bwd_ms"]

    args.out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(info, rows, bw)
    (args.out / "results.md").write_text(md)
    (args.out / "results.json").write_text(
        json.dumps({"env": info, "copy_bandwidth_Bps": bw, "rows": rows}, indent=2)
    )
    print(md)
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
