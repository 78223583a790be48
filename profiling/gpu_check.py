"""One prepared GPU check (issue 13): everything a single call on an H100/H200 measures,
written to OUTDIR as ``report.md`` and ``report.json`` (device, driver, torch and Triton
versions, git SHA, date, the command).

    bash profiling/gpu_check.sh OUTDIR             # on the GPU machine, about 8 minutes
    bash profiling/gpu_check.sh OUTDIR --dry-run   # the same steps on CPU, tiny sizes (CI)

Steps (the tests and the compile check run with time limits; a failed or timed-out step
is recorded and the check goes on). Budget on an H200, not yet measured: tests <= 210 s
(the car set builds meanwhile), profile ~2 min (mostly torch.compile), training ~2 min.

1. ``cuda`` tests: ``pytest -m cuda tests/kernels`` (full-size parity of both kernel
   variants, 128 views, 128^3, plain blur3d and float64 at full size, float64 scalars
   not exact in fp32, repeated backward equality, KeOps Chamfer, a second device).
2. ``profile``: profiling/profile_render.py at the paper's scale (eager, compiled
   reference, Triton passes and fused): forward, backward, forward+backward, peak
   memory, fraction of the bandwidth floor.
3. ``registers``: registers / spills / shared memory of every kernel as compiled on this
   machine during step 2 (read from Triton's kernel cache), and the ahead-of-time
   ``compile_check.py`` of the fused kernels with this machine's Triton.
4. ``train``: 300 steps of ``+experiment=car`` at the paper's settings on a car set
   built here (``preset=small``), steps/s per kernel variant, and the CUDA time split
   between the renderer's kernels and everything else over a profiled stretch.

In ``--dry-run`` every step runs on the CPU at tiny sizes (the Triton kernels through
the interpreter, 3 training steps on the ``quick`` car set): it checks the plumbing and
measures nothing about GPU speed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDER_KERNEL_PREFIXES = ("_splat", "_blur", "_project", "_plane", "_depth")


def sh(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> dict:
    """Run ``cmd`` with its output in ``log``; returns rc, seconds and the log's tail."""
    t = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, env=env
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    tail = log.read_text(errors="replace").splitlines()[-15:]
    return {
        "cmd": " ".join(map(shlex.quote, cmd)),
        "rc": rc,
        "seconds": round(time.perf_counter() - t, 1),
        "log": log.name,
        "tail": tail,
    }


