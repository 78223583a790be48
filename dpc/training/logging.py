"""Run logging: Weights & Biases (offline unless an API key is configured), a JSON-lines
log in the run directory, and a compact console line. Only rank 0 logs.

``logger.mode``: ``auto`` (online if ``WANDB_API_KEY`` is set or ``~/.netrc`` has an
api.wandb.ai entry, else offline), ``online``, ``offline`` or ``disabled``. The
``WANDB_MODE`` environment variable, when set, wins. ``wandb.init`` gets a finite
``init_timeout`` and a failure to start falls back to no wandb, so a run never hangs or
dies for lack of network.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np


def wandb_mode(requested: str) -> str:
    """Resolve ``logger.mode`` (see module docstring) to online/offline/disabled."""
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    if requested not in ("auto", "online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be auto/online/offline/disabled, got {requested!r}")
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except Exception:  # no ~/.netrc, or unreadable: no configured key
        pass
    return "offline"


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class RunLogger:
    """Logs scalars, histograms, images and point clouds. A no-op unless ``active``."""

    def __init__(self, cfg, run_dir: Path, active: bool, start_step: int = 0):
        self.active = active
        self.run = None
        self.cfg = cfg
        self.initial_val: dict | None = None  # the untrained network's validation scalars
        if not active:
            return
        self.jsonl = Path(run_dir) / "train_log.jsonl"
        self._truncate_log(start_step)
        self.mode = wandb_mode(str(cfg.logger.mode))
        if self.mode != "disabled":
            self._init_wandb(cfg, run_dir)

    def _truncate_log(self, start_step: int) -> None:
        """On resume, drop records of steps >= ``start_step`` (they are re-run)."""
        if not self.jsonl.exists():
            return
        keep = []
        for line in self.jsonl.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by SIGKILL
                continue
            if rec.get("step", -1) < start_step:
                keep.append(line)
        self.jsonl.write_text("".join(k + "\n" for k in keep))

    def _init_wandb(self, cfg, run_dir: Path) -> None:
        from omegaconf import OmegaConf

        try:
            import wandb

            run_id_file = Path(run_dir) / "wandb_run_id.txt"
            run_id = (
                run_id_file.read_text().strip() if run_id_file.exists() else uuid.uuid4().hex[:8]
            )
            run_id_file.write_text(run_id)
            self.run = wandb.init(
                project=str(cfg.logger.project),
                entity=cfg.logger.entity,
                name=str(cfg.name),
                group=cfg.logger.group,
                tags=list(cfg.logger.tags or []),
                dir=str(run_dir),
                id=run_id,
                resume="allow",
                mode=self.mode,
                config=OmegaConf.to_container(cfg, resolve=True),
                settings=wandb.Settings(init_timeout=float(cfg.logger.init_timeout)),
            )
            self.wandb = wandb
        except Exception as e:  # never let logging kill or hang a run
            print(
                f"[dpc.train] wandb disabled: could not start ({type(e).__name__}: {e})",
                file=sys.stderr,
            )
            self.run = None

    def scalars(
        self,
        step: int,
        values: dict[str, float],
        winners: np.ndarray | None = None,
        num_candidates: int = 1,
    ) -> None:
        """Log scalar values (and the winning-candidate histogram) at ``step``."""
        if not self.active:
            return
        rec = {"step": step, **values}
        if winners is not None:
            counts = np.bincount(winners.reshape(-1), minlength=num_candidates)
            rec["winner_counts"] = counts.tolist()
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.run is not None:
            d = {
                f"train/{k}" if k not in ("lr", "sigma", "keep_fraction") else k: v
                for k, v in values.items()
            }
            if winners is not None:
                d["train/winning_candidate"] = self.wandb.Histogram(
                    np_histogram=(counts, np.arange(num_candidates + 1))
                )
            self.run.log(d, step=step)

    def metrics(self, step: int, values: dict[str, float], prefix: str = "val") -> None:
        if not self.active:
            return
        with open(self.jsonl, "a") as f:
            f.write(
                json.dumps({"step": step, **{f"{prefix}/{k}": v for k, v in values.items()}}) + "\n"
            )
        if self.run is not None:
            self.run.log({f"{prefix}/{k}": v for k, v in values.items()}, step=step)

    def media(
        self, step: int, image: np.ndarray, points: np.ndarray, colors: np.ndarray | None = None
    ) -> None:
        """Log a preview image (uint8 [H, W, 3]) and a point cloud ``[N, 3]`` as Object3D."""
        if not self.active or self.run is None:
            return
        pc = points if colors is None else np.concatenate([points, colors * 255], 1)
        self.run.log(
            {"train/preview": self.wandb.Image(image), "train/points": self.wandb.Object3D(pc)},
            step=step,
        )

    def event(self, step: int, message: str) -> None:
        """Record a notable event (non-finite loss, interruption) in the log and console."""
        print(f"[dpc.train] step {step}: {message}", file=sys.stderr, flush=True)
        if not self.active:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, "event": message}) + "\n")
        if self.run is not None:
            self.run.log({"events/message": message}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as e:
                print(f"[dpc.train] wandb finish failed: {e}", file=sys.stderr)
            self.run = None


class ProgressLine:
    """``step 120/3000 | loss 123.4 | 17.2 it/s | ETA 2m50s`` every ``every`` steps."""

    def __init__(self, start: int, total: int):
        self.start, self.total = start, total
        self.t0 = time.perf_counter()

    def line(self, step: int, loss: float, extra: str = "") -> str:
        dt = time.perf_counter() - self.t0
        done = step + 1 - self.start
        rate = done / dt if dt > 0 else float("nan")
        eta = (self.total - step - 1) / rate if rate > 0 else float("inf")
        return (
            f"step {step + 1}/{self.total} | loss {loss:.4g} | {rate:.2f} it/s | "
            f"ETA {format_eta(eta)}" + (f" | {extra}" if extra else "")
        )


def wandb_payload(
    result: dict, wandb_module=None, max_points: int = 4000, prefix: str = "val"
) -> dict:
    """:func:`dpc.eval.validate.validate`'s result as a ``wandb.log`` dict: the scalars as
    ``<prefix>/<name>`` and each returned cloud as ``<prefix>/cloud_<i>``
    ``wandb.Object3D`` (prediction in red next to the GT in grey, shifted by +1 along x),
    subsampled to ``max_points``."""
    if wandb_module is None:
        import wandb as wandb_module
    from dpc.eval.validate import scalars

    out = {f"{prefix}/{k}": x for k, x in scalars(result).items()}
    rng = np.random.default_rng(0)
    for i, cloud in enumerate(result.get("clouds", [])):
        gt = result["gt_clouds"][i]
        sel = lambda a: a[rng.choice(len(a), min(len(a), max_points), replace=False)]  # noqa: E731
        p, g = sel(cloud), sel(gt) + np.array([1.0, 0.0, 0.0], np.float32)
        rgb = np.concatenate(
            [np.tile([230, 60, 50], (len(p), 1)), np.tile([150, 150, 150], (len(g), 1))]
        )
        pts = np.concatenate([np.concatenate([p, g]), rgb], 1)
        out[f"{prefix}/cloud_{i}"] = wandb_module.Object3D(pts)
    return out


def wandb_histograms(rep: dict, wandb_module=None, prefix: str = "val/") -> dict:
    """``{prefix}pose_error_deg_<paper|robust>``: ``wandb.Histogram`` (5 degree bins over
    0-180) of the per-view pose errors of a report made with ``keep_errors=True``; front/back
    flips show up as a second peak near 180."""
    if wandb_module is None:
        import wandb as wandb_module
    out = {}
    for name in ("paper", "robust"):
        e = rep.get(name, {}).get("errors_deg")
        if e:
            hist = np.histogram(np.asarray(e), bins=36, range=(0.0, 180.0))
            out[f"{prefix}pose_error_deg_{name}"] = wandb_module.Histogram(np_histogram=hist)
    return out
