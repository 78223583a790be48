"""Compile every Triton kernel for a GPU target without a GPU (ahead of time, to PTX and
a cubin through the ptxas that ships with triton).

The interpreter (``TRITON_INTERPRET=1``) runs the kernels as NumPy and accepts things
the compiler rejects (types, constexpr use); this catches those on a CPU-only machine.

    python profiling/compile_check.py [--arch 90]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_check: unset TRITON_INTERPRET (it replaces the compiler)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import blur, project, splat  # noqa: E402


def _sig(fn, types: dict[str, str], consts: dict) -> ASTSource:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        else:
            sig[name] = types[name]
    return ASTSource(
        fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()}
    )


def cases(fp: str):
    P = f"*{fp}"
    i = "i32"
    f = fp
    # splat fwd / bwd with and without features
    for has_feat in (False, True):
        yield (
            "splat_fwd",
            splat._splat_fwd_kernel,
            {
                "occ_ptr": P,
                "feat_ptr": P,
                "points_ptr": P,
                "features_ptr": P,
                "N": i,
                "D": i,
                "H": i,
                "W": i,
                "n_blocks": i,
                "C": i,
            },
            {"HAS_FEAT": has_feat, "C_BLOCK": 4, "BLOCK": 256},
        )
        yield (
            "splat_bwd",
            splat._splat_bwd_kernel,
            {
                "grad_points_ptr": P,
                "grad_features_ptr": P,
                "grad_occ_ptr": P,
                "grad_feat_ptr": P,
                "points_ptr": P,
                "features_ptr": P,
                "N": i,
                "D": i,
                "H": i,
                "W": i,
                "n_blocks": i,
                "C": i,
            },
            {
                "HAS_FEAT": has_feat,
                "HAS_GRAD_OCC": True,
                "HAS_GRAD_FEAT": has_feat,
                "C_BLOCK": 4,
                "BLOCK": 256,
            },
        )
    for mode in range(5):
        for axis in (0, 1):
            yield (
                f"blur mode {mode} axis {axis}",
                blur._blur_pass_kernel,
                {
                    "out_ptr": P,
                    "in_ptr": P,
                    "w_ptr": P,
                    "aux_out_ptr": P,
                    "aux_in_ptr": P,
                    "scale_ptr": P,
                    "grad_scale_ptr": P,
                    "M": i,
                    "N": i,
                    "L": i,
                    "tiles_n": i,
                    "rows_per_batch": i,
                },
                {
                    "AXIS": axis,
                    "MODE": mode,
                    "HAS_SCALE": mode in (2, 3),
                    "K": 21,
                    "BLOCK_M": 16,
                    "BLOCK_N": 64,
                },
            )
    for has_color in (False, True):
        yield (
            "project_fwd",
            project._project_fwd_kernel,
            {
                "sil_ptr": P,
                "depth_ptr": P,
                "color_ptr": P,
                "probs_ptr": P,
                "occ_ptr": P,
                "colors_ptr": P,
                "HW": i,
                "tiles": i,
                "C": i,
                "camera_distance": f,
                "max_depth": f,
                "background": f,
            },
            {
                "D": 64,
                "HAS_COLOR": has_color,
                "RETURN_DEPTH": True,
                "RETURN_PROBS": True,
                "C_BLOCK": 4,
                "BLOCK": 128,
            },
        )
        yield (
            "project_bwd",
            project._project_bwd_kernel,
            {
                "grad_occ_ptr": P,
                "grad_colors_ptr": P,
                "occ_ptr": P,
                "colors_ptr": P,
                "g_sil_ptr": P,
                "g_depth_ptr": P,
                "g_color_ptr": P,
                "g_probs_ptr": P,
                "HW": i,
                "tiles": i,
                "C": i,
                "camera_distance": f,
                "max_depth": f,
                "background": f,
            },
            {
                "D": 64,
                "HAS_COLOR": has_color,
                "HAS_G_DEPTH": True,
                "HAS_G_PROBS": True,
                "C_BLOCK": 4,
                "BLOCK": 128,
            },
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80, 90")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    failed = 0
    for fp in ("fp32", "fp64"):
        for name, fn, types, consts in cases(fp):
            t = time.perf_counter()
            try:
                k = triton.compile(_sig(fn, types, consts), target=target)
                ok = "cubin" in k.asm
                print(
                    f"ok   {name:<24} {fp} {consts} ({time.perf_counter() - t:.1f}s)"
                    + ("" if ok else " [no cubin]")
                )
            except Exception as e:  # report all failures, then exit non-zero
                failed += 1
                print(f"FAIL {name:<24} {fp} {consts}: {type(e).__name__}: {e}")
    print(f"triton {triton.__version__}, sm_{args.arch}: {failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
