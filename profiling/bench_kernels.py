"""Per-op GPU benchmark: each Triton kernel vs its PyTorch reference.

    python profiling/bench_kernels.py [--views 128] [--points 8000] [--grid 64] [--taps 21]

Times forward and forward+backward of splat, blur3d, blur_occupancy and ray_project at
one size with ``triton.testing.do_bench`` (median ms, quantiles 0.2 / 0.8), checks parity
once before timing, and prints a Markdown table with effective GB/s (bytes: one read of
each input volume + one write of each output volume, float32). Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from kernels import reference as ref  # noqa: E402


def ops(B: int, N: int, G: int, K: int):
    """(name, triton fn, reference fn, inputs, bytes moved by the forward)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    dev = "cuda"
    pts = (torch.rand(B, N, 3, device=dev, generator=g) - 0.5) * 0.9
    vol = torch.rand(B, 1, G, G, G, device=dev, generator=g) * 1.2
    occ = torch.rand(B, 1, G, G, G, device=dev, generator=g)
    scale = torch.rand(B, device=dev, generator=g) + 0.5
    V = B * G**3 * 4
    yield (
        "splat",
        lambda p: kernels.splat_points(p, (G, G, G), backend="triton")[0],
        lambda p: ref.splat_points_ref(p, (G, G, G))[0],
        [pts],
        B * N * 12 + V,
    )
    yield (
        "blur3d",
        lambda v: kernels.blur3d(v, 3.0, K, backend="triton"),
        lambda v: ref.blur3d_ref(v, 3.0, K),
        [vol],
        2 * V,
    )
    yield (
        "blur_occupancy",
        lambda v, s: kernels.blur_occupancy(v, 3.0, K, s, backend="triton"),
        lambda v, s: kernels.blur_occupancy(v, 3.0, K, s, backend="reference"),
        [vol, scale],
        2 * V,
    )
    yield (
        "ray_project",
        lambda o: kernels.ray_project(o, return_depth=False, backend="triton").silhouette,
        lambda o: ref.ray_project_ref(o, return_depth=False).silhouette,
        [occ],
        V + B * G * G * 4,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=128)
    ap.add_argument("--points", type=int, default=8000)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--taps", type=int, default=21)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels.py needs a CUDA device")
    from triton.testing import do_bench

    print(
        f"{torch.cuda.get_device_name()}; B={args.views} N={args.points} "
        f"G={args.grid} K={args.taps}\n"
    )
    print("| op | provider | fwd ms | fwd GB/s | fwd+bwd ms | x ref (fwd+bwd) |")
    print("|---|---|---|---|---|---|")
    for name, fn_t, fn_r, inputs, nbytes in ops(args.views, args.points, args.grid, args.taps):
        leaves = [x.detach().requires_grad_() for x in inputs]
        out_t, out_r = fn_t(*leaves), fn_r(*leaves)
        err = ((out_t - out_r).norm() / out_r.norm()).item()
        assert err < 1e-4, f"{name}: parity rel L2 {err:.2e}"
        cot = torch.randn_like(out_r)
        res = {}
        for prov, fn in (("triton", fn_t), ("torch", fn_r)):
            with torch.no_grad():
                fwd = do_bench(lambda fn=fn, x=inputs: fn(*x), quantiles=[0.5, 0.2, 0.8])[0]
            full = do_bench(
                lambda fn=fn, x=leaves, c=cot: fn(*x).backward(c),
                quantiles=[0.5, 0.2, 0.8],
                grad_to_none=leaves,
            )[0]
            res[prov] = (fwd, full)
        for prov in ("triton", "torch"):
            fwd, full = res[prov]
            print(
                f"| {name} | {prov} | {fwd:.3f} | {nbytes / fwd / 1e6:.0f} | {full:.3f} | "
                f"{res['torch'][1] / full:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
