"""The prepared GPU check (issues 13, 22): one call on the borrowed H200 measures what the
CPU machines cannot, every phase in its own time box, the report rewritten after each.

    python profiling/wheelhouse.py                          # here: the carried wheels
    bash profiling/gpu_check.sh "$OUT"                       # there (docs/kernels.md)
    PYTHON=/path/to/venv/bin/python bash profiling/gpu_check.sh --dry-run OUT   # CPU, CI

``gpu_check.sh`` installs ``.wheelhouse/*.whl`` into a temporary folder on PYTHONPATH and
runs this script. Only three files are written into OUTDIR (the device returns at most 8):
``report.md``, ``report.json`` and ``logs.txt`` (the tail of every phase's log), first
before any phase and again after each, so a run killed at any point leaves a report of
what finished. Everything else (data, training runs, logs, the profiler's output) goes to
a work folder under ``$TMPDIR``.

Phases, in order, each a subprocess with a time limit (min(its box, time left)):

* background from the start (CPU work, overlapping the GPU phases): ``data`` builds the
  car set (``preset=small``, one worker per core, trimesh + embreex from the wheelhouse)
  and ``compile`` runs ``compile_check.py`` on the fused kernels at 64^3 and 128^3;
* ``env``: device, driver, CUDA, torch, triton, Python, the commit (``git`` or the
  ``.wheelhouse/COMMIT`` written before the call: ``.git`` does not travel), and which
  carried packages import;
* ``cuda_tests``: ``pytest -m cuda tests/kernels`` (full-size parity, KeOps Chamfer, ...);
* ``train`` (waits for ``data``): ``+experiment=car`` at the paper's settings with
  ``render.kernel_variant`` passes and fused in alternating order (passes, fused, fused,
  passes): steps/s over the steps after a warm-up, between two
  ``torch.cuda.synchronize()``; then a fused run under ``torch.profiler`` with a
  schedule (wait, warm-up, active steps): the CUDA time split between the renderer's
  kernels and the rest over the active steps only;
* ``profile``: ``profile_render.py`` at the paper's scale (eager, Triton passes, fused;
  warm-up excluded), then registers / spills / shared memory of every kernel it compiled;
* then the ``compile`` result is collected (waited for within its box).

``--dry-run``: the same phases on the CPU at tiny sizes (the Triton kernels through the
interpreter, the quick car set, a few steps): it checks the plumbing and measures nothing
about GPU speed. docs/kernels.md ("GPU check") says what each number means.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RENDER_KERNEL_PREFIXES = ("_splat", "_blur", "_project", "_plane", "_depth")
CARRIED_IMPORTS = ("hydra", "omegaconf", "antlr4", "trimesh", "embreex", "pykeops", "keopscore")

# Time boxes (seconds) on the GPU and in the dry run. The whole check: --budget.
BOXES = {
    "env": (45, 60),
    "cuda_tests": (90, 60),
    "train": (130, 150),
    "profile": (70, 90),
    "data": (150, 120),  # background; the train phase waits for it
    "compile": (240, 120),  # background
}
DEFAULT_BUDGET = (330, 420)  # GPU: 5.5 min, so that a rerun fits a 15-minute lease


def now_utc() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------------------
# Phases that run inside a subprocess (``gpu_check.py --phase NAME WORK``): each writes
# WORK/NAME.json, also part-way, so that a timed-out phase still reports what it did.
# ---------------------------------------------------------------------------------------


def _write(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)


def _git_commit() -> dict | None:
    if not (ROOT / ".git").exists():
        return None
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True)
        d = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    if r.returncode != 0:
        return None
    return {"commit": r.stdout.decode().strip(), "dirty": bool(d.stdout.strip()), "source": "git"}


def commit_info() -> dict:
    """The tree's commit: the COMMIT file written by profiling/wheelhouse.py right before
    the device call when it exists, else ``git``. The file comes first because the
    device's copy of the tree can hold a stale ``.git`` (the H200 run of 2026-12-04 reported
    an older HEAD than the code it ran); where both exist and differ, ``git_commit`` says
    what git saw."""
    git = _git_commit()
    f = Path(os.environ.get("DPC_COMMIT_FILE", ROOT / ".wheelhouse" / "COMMIT"))
    words = f.read_text().split() if f.is_file() else []
    if words:
        info = {"commit": words[0], "dirty": "dirty" in words[1:], "source": str(f)}
        if git is not None and git["commit"] != info["commit"]:
            info["git_commit"] = git["commit"]
        return info
    if git is not None:
        return git
    return {"commit": None, "dirty": None, "source": "none (no .git, no COMMIT file)"}


def phase_env(work: Path, dry: bool) -> dict:
    import torch

    def out(cmd):
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return r.stdout.strip() or None
        except Exception:
            return None

    try:
        import triton

        tv = triton.__version__
    except Exception as e:
        tv = f"not importable: {e!r}"[:200]
    cuda = torch.cuda.is_available()
    carried = {}
    for mod in CARRIED_IMPORTS:
        try:
            m = __import__(mod)
            carried[mod] = getattr(m, "__version__", "ok")
        except Exception as e:
            carried[mod] = f"FAILED {type(e).__name__}: {str(e)[:120]}"
    res = {
        "device": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
        "capability": list(torch.cuda.get_device_capability()) if cuda else None,
        "driver": out(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "triton": tv,
        "python": platform.python_version(),
        "nvcc": (out(["nvcc", "--version"]) or "").splitlines()[-1:] or None,
        "cpu_count": os.cpu_count(),
        "carried": carried,
        **commit_info(),
    }
    _write(work / "env.json", res)
    return res


def compiled_kernels() -> list[dict]:
    """Registers, spills and shared memory of every kernel Triton compiled in this
    process (its in-memory kernel cache; the interpreter compiles nothing)."""
    from kernels import blur, fused, project, splat

    rows = []
    for mod in (splat, blur, project, fused):
        for name, fn in vars(mod).items():
            caches = getattr(fn, "device_caches", None)
            if not name.endswith("_kernel") or not caches:
                continue
            for dev, cache in caches.items():
                by_key = cache[0] if isinstance(cache, tuple) else cache
                for key, k in by_key.items():
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


def phase_profile(work: Path, dry: bool) -> dict:
    sys.path.insert(0, str(ROOT / "profiling"))
    import profile_render

    pargs = ["--out", str(work / "profile")]
    if dry:
        pargs += ["--quick", "--custom", "1,100,8,3", "--iters", "1", "--warmup", "0"]
    else:  # the paper's scale; torch.compile (~1 min) left out for time
        pargs += ["--configs", "0", "--iters", "10", "--warmup", "3"]
    pargs += ["--providers", "eager,triton,triton-fused"]
    rc = profile_render.main(pargs)
    res = {
        "rc": rc,
        "md": (work / "profile" / "results.md").read_text(),
        "rows": json.loads((work / "profile" / "results.json").read_text())["rows"],
    }
    _write(work / "profile.json", res)
    try:
        res["registers"] = compiled_kernels()
    except Exception as e:
        res["registers_error"] = repr(e)[:300]
    _write(work / "profile.json", res)
    return res


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


class _Enough(Exception):
    """Raised from the step hook to end a training run once it measured enough."""


def _run_training(overrides: list[str], on_tick) -> None:
    """``dpc.train.train`` on the composed config, ``on_tick(step)`` after every step
    (through the trainer's StepMeter); returns when the hook raises :class:`_Enough`."""
    from hydra import compose, initialize_config_dir

    import dpc.train as dtrain

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    base = dtrain.StepMeter

    class HookedMeter(base):
        def tick(self, step):
            super().tick(step)
            on_tick(step)

    dtrain.StepMeter = HookedMeter
    try:
        dtrain.train(cfg)
    except _Enough:
        pass
    finally:
        dtrain.StepMeter = base


def time_variant(variant: str, dry: bool, data_root: Path, run_dir: Path, warmup: int,
                 measure: int, cap_s: float) -> dict:  # fmt: skip
    """Steps/s of one training run over the steps after ``warmup`` (compiles, caches,
    allocator): two synchronised clock reads, the first after step ``warmup``, the second
    after ``measure`` more steps or once ``cap_s`` seconds have passed since the first."""
    import torch

    import kernels

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    calls = [0]
    real = kernels.blur_ray_project

    def counted(*a, **k):  # the renderer calls kernels.blur_ray_project for "fused"
        calls[0] += 1
        return real(*a, **k)

    st = {"t_start": time.perf_counter()}

    def tick(step):
        if step + 1 == warmup:
            sync()
            st["t0"], st["s0"] = time.perf_counter(), step + 1
            st["warmup_s"] = st["t0"] - st["t_start"]
        elif "t0" in st:
            n = step + 1 - st["s0"]
            if n >= measure or time.perf_counter() - st["t0"] > cap_s:
                sync()
                st["t1"], st["n"] = time.perf_counter(), n
                raise _Enough

    ov = train_overrides(dry, data_root, run_dir, warmup + measure + 1)
    ov.append(f"render.kernel_variant={variant}")
    kernels.blur_ray_project = counted
    try:
        _run_training(ov, tick)
    finally:
        kernels.blur_ray_project = real
    if "t1" not in st:
        raise RuntimeError(f"training ended before {warmup} + 1 steps")
    window = st["t1"] - st["t0"]
    return {
        "variant": variant,
        "warmup_steps": warmup,
        "warmup_s": round(st["warmup_s"], 2),
        "steps": st["n"],
        "window_s": round(window, 3),
        "steps_per_s": round(st["n"] / window, 3),
        "fused_op_calls": calls[0],
    }


def profiled_split(dry: bool, data_root: Path, run_dir: Path, wait: int, warmup: int,
                   active: int) -> dict:  # fmt: skip
    """A fused run under torch.profiler with schedule(wait, warmup, active): the device
    time (CPU self time in a dry run) of the active steps, split by kernel name."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    total_steps = wait + warmup + active
    sched = schedule(wait=wait, warmup=warmup, active=active, repeat=1)
    prof = profile(activities=acts, schedule=sched)

    def tick(step):
        prof.step()
        if step + 1 >= total_steps:
            raise _Enough

    ov = train_overrides(dry, data_root, run_dir, total_steps + 1)
    ov.append("render.kernel_variant=fused")
    with prof:
        _run_training(ov, tick)
    return {
        "schedule": {"wait": wait, "warmup": warmup, "active": active},
        **time_split(prof.key_averages(), cuda, active),
    }


def _is_device_work(e, cpu_names: set[str]) -> bool:
    """Whether a CUDA-side profiler row is work the device did (a kernel, memcpy or
    memset), not a range: ``ProfilerStep#N`` and every ``record_function`` range (e.g.
    ``Optimizer.step#Adam.step``) also appear on the CUDA timeline as a user annotation
    spanning the kernels inside it, which a sum would count twice. torch marks those
    ``is_user_annotation`` (and leaves them out of its own "Self CUDA time total");
    where that field is missing, a CUDA row named like a CPU-side row is such a range."""
    if getattr(e.device_type, "name", str(e.device_type)) != "CUDA":
        return False
    if getattr(e, "is_user_annotation", None):
        return False
    if e.key.startswith("ProfilerStep"):
        return False
    if getattr(e, "is_user_annotation", None) is None and e.key in cpu_names:
        return False
    return True


def time_split(events, cuda: bool, active: int) -> dict:
    """The device time of profiler rows (``prof.key_averages()``: objects with ``key``,
    ``device_type``, ``self_device_time_total``, ``self_cpu_time_total`` in us, and
    ``is_user_annotation``), split into the renderer's kernels and the rest; per step over
    ``active`` steps. On CUDA only device work counts (:func:`_is_device_work`), each
    kernel's own time; in a dry run (CPU) the CPU self time of every op but the step
    ranges and ``aten::empty``."""
    events = list(events)
    cpu_names = {
        e.key for e in events if getattr(e.device_type, "name", str(e.device_type)) == "CPU"
    }
    total = render = 0.0
    per: dict[str, float] = {}
    for e in events:
        if cuda:
            if not _is_device_work(e, cpu_names):
                continue
            t = getattr(e, "self_device_time_total", None)
            if t is None:
                t = e.device_time_total
        else:
            if e.key.startswith(("ProfilerStep", "aten::empty")):
                continue
            t = e.self_cpu_time_total
        total += t
        per[e.key] = per.get(e.key, 0.0) + t
        if e.key.startswith(RENDER_KERNEL_PREFIXES):
            render += t
    top = sorted(per.items(), key=lambda kv: -kv[1])[:15]
    return {
        "time_source": "CUDA kernel time (kernels, memcpy, memset; no ranges)"
        if cuda
        else "CPU self time (dry run)",
        "total_ms": round(total / 1e3, 2),
        "per_step_ms": round(total / 1e3 / active, 2),
        "renderer_kernels_ms": round(render / 1e3, 2),
        "renderer_fraction": round(render / total, 4) if total else None,
        "top": [{"name": k[:80], "ms": round(v / 1e3, 2)} for k, v in top],
    }


def phase_train(work: Path, dry: bool, opts: dict) -> dict:
    data_root = Path(opts["data_root"])
    order = ["passes", "fused", "fused", "passes"]  # alternating: drift hits both alike
    warmup, measure = (2, 2) if dry else (opts.get("warmup", 10), opts.get("steps", 100))
    cap = 60.0 if dry else 12.0  # seconds of measured window per run at most
    res: dict = {"order": order, "runs": [], "dataset": str(data_root)}
    _write(work / "train.json", res)
    for i, variant in enumerate(order):
        try:
            r = time_variant(variant, dry, data_root, work / f"run{i}_{variant}", warmup,
                             measure, cap)  # fmt: skip
        except Exception as e:
            traceback.print_exc()
            r = {"variant": variant, "error": repr(e)[:300]}
        res["runs"].append(r)
        print(f"train: {r}", flush=True)
        _write(work / "train.json", res)
    by: dict[str, list[float]] = {}
    for r in res["runs"]:
        if "steps_per_s" in r:
            by.setdefault(r["variant"], []).append(r["steps_per_s"])
    res["mean_steps_per_s"] = {v: round(sum(x) / len(x), 3) for v, x in by.items()}
    _write(work / "train.json", res)
    try:
        w = (1, 1, 2) if dry else (2, 5, 10)
        res["split"] = profiled_split(dry, data_root, work / "run_profiled", *w)
    except Exception as e:
        traceback.print_exc()
        res["split"] = {"error": repr(e)[:300]}
    _write(work / "train.json", res)
    return res


# ---------------------------------------------------------------------------------------
# The orchestrator: phases as time-boxed subprocesses, the report after each.
# ---------------------------------------------------------------------------------------


def tail(path: Path, n: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


class Check:
    def __init__(self, args, argv):
        self.args, self.dry = args, args.dry_run
        self.t0 = time.perf_counter()
        self.budget = args.budget or DEFAULT_BUDGET[self.dry]
        deadline = os.environ.get("DPC_CHECK_DEADLINE")  # set by gpu_check.sh
        if deadline and not args.budget:
            self.budget = float(deadline) - time.time()
        self.out = (Path(os.environ.get("DPC_CALLER_CWD", ".")) / args.outdir).resolve()
        self.boxes = {}
        for item in args.box:  # --box NAME=SECONDS
            name, _, sec = item.partition("=")
            if name not in BOXES or not sec:
                raise SystemExit(f"gpu_check: --box {item!r}: NAME=SECONDS, NAME in {list(BOXES)}")
            self.boxes[name] = float(sec)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="dpc-gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        self.env.setdefault("WANDB_MODE", "disabled")
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env.setdefault("KEOPS_CACHE_FOLDER", str(self.work / "keops-cache"))
        if self.dry:
            self.env["TRITON_INTERPRET"] = "1"
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        ci = commit_info()
        self.env["DPC_COMMIT"] = str(ci["commit"])
        self.rep = {
            "dry_run": self.dry,
            "command": "bash profiling/gpu_check.sh " + " ".join(map(shlex.quote, argv)),
            "python": sys.executable,
            "started_utc": now_utc(),
            "budget_s": self.budget,
            "work": str(self.work),
            "commit": ci,
            "phases": {},
        }
        self.bg: dict[str, tuple[subprocess.Popen, float, float, Path]] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def box(self, name: str) -> float:
        own = self.boxes.get(name, BOXES[name][self.dry])
        return min(own, self.left() - 5)

    def save(self) -> None:
        self.rep["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.rep["updated_utc"] = now_utc()
        (self.out / "report.json").write_text(json.dumps(self.rep, indent=1, default=str))
        (self.out / "report.md").write_text(to_markdown(self.rep))
        parts = []
        for log in sorted(self.work.glob("*.log")):
            parts += [f"===== {log.name} (last 200 lines) =====", *tail(log, 200), ""]
        (self.out / "logs.txt").write_text("\n".join(parts) + "\n")

    def _record(self, name, rc, t, timeout, log: Path, result=None) -> dict:
        ph = {
            "rc": rc,
            "seconds": round(time.perf_counter() - t, 1),
            "time_box_s": round(timeout, 1),
            "log": log.name,
        }
        if rc != 0:
            ph["tail"] = tail(log, 12)
        if result is not None:
            ph["result"] = result
        self.rep["phases"][name] = ph
        self.save()
        return ph

    def run(self, name: str, cmd: list[str], env=None) -> dict:
        """Run ``cmd`` in the foreground within its time box (logs in WORK/NAME.log)."""
        timeout = self.box(name)
        log = self.work / f"{name}.log"
        t = time.perf_counter()
        if timeout < 5:
            return self._record(name, "skipped: out of time", t, timeout, log)
        with open(log, "w") as f:
            p = self._spawn(cmd, env, f)
            try:
                rc = p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill(p)
                rc = "timeout"
            except BaseException:  # SIGTERM from gpu_check.sh's hard stop, ^C
                _kill(p)
                self._record(name, "killed: check stopped", t, timeout, log)
                raise
        res = None
        rj = self.work / f"{name}.json"
        if rj.exists():
            try:
                res = json.loads(rj.read_text())
            except ValueError:
                res = None
        return self._record(name, rc, t, timeout, log, res)

    def phase(self, name: str, extra: list[str] | None = None) -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--phase", name]
        cmd += [str(self.work)] + (["--dry-run"] if self.dry else []) + (extra or [])
        return self.run(name, cmd)

    def _spawn(self, cmd: list[str], env, f) -> subprocess.Popen:
        """Start ``cmd`` with its output (and the command line first) in the open file ``f``,
        in its own process group (killed whole on a time-out), in this session: what the
        device kills when the command returns."""
        f.write("$ " + " ".join(map(shlex.quote, cmd)) + "\n")
        f.flush()
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env or self.env, stdout=f, stderr=subprocess.STDOUT,
            process_group=0,
        )  # fmt: skip

    def start_bg(self, name: str, cmd: list[str], env=None) -> None:
        log = self.work / f"{name}.log"
        f = open(log, "w")
        p = self._spawn(cmd, env, f)
        self.bg[name] = (p, time.perf_counter(), self.box(name), log)
        self.rep["phases"][name] = {"rc": "running (background)", "log": log.name}

    def wait_bg(self, name: str, result=None) -> dict:
        p, t, box, log = self.bg.pop(name)
        timeout = max(0.0, min(box - (time.perf_counter() - t), self.left() - 5))
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(p)
            rc = "timeout"
        ph = self._record(name, rc, t, box, log, result() if result else None)
        return ph

    def kill_bg(self) -> None:
        for name in list(self.bg):
            p, t, box, log = self.bg.pop(name)
            _kill(p)
            self._record(name, "killed: check ended", t, box, log)


def _kill(p: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _pytest_counts(log: Path) -> dict:
    counts = {}
    for line in reversed(tail(log, 30)):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed)", line)
        if found:
            counts = {k: int(n) for n, k in found}
            break
    return counts


class _Stopped(Exception):
    pass


def _on_sigterm(signum, frame):
    raise _Stopped(f"signal {signum}")


def orchestrate(args, argv) -> int:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)  # gpu_check.sh's hard stop: clean up first
    c = Check(args, argv)
    dry = c.dry
    skip = set(filter(None, args.skip.split(",")))
    py = sys.executable
    c.save()  # a report exists from the first second on
    # A fixed folder: a rerun on the same (warm) machine reuses the set, or resumes a
    # build that ran out of time (dpc.data reuses and resumes by itself).
    data_root = Path(args.data_root or Path(tempfile.gettempdir()) / "dpc-gpu-check-data")
    data_root = data_root.resolve()
    preset = "quick" if dry else args.data_preset
    workers = 1 if dry else max(1, os.cpu_count() or 1)
    if "train" not in skip and "data" not in skip:
        c.start_bg(
            "data",
            [py, "-m", "dpc.data", "build", "category=car", f"preset={preset}",
             f"root={data_root}", f"workers={workers}"],
        )  # fmt: skip
    if "compile" not in skip:
        cc = [py, "profiling/compile_check.py", "--arch", "90", "--dtypes", "fp32"]
        cc += ["--json", str(c.work / "compile.json"), "--md", str(c.work / "compile.md")]
        if dry:  # one small kernel at both sizes: the plumbing only
            cc += ["--grid", "64", "128", "--only", "fused depth_project_fwd+depth"]
        else:
            cc += ["--grid", "64", "128", "--only", "fused"]
        cenv = {k: v for k, v in c.env.items() if k != "TRITON_INTERPRET"}
        c.start_bg("compile", cc, cenv)
    c.save()
    try:
        if "env" not in skip:
            c.phase("env")
        if "cuda_tests" not in skip:
            pyt = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda"]
            # Dry run: two files (all their tests skip without CUDA), not the whole folder.
            files = ["tests/kernels/test_cuda_full.py", "tests/kernels/test_launch_contract.py"]
            pyt += files if dry else ["tests/kernels"]
            if not dry and importlib.util.find_spec("xdist"):  # the image has pytest-xdist
                # 4 processes share the GPU and Triton's compile cache; one file per
                # process (KeOps compiles once, in the process that runs test_chamfer).
                pyt += ["-n", "4", "--dist", "loadfile"]
            ph = c.run("cuda_tests", pyt + ["-rfEs"])
            ph["counts"] = _pytest_counts(c.work / "cuda_tests.log")
            c.save()
        if "data" in c.bg:
            c.wait_bg("data")
        if "train" not in skip:
            opts = {"data_root": str(data_root)}
            if args.train_steps:
                opts["steps"] = args.train_steps
            c.phase("train", ["--opts", json.dumps(opts)])
        if "profile" not in skip:
            c.phase("profile")
        if "compile" in c.bg:

            def compile_result():
                f = c.work / "compile.md"
                return {"md": f.read_text()} if f.exists() else None

            c.wait_bg("compile", compile_result)
    except _Stopped as e:
        c.rep["stopped"] = f"{e} after {time.perf_counter() - c.t0:.0f} s"
    finally:
        c.kill_bg()
        c.rep["finished_utc"] = now_utc()
        c.save()
    print((c.out / "report.md").read_text())
    bad = [k for k, v in c.rep["phases"].items() if v.get("rc") not in (0, 5)]  # 5: no tests
    print(f"gpu_check: wrote report.md, report.json, logs.txt in {c.out}; not ok: {bad or 'none'}")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------
# The report.
# ---------------------------------------------------------------------------------------


def _res(rep: dict, name: str) -> dict:
    return (rep["phases"].get(name) or {}).get("result") or {}


def to_markdown(rep: dict) -> str:
    env = _res(rep, "env")
    ci = rep.get("commit") or {}
    L = [
        "# GPU check" + (" (DRY RUN on CPU: no GPU figures)" if rep["dry_run"] else ""),
        "",
        f"- device: {env.get('device')} (capability {env.get('capability')}); driver "
        f"{env.get('driver')}; CUDA {env.get('cuda')}; nvcc {env.get('nvcc')}",
        f"- torch {env.get('torch')}; triton {env.get('triton')}; python {env.get('python')}"
        f" ({rep.get('python')}); {env.get('cpu_count')} CPU cores",
        f"- commit {ci.get('commit')}{' (dirty)' if ci.get('dirty') else ''} "
        f"(from {ci.get('source')}"
        + (f"; git's HEAD there: {ci['git_commit']}" if ci.get("git_commit") else "")
        + ")",
        f"- started {rep['started_utc']} UTC, updated {rep.get('updated_utc')} UTC, "
        f"{rep.get('elapsed_s')} s of a {round(rep['budget_s'])} s budget"
        + ("" if rep.get("finished_utc") else " (NOT FINISHED: partial report)")
        + (f" (STOPPED: {rep['stopped']})" if rep.get("stopped") else ""),
        f"- command: `{rep['command']}`",
        f"- carried packages: {env.get('carried')}",
        "",
        "## Phases",
        "",
        "| phase | rc | seconds | time box (s) |",
        "|---|---|---|---|",
    ]
    for name, ph in rep["phases"].items():
        L.append(f"| {name} | {ph.get('rc')} | {ph.get('seconds')} | {ph.get('time_box_s')} |")
    ct = rep["phases"].get("cuda_tests")
    if ct:
        L += ["", "## CUDA tests", "", f"counts: {ct.get('counts')}"]
        if ct.get("rc") not in (0, 5):
            L += ["", "```", *ct.get("tail", []), "```"]
    prof = _res(rep, "profile")
    if prof.get("md"):
        scale = "tiny sizes, interpreter" if rep["dry_run"] else "paper scale"
        L += ["", f"## profile_render ({scale}; warm-up excluded)", "", prof["md"]]
    regs = prof.get("registers") or []
    L += ["", "## Kernels as compiled by the profile phase", ""]
    if regs:
        L += ["| kernel | regs | spills | smem | warps |", "|---|---|---|---|---|"]
        for r in regs:
            L.append(
                f"| {r['kernel']} | {r['registers']} | {r['spills']} | {r['shared_bytes']} | "
                f"{r['num_warps']} |"
            )
    else:
        L.append("(none: nothing was compiled, e.g. a dry run or the phase failed)")
    cc = _res(rep, "compile")
    if cc.get("md"):
        L += ["", "## compile_check (ahead of time, fused kernels, 64^3 and 128^3)", "", cc["md"]]
    tr = _res(rep, "train")
    L += ["", "## Training (+experiment=car)", ""]
    if tr:
        L.append(f"order: {', '.join(tr.get('order', []))}; dataset {tr.get('dataset')}")
        L.append("")
        for r in tr.get("runs", []):
            if "error" in r:
                L.append(f"- {r['variant']}: FAILED {r['error']}")
            else:
                L.append(
                    f"- {r['variant']}: {r['steps_per_s']} steps/s ({r['steps']} steps in "
                    f"{r['window_s']} s after {r['warmup_steps']} warm-up steps that took "
                    f"{r['warmup_s']} s with start-up; fused op calls {r['fused_op_calls']})"
                )
        if tr.get("mean_steps_per_s"):
            L.append(f"- mean steps/s per variant: {tr['mean_steps_per_s']}")
        sp = tr.get("split")
        if sp and "error" not in sp:
            L.append(
                f"- profiled fused run, schedule {sp['schedule']} ({sp['time_source']}, active "
                f"steps only): {sp['per_step_ms']} ms per step, renderer kernels "
                f"{sp['renderer_kernels_ms']} ms of {sp['total_ms']} ms "
                f"({sp['renderer_fraction']}); top: "
                + ", ".join(f"{t['name']} {t['ms']} ms" for t in sp["top"][:6])
            )
        elif sp:
            L.append(f"- profiled run: FAILED {sp['error']}")
    else:
        L.append("(no result yet)")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path, help="report folder ($OUT on the device)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (CI)")
    ap.add_argument("--skip", default="", help="comma list: data,compile,env,cuda_tests,...")
    ap.add_argument("--budget", type=float, default=None, help="seconds for the whole check")
    ap.add_argument(
        "--box", action="append", default=[], help="NAME=SECONDS: another time box for a phase"
    )
    ap.add_argument("--work", default=None, help="work folder (default: a new temp folder)")
    ap.add_argument(
        "--data-root", default=None, help="where the car set is built ($TMPDIR/dpc-gpu-check-data)"
    )
    ap.add_argument("--data-preset", default="small", help="dpc.data preset on the GPU")
    ap.add_argument("--train-steps", type=int, default=None, help="measured steps per run")
    ap.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--opts", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.phase:  # inside a phase's subprocess; outdir is the work folder
        work = args.outdir
        if os.environ.get("DPC_CHECK_TEST_HANG") == args.phase:  # tests: a phase that hangs
            time.sleep(3600)
        fn = {"env": phase_env, "profile": phase_profile}.get(args.phase)
        if args.phase == "train":
            res = phase_train(work, args.dry_run, json.loads(args.opts))
            failed = [r for r in res["runs"] if "error" in r] + (
                [res["split"]] if "error" in res.get("split", {}) else []
            )
            return 1 if failed else 0
        elif fn:
            fn(work, args.dry_run)
        else:
            sys.exit(f"gpu_check: unknown phase {args.phase}")
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu_check: no CUDA device (use --dry-run on a CPU machine)")
    return orchestrate(args, argv)


if __name__ == "__main__":
    sys.exit(main())
