"""How far the whole render (forward, and the gradients of a random projection of it)
is from its exact value, per implementation: the eager reference and the Triton kernels
(passes, fused) in float32 against the eager reference in float64 on the same float32
inputs (the exact value of the float32 case, up to float64 rounding).

    python profiling/precision_check.py                     # GPU: 128 views, 128^3
    python profiling/precision_check.py --views 2 --grid 16 --points 500   # CPU (interpreter)

``--old-splat`` adds the Triton passes variant with the splat kernels compiled as before
the first GPU run's fix, with FMA contraction (``kernels.splat.SPLAT_OPTIONS`` emptied):
on a GPU it shows the error that contraction caused; on the CPU (interpreter, which never
contracts) it equals the fixed one. TF32 is off in torch throughout (no implementation
here uses TF32; the flags are printed). Prints one JSON object; ``--json`` also writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the interpreter, before `kernels` imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NAMES = ("silhouette", "depth", "grad_points", "grad_scale")


def render(backend, variant, B, N, G, K, compute, device, seed=0):
    """Outputs and gradients (the test's ``_render`` in tests/kernels/test_cuda_full.py):
    inputs drawn in float32, computed in ``compute``."""
    from dpc.render import PointCloudRenderer, RenderSettings

    g = torch.Generator().manual_seed(seed)
    f32 = torch.float32
    pts = ((torch.rand(B, N, 3, generator=g, dtype=f32) - 0.5) * 0.8).to(device, compute)
    q = torch.randn(B, 4, generator=g, dtype=f32).to(device, compute)
    s = (torch.rand(B, generator=g, dtype=f32) * 0.5 + 0.5).to(device, compute)
    pts.requires_grad_()
    s.requires_grad_()
    st = RenderSettings(vox_size=G, kernel_size=K, backend=backend, kernel_variant=variant)
    out = PointCloudRenderer(st)(pts, q, 3.0, scale=s, return_depth=True)
    outs = [out.silhouette, out.depth]
    vs = [torch.randn(t.shape, generator=g, dtype=f32).to(device, compute) for t in outs]
    loss = sum((t * v).sum() for t, v in zip(outs, vs))
    grads = torch.autograd.grad(loss, [pts, s])
    return [t.detach().double().cpu() for t in (*outs, *grads)]


def errors(a, exact) -> dict:
    d = a - exact
    return {
        "rel_l2": float(d.norm() / exact.norm().clamp_min(1e-300)),
        "max_abs": float(d.abs().max() / max(1.0, float(exact.abs().max()))),
    }


@contextlib.contextmanager
def splat_options(opts):
    from kernels import splat

    saved = dict(splat.SPLAT_OPTIONS)
    splat.SPLAT_OPTIONS.clear()
    splat.SPLAT_OPTIONS.update(opts)
    try:
        yield
    finally:
        splat.SPLAT_OPTIONS.clear()
        splat.SPLAT_OPTIONS.update(saved)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", type=int, default=128)
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--points", type=int, default=8000)
    ap.add_argument("--kernel-size", type=int, default=21)
    ap.add_argument("--old-splat", action="store_true", help="also the splat with FMA")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    shape = (a.views, a.points, a.grid, a.kernel_size)
    t0 = time.perf_counter()
    exact = render("reference", "passes", *shape, torch.float64, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    runs = {"eager fp32": ("reference", "passes", None)}
    runs["triton passes"] = ("triton", "passes", None)
    runs["triton fused"] = ("triton", "fused", None)
    if a.old_splat:
        runs["triton passes, splat with FMA (before the fix)"] = ("triton", "passes", {})
    res = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)",
        "torch": torch.__version__,
        "views_points_grid_k": shape,
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
        },
        "errors_vs_float64": {},
    }
    for name, (backend, variant, opts) in runs.items():
        with contextlib.nullcontext() if opts is None else splat_options(opts):
            got = render(backend, variant, *shape, torch.float32, device)
        res["errors_vs_float64"][name] = {
            n: errors(x, e) for n, x, e in zip(NAMES, got, exact, strict=True)
        }
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{res['device']}; torch {res['torch']}; views, points, grid, K {shape}; "
          f"TF32 {res['tf32']}; {res['seconds']} s")  # fmt: skip
    print("errors against float64 (rel L2 / max abs):")
    for name, errs in res["errors_vs_float64"].items():
        cells = ", ".join(f"{n} {e['rel_l2']:.3g} / {e['max_abs']:.3g}" for n, e in errs.items())
        print(f"  {name}: {cells}")
    print(json.dumps(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
