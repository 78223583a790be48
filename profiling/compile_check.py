"""Compile every Triton kernel for GPU targets without a GPU, and report what ptxas made
of each: registers, stack, spill stores / loads, shared memory.

Ahead of time (PTX, then a cubin through the ptxas that ships with triton), at the
paper's settings: 64^3 grid, K = 21 taps, 3 colour channels, and the block sizes and
warp counts the launchers actually use (read from the kernel modules), in float32 and
float64. The interpreter (``TRITON_INTERPRET=1``) used by the tests accepts code the
compiler rejects, and says nothing about register pressure: this does both.

    python profiling/compile_check.py                       # sm_90, fp32 + fp64
    python profiling/compile_check.py --arch 90 80 --json out.json --md out.md
    python profiling/compile_check.py --grid 64 128 --only fused   # also at 128^3
    PYTHONPATH=/path/to/triton36 python profiling/compile_check.py   # another Triton

Exit status 1 on a compile failure, or (``--fail-on-spill``) on any spill in a float32
kernel. Numbers come from ptxas's own ``-v`` log of the compile (TRITON_DUMP_PTXAS_LOG).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_check: unset TRITON_INTERPRET (it replaces the compiler)")
# Fresh cache (a cached kernel skips ptxas, so there would be no log) and ptxas's -v log
# printed on every compile; both read by triton when it compiles.
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile-check-")
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import blur, fused, project, splat  # noqa: E402

# The paper's settings (SPEC): 64^3 grid, 21-tap blur, RGB colours.
GRID = 64
K = 21
COLORS = 3


def _source(fn, consts: dict) -> ASTSource:
    """Signature of ``fn``: pointers (``*_ptr``) in the data dtype, every other runtime
    argument i32 (the renderer's float scalars are constexprs, see kernels/project.py)."""
    sig, cx = {}, {}
    for i, p in enumerate(fn.params):
        name = p.name
        if p.is_constexpr:
            if name not in consts:
                raise KeyError(f"{fn.__name__}: no value for constexpr {name}")
            sig[name] = "constexpr"
            cx[(i,)] = consts[name]
        else:
            sig[name] = "PTR" if name.endswith("_ptr") else "i32"
    return sig, cx


def cases(grid: int = GRID):
    """(name, kernel, constexprs, num_warps) for every kernel variant the launchers use,
    at a ``grid``^3 volume (only the projection kernels depend on it: D is a constexpr,
    and the fused plane pass bands planes taller than 64 rows)."""
    proj = dict(camera_distance=2.0, max_depth=10.0, background=1.0)
    for has_feat in (False, True):
        c = dict(HAS_FEAT=has_feat, C_BLOCK=4, BLOCK=splat._GPU_BLOCK)
        yield "splat_fwd" + ("+feat" if has_feat else ""), splat._splat_fwd_kernel, c, 4
        c = dict(c, HAS_GRAD_OCC=True, HAS_GRAD_FEAT=has_feat, BLOCK=splat._GPU_BLOCK_BWD)
        yield "splat_bwd" + ("+feat" if has_feat else ""), splat._splat_bwd_kernel, c, 4
    names = ("plain", "clip_in", "scale_clip_out", "grad_scale_clip_in", "grad_clip_out")
    for mode in range(5):
        for axis in (0, 1):
            BM, BN = blur.PASS_TILE_GRAD_SCALE if mode == 3 else blur.PASS_TILE
            c = dict(AXIS=axis, MODE=mode, HAS_SCALE=mode in (2, 3), K=K, BLOCK_M=BM, BLOCK_N=BN)
            name = f"blur_pass {names[mode]} {'DH'[0] if axis == 0 else 'W'}"
            yield name, blur._blur_pass_kernel, c, blur.PASS_WARPS
    for has_color in (False, True):
        for depth_probs in (False, True):
            tag = ("+color" if has_color else "") + ("+depth+probs" if depth_probs else "")
            c = dict(
                D=grid,
                HAS_COLOR=has_color,
                RETURN_DEPTH=depth_probs,
                RETURN_PROBS=depth_probs,
                C_BLOCK=4,
                BLOCK=project._GPU_BLOCK,
                **proj,
            )
            yield "project_fwd" + tag, project._project_fwd_kernel, c, 4
            c = dict(
                D=grid,
                HAS_COLOR=has_color,
                HAS_G_DEPTH=depth_probs,
                HAS_G_PROBS=depth_probs,
                C_BLOCK=4,
                BLOCK=project._GPU_BLOCK,
                **proj,
            )
            yield "project_bwd" + tag, project._project_bwd_kernel, c, 4
    yield from fused.compile_cases(grid, K, proj)


_REGS = re.compile(r"Used (\d+) registers")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(log: str) -> dict:
    """Registers, stack, spills and static shared memory from a ptxas ``-v`` log."""
    regs = _REGS.search(log)
    spill = _SPILL.search(log)
    smem = _SMEM.search(log)
    if not regs or not spill:
        raise ValueError(f"no ptxas -v figures in the log:\n{log[-2000:]}")
    return {
        "registers": int(regs.group(1)),
        "stack_bytes": int(spill.group(1)),
        "spill_store_bytes": int(spill.group(2)),
        "spill_load_bytes": int(spill.group(3)),
        "static_smem_bytes": int(smem.group(1)) if smem else 0,
    }


_DONE: dict = {}  # a kernel already compiled in this process hits Triton's cache: no log


def compile_one(fn, consts: dict, num_warps: int, fp: str, arch: int) -> dict:
    key = (fn.__name__, tuple(sorted(consts.items())), num_warps, fp, arch)
    if key not in _DONE:
        _DONE[key] = _compile_one(fn, consts, num_warps, fp, arch)
    return dict(_DONE[key])


def _launch_options(fn) -> dict:
    """Compile options the launchers pass for ``fn`` besides ``num_warps``."""
    if fn in (splat._splat_fwd_kernel, splat._splat_bwd_kernel):
        return dict(splat.SPLAT_OPTIONS)
    return {}


def _compile_one(fn, consts: dict, num_warps: int, fp: str, arch: int) -> dict:
    sig, cx = _source(fn, consts)
    sig = {k: (f"*{fp}" if v == "PTR" else v) for k, v in sig.items()}
    buf = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(buf):
        k = triton.compile(
            ASTSource(fn=fn, signature=sig, constexprs=cx),
            target=GPUTarget("cuda", arch, 32),
            # The splat kernels launch without FMA contraction (kernels.splat.SPLAT_OPTIONS).
            options={"num_warps": num_warps, **_launch_options(fn)},
        )
    res = parse_ptxas(buf.getvalue())
    res["shared_bytes"] = int(k.metadata.shared)  # what triton asks for at launch
    res["num_warps"] = num_warps
    res["compile_s"] = round(time.perf_counter() - t, 2)
    res["cubin"] = "cubin" in k.asm
    return res


def to_markdown(rows: list[dict], version: str) -> str:
    lines = [
        f"Triton {version}; registers per thread, stack and spills in bytes per thread "
        "(ptxas -v), shared memory per block.",
        "",
        "| kernel | grid | dtype | sm | warps | regs | stack | spill st | spill ld | smem |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['kernel']} | {r.get('grid', GRID)} | {r['dtype']} | {r['arch']} | "
                f"FAILED: {r['error']} |"
            )
            continue
        lines.append(
            f"| {r['kernel']} | {r.get('grid', GRID)} | {r['dtype']} | {r['arch']} | "
            f"{r['num_warps']} | "
            f"{r['registers']} | {r['stack_bytes']} | {r['spill_store_bytes']} | "
            f"{r['spill_load_bytes']} | {r['shared_bytes']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "fp64"], choices=["fp32", "fp64"])
    ap.add_argument("--grid", type=int, nargs="+", default=[GRID], help="volume sizes")
    ap.add_argument("--only", default=None, help="substring: compile matching kernels only")
    ap.add_argument("--json", type=Path, default=None, help="write the rows as JSON here")
    ap.add_argument("--md", type=Path, default=None, help="write a markdown table here")
    ap.add_argument(
        "--fail-on-spill", action="store_true", help="exit 1 if any float32 kernel spills"
    )
    args = ap.parse_args(argv)
    rows, failed, spilled = [], 0, []
    todo = [
        (grid, arch, fp, case)
        for grid in args.grid
        for arch in args.arch
        for fp in args.dtypes
        for case in cases(grid)
        if not args.only or args.only in case[0]
    ]
    for grid, arch, fp, (name, fn, consts, nw) in todo:
        row = {"kernel": name, "grid": grid, "dtype": fp, "arch": f"sm_{arch}"}
        try:
            row.update(compile_one(fn, consts, nw, fp, arch))
        except Exception as e:  # report every failure, then exit non-zero
            failed += 1
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"FAIL {name:<34} {grid} {fp} sm_{arch}: {row['error']}", flush=True)
            rows.append(row)
            continue
        spill = row["spill_store_bytes"] + row["spill_load_bytes"]
        if spill and fp == "fp32":
            spilled.append(f"{name} {grid}^3 sm_{arch}")
        print(
            f"ok   {name:<34} {grid} {fp} sm_{arch} warps {nw}: {row['registers']:3d} regs, "
            f"stack {row['stack_bytes']}, spill st/ld {row['spill_store_bytes']}/"
            f"{row['spill_load_bytes']}, smem {row['shared_bytes']} "
            f"({row['compile_s']:.1f}s)",
            flush=True,
        )
        rows.append(row)
    print(
        f"triton {triton.__version__}: {failed} failure(s), "
        f"{len(spilled)} spilling fp32 kernel(s){': ' + ', '.join(spilled) if spilled else ''}"
    )
    meta = {"triton": triton.__version__, "grid": args.grid, "K": K, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(meta, indent=2))
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(to_markdown(rows, triton.__version__))
    return 1 if failed or (args.fail_on_spill and spilled) else 0


if __name__ == "__main__":
    sys.exit(main())