def env_info(argv: list[str]) -> dict:
    import torch

    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except Exception:
            return None

    try:
        import triton

        tv = triton.__version__
    except Exception:
        tv = None
    cuda = torch.cuda.is_available()
    return {
        "device": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else f"CPU ({platform.processor() or platform.machine()})",
        "driver": out(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if cuda
        else None,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": tv,
        "python": platform.python_version(),
        "git": out(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(out(["git", "status", "--porcelain", "--untracked-files=no"])),
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "command": "bash profiling/gpu_check.sh " + " ".join(argv),
    }


def compiled_kernels() -> list[dict]:
    """Registers, spills and shared memory of every kernel Triton compiled in this
    process (its in-memory kernel cache; needs a GPU: the interpreter compiles nothing)."""
    from kernels import blur, fused, project, splat

    rows = []
    for mod in (splat, blur, project, fused):
        for name, fn in vars(mod).items():
            caches = getattr(fn, "device_caches", None)
            if not name.endswith("_kernel") or not caches:
                continue
            for dev, cache in caches.items():
                kernels_by_key = cache[0] if isinstance(cache, tuple) else cache
                for key, k in kernels_by_key.items():
                    try:
                        k._init_handles()
                    except Exception:
                        pass
                    md = k.metadata
                    rows.append(
                        {
                            "kernel": name,
                            "device": str(dev),
                            "registers": getattr(k, "n_regs", None),
                            "spills": getattr(k, "n_spills", None),
                            "shared_bytes": getattr(md, "shared", None),
                            "num_warps": getattr(md, "num_warps", None),
                            "specialisation": str(key)[:200],
                        }
                    )
    return rows


def train_overrides(dry: bool, data_root: Path, run_dir: Path, steps: int) -> list[str]:
    common = [
        "+experiment=car",
        f"paths.data_root={data_root}",
        f"paths.run_dir={run_dir}",
        f"trainer.max_steps={steps}",
        "logger=disabled",
        "val.every=0",
        "val.at_start=false",
        "trainer.image_every=0",
        "trainer.checkpoint_every=100000000",
        "data.build_if_missing=false",
    ]
    if dry:  # CPU-sized: the quick car set, a small grid and few points
        return common + [
            "data=car_quick",
            "data.image_size=64",
            "trainer.batch_size=2",
            "model.pc_num_points=300",
            "render.vox_size=16",
            "render.pc_gauss_kernel_size=5",
            "trainer.num_threads=2",
            "trainer.log_every=1",
            "trainer.print_every=1",
        ]
    # The paper's settings (64^3, K 21, 8000 points, 128 px input: the 64 px images of the
    # small set are resized) on a set small enough to build within the check.
    return common + ["data=car_small", "data.image_size=128"]


def train_in_process(overrides: list[str], profiled: bool) -> dict:
    """Compose the training config and run ``dpc.train.train``: timed, or (``profiled``)
    under torch.profiler with the device (or CPU) time split by kernel name."""
    import torch
    from hydra import compose, initialize_config_dir

    from dpc.train import train

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    res = {"overrides": overrides}
    if not profiled:
        # Count the fused op's calls: render.kernel_variant only takes effect where the
        # trainer passes it into RenderSettings.
        import kernels

        calls = [0]
        real = kernels.blur_ray_project

        def counted(*a, **k):
            calls[0] += 1
            return real(*a, **k)

        kernels.blur_ray_project = counted
        try:
            t = time.perf_counter()
            summary = train(cfg)
            wall = time.perf_counter() - t
        finally:
            kernels.blur_ray_project = real
        steps = int(summary.get("step", cfg.trainer.max_steps))
        res.update(steps=steps, wall_s=round(wall, 2), steps_per_s=round(steps / wall, 3))
        res["fused_op_calls"] = calls[0]
        res["note"] = (
            f"wall time includes start-up (config, data, model) and the final save; "
            f"fused op called {calls[0]} times"
        )
        return res
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        train(cfg)
    total = render = 0.0
    per = {}
    for e in prof.key_averages():
        t = e.device_time_total if cuda else e.self_cpu_time_total
        if cuda and e.device_type.name != "CUDA":
            continue
        if not cuda and e.key.startswith(("ProfilerStep", "aten::empty")):
            continue
        total += t
        per[e.key] = per.get(e.key, 0.0) + t
        if e.key.startswith(RENDER_KERNEL_PREFIXES):
            render += t
    top = sorted(per.items(), key=lambda kv: -kv[1])[:15]
    res.update(
        {
            "time_source": "CUDA kernel time" if cuda else "CPU self time (dry run)",
            "total_ms": round(total / 1e3, 2),
            "renderer_kernels_ms": round(render / 1e3, 2),
            "renderer_fraction": round(render / total, 4) if total else None,
            "top": [{"name": k[:80], "ms": round(v / 1e3, 2)} for k, v in top],
        }
    )
    return res


def to_markdown(rep: dict) -> str:
    e = rep["env"]
    L = [
        "# GPU check" + (" (DRY RUN on CPU: no GPU figures)" if rep["dry_run"] else ""),
        "",
        f"- device: {e['device']}; driver {e['driver']}; CUDA {e['cuda']}",
        f"- torch {e['torch']}; triton {e['triton']}; python {e['python']}",
        f"- git {e['git']}{' (dirty)' if e['git_dirty'] else ''}; {e['date_utc']} UTC",
        f"- command: `{e['command']}`; total {rep.get('total_s')} s",
        "",
        "## Steps",
        "",
        "| step | rc | seconds | log |",
        "|---|---|---|---|",
    ]
    for name, st in rep["steps"].items():
        L.append(f"| {name} | {st.get('rc')} | {st.get('seconds')} | {st.get('log', '')} |")
    prof = rep.get("profile_md")
    if prof:
        L += ["", "## profile_render (paper scale)", "", prof]
    regs = rep.get("registers") or []
    L += ["", "## Kernels as compiled here", ""]
    if regs:
        L += ["| kernel | regs | spills | smem | warps |", "|---|---|---|---|---|"]
        for r in regs:
            L.append(
                f"| {r['kernel']} | {r['registers']} | {r['spills']} | {r['shared_bytes']} | "
                f"{r['num_warps']} |"
            )
    else:
        L.append("(none: nothing was compiled in this process, e.g. a dry run)")
    cc = rep.get("compile_check_md")
    if cc:
        L += ["", "### compile_check (ahead of time)", "", cc]
    tr = rep.get("train") or {}
    L += ["", "## Training (+experiment=car)", ""]
    for variant, r in tr.get("runs", {}).items():
        if "error" in r:
            L.append(f"- {variant}: FAILED {r['error']}")
        else:
            L.append(
                f"- {variant}: {r['steps']} steps in {r['wall_s']} s = {r['steps_per_s']} "
                f"steps/s ({r['note']})"
            )
    sp = tr.get("split")
    if sp and "error" not in sp:
        L.append(
            f"- time split over a profiled run ({sp['time_source']}): renderer kernels "
            f"{sp['renderer_kernels_ms']} ms of {sp['total_ms']} ms "
            f"({sp['renderer_fraction']}); top: "
            + ", ".join(f"{t['name']} {t['ms']} ms" for t in sp["top"][:6])
        )
    elif sp:
        L.append(f"- time split: FAILED {sp['error']}")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--skip", default="", help="comma list of steps to skip (tests,...)")
    ap.add_argument("--train-steps", type=int, default=None)
    args = ap.parse_args(argv)
    dry = args.dry_run
    skip = set(filter(None, args.skip.split(",")))
    out = args.outdir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.setdefault("WANDB_MODE", "disabled")
    if dry:
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    if not dry and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --dry-run on a CPU machine)")
    rep = {"dry_run": dry, "env": env_info(argv), "steps": {}}

    def save():
        rep["total_s"] = round(time.perf_counter() - t0, 1)
        (out / "report.json").write_text(json.dumps(rep, indent=1, default=str))
        (out / "report.md").write_text(to_markdown(rep))

    # Build the car set in the background: CPU work, overlapping the GPU tests.
    data_root = out / "data"
    preset = "quick" if dry else "small"
    build_log = open(out / "data_build.log", "w")
    build_cmd = [sys.executable, "-m", "dpc.data", "build", "category=car", f"preset={preset}"]
    # One worker in the dry run: CI machines are small and the tests run alongside.
    build_cmd += [f"root={data_root}", f"workers={1 if dry else min(8, os.cpu_count() or 1)}"]
    build = None
    if "train" not in skip:
        build = subprocess.Popen(build_cmd, cwd=ROOT, env=env, stdout=build_log, stderr=build_log)

    # 1. cuda-marked tests (all skipped on a CPU: the dry run only checks the plumbing).
    if "tests" not in skip:
        pyt = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda"]
        # Dry run: two files (all their tests skip without CUDA), not the whole folder.
        files = ["tests/kernels/test_cuda_full.py", "tests/kernels/test_launch_contract.py"]
        pyt += (files if dry else ["tests/kernels"]) + [f"--junitxml={out / 'cuda_tests.xml'}"]
        rep["steps"]["cuda tests"] = sh(pyt, 60 if dry else 210, out / "cuda_tests.log", env)
        save()

    # 2. profile_render at the paper scale (in this process, so step 3 can read the
    # kernels it compiled).
    if "profile" not in skip:
        t = time.perf_counter()
        try:
            sys.path.insert(0, str(ROOT / "profiling"))
            import profile_render

            pargs = ["--out", str(out / "profile")]
            if dry:
                pargs += ["--quick", "--custom", "1,100,8,3", "--iters", "1", "--warmup", "0"]
                pargs += ["--providers", "eager,triton,triton-fused"]
            else:
                pargs += ["--configs", "0", "--iters", "10", "--warmup", "3"]
            rc = profile_render.main(pargs)
            rep["profile_md"] = (out / "profile" / "results.md").read_text()
            rep["profile"] = json.loads((out / "profile" / "results.json").read_text())
            rep["steps"]["profile"] = {"rc": rc, "seconds": round(time.perf_counter() - t, 1)}
        except Exception as e:
            rep["steps"]["profile"] = {"rc": f"error: {e!r}"[:300], "tail": traceback.format_exc()}
        save()

    # 3. Kernels as compiled here, plus the ahead-of-time report for this Triton.
    if "registers" not in skip:
        try:
            rep["registers"] = compiled_kernels()
            rep["steps"]["registers"] = {"rc": 0, "seconds": 0}
        except Exception as e:
            rep["steps"]["registers"] = {"rc": f"error: {e!r}"[:300]}
        cc = [sys.executable, "profiling/compile_check.py", "--md", str(out / "compile.md")]
        cc += ["--json", str(out / "compile.json")]
        if dry:  # one small kernel: the plumbing only
            cc += ["--dtypes", "fp32", "--only", "fused depth_project_fwd+depth"]
        else:  # the new kernels only: the full table is in RESULTS.md, and time is short
            cc += ["--arch", "90", "--dtypes", "fp32", "--only", "fused"]
        cenv = {k: v for k, v in env.items() if k != "TRITON_INTERPRET"}
        rep["steps"]["compile_check"] = sh(cc, 60, out / "compile.log", cenv)
        if (out / "compile.md").exists():
            rep["compile_check_md"] = (out / "compile.md").read_text()
        save()

    # 4. Training: steps/s per kernel variant, then a profiled stretch for the time split.
    if "train" not in skip:
        rep["train"] = {"runs": {}}
        rc = build.wait(timeout=None if not dry else 120)
        build_log.close()
        rep["steps"]["data build"] = {"rc": rc, "cmd": " ".join(build_cmd), "log": "data_build.log"}
        steps = args.train_steps or (2 if dry else 300)
        # Dry run: the fused run doubles as the profiled one (start-up dominates there).
        variants = ("passes",) if dry else ("passes", "fused")
        for variant in variants:
            t = time.perf_counter()
            ov = train_overrides(dry, data_root, out / f"train_{variant}", steps)
            ov.append(f"render.kernel_variant={variant}")
            try:
                rep["train"]["runs"][variant] = train_in_process(ov, profiled=False)
            except Exception as e:
                rep["train"]["runs"][variant] = {"error": repr(e)[:300], "overrides": ov}
                traceback.print_exc()
            rep["steps"][f"train {variant}"] = {
                "rc": 0 if "error" not in rep["train"]["runs"][variant] else 1,
                "seconds": round(time.perf_counter() - t, 1),
            }
            save()
        t = time.perf_counter()
        ov = train_overrides(dry, data_root, out / "train_profiled", steps if dry else 30)
        ov.append("render.kernel_variant=fused")
        try:
            rep["train"]["split"] = train_in_process(ov, profiled=True)
        except Exception as e:
            rep["train"]["split"] = {"error": repr(e)[:300]}
            traceback.print_exc()
        rep["steps"]["train split"] = {
            "rc": 0 if "error" not in rep["train"]["split"] else 1,
            "seconds": round(time.perf_counter() - t, 1),
        }
    save()
    print((out / "report.md").read_text())
    bad = [k for k, v in rep["steps"].items() if v.get("rc") not in (0, 5)]  # 5: none ran
    print(f"gpu_check: wrote {out / 'report.md'} and report.json; failed steps: {bad or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
