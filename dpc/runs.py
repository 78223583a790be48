"""A run: its directory, checkpoints, saved config, and the settings read once from it.

The one place that knows the run directory's format (docs/CONTRACTS.md, "Run
directories")::

    <run_dir>/config.yaml             the resolved training config
    <run_dir>/checkpoints/last.pt     {"model", "optimizer", "step", "rng", "config", ...}
    <run_dir>/train_log.jsonl         per-step records (dpc.training.logging)
    <run_dir>/summary.json            final figures, wall time, :func:`environment`
    <run_dir>/eval/alignment.json     the global alignment (dpc.evaluate)

:func:`open_run` loads a run (model, config, typed :class:`RunSettings`, step) for every
consumer: evaluation, pictures, previews, ``dpc.load_run``. Training writes checkpoints
with :func:`save_checkpoint`. ``step`` in a checkpoint is the next step to run; batches,
point dropout and schedules are functions of ``(seed, step)``, so model + optimiser +
step determine the rest of a run (the RNG states are saved as well).

Below the data and evaluation layers, above the models: it builds the model, never reads
data.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dpc.models import DPCModel, build_model, candidate_count
from dpc.render import RenderSettings, final_sigma

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CHECKPOINT = Path("checkpoints") / "last.pt"  # relative to the run directory
ALIGNMENT = Path("eval") / "alignment.json"


@dataclass(frozen=True)
class RunSettings:
    """What the consumers of a training config need, derived once (the config's own
    keys stay the source; this is no second copy of the defaults)."""

    predict_pose: bool  # unsupervised pose (False: camera supervision)
    num_candidates: int  # poses winner-takes-all chooses among, flips included
    image_size: int  # network input size
    final_sigma: float  # blur std (cells) for validation, evaluation and pictures
    render: RenderSettings  # the renderer as trained (fidelity switches included)

    @classmethod
    def from_cfg(cls, cfg) -> RunSettings:
        """From a composed or saved training config; raises for settings that do not fit
        together (e.g. flipped candidates without pose prediction)."""
        return cls(
            predict_pose=bool(cfg.model.predict_pose),
            num_candidates=candidate_count(cfg),
            image_size=int(cfg.data.image_size),
            final_sigma=final_sigma(cfg),
            render=RenderSettings.from_cfg(cfg),
        )


@dataclass
class Run:
    """A trained run, loaded (:func:`open_run`)."""

    run_dir: Path
    cfg: DictConfig  # the saved training config (deprecated keys brought up to date)
    settings: RunSettings
    model: DPCModel  # eval mode, on the requested device
    step: int  # the checkpoint's step (the next step training would run)

    @property
    def alignment_path(self) -> Path:
        return self.run_dir / ALIGNMENT


def checkpoint_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT


def find_checkpoint(run_dir: str | Path) -> Path:
    """``<run_dir>/checkpoints/last.pt``, with a clear error when it is missing."""
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run_dir is not a directory: {run_dir}")
    p = checkpoint_path(run_dir)
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint in run directory {run_dir} (expected {p})")
    return p


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=False)


def saved_config(ckpt: dict) -> DictConfig:
    """The training config stored in a checkpoint, deprecated keys brought up to date."""
    cfg = OmegaConf.create(ckpt["config"])
    normalize_loss_config(cfg.loss)  # older runs: the deprecated student-weight key
    return cfg


def open_run(run_dir: str | Path, device: str | torch.device = "cpu") -> Run:
    """Load a trained run: its model (eval mode, on ``device``), saved config, settings
    and checkpoint step. The checkpoint is read once."""
    ckpt = load_checkpoint(find_checkpoint(run_dir))
    cfg = saved_config(ckpt)
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])  # older runs' extra pose-code layer: ignored
    step = int(ckpt.get("step", -1))
    return Run(Path(run_dir), cfg, RunSettings.from_cfg(cfg), model.to(device).eval(), step)


def write_config(run_dir: Path, cfg) -> None:
    """``<run_dir>/config.yaml``: the resolved training config."""
    (Path(run_dir) / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


# the packages whose builds decide a run's floating-point rounding on the CPU path
ENV_PACKAGES = ("torch", "numpy", "scipy", "numba", "triton", "pykeops")


def environment() -> dict:
    """Package versions, Python and machine a run was trained on (``summary.json``).

    A run repeats bit for bit only where these match: the same code and data in another
    environment can differ in the last digits, and a 3000-step run carries that into a
    different model (RESULTS.md "Round 12")."""
    import platform
    from importlib import metadata

    packages = {}
    for name in ENV_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    cpu = None
    try:  # Linux; elsewhere platform.processor() is the best there is
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "packages": packages,
        "platform": platform.platform(),
        "cpu": cpu or platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
    }


def rng_state() -> dict:
    """The global RNG states (torch CPU, CUDA if present, numpy, python)."""
    st = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(path: str | Path, model, optimizer, step: int, cfg, **extra) -> Path:
    """Write a checkpoint atomically: to ``<path>.tmp``, fsync, then ``os.replace``, so a
    crash or SIGKILL mid-write never leaves a truncated ``last.pt``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "rng": rng_state(),
        "config": OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg,
        **extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def resolve_run_dir(cfg) -> tuple[Path, Path | None]:
    """Run directory and, when resuming, the checkpoint to resume from.

    ``resume=false``: ``paths.run_dir``. ``resume=true``: the newest run directory of this
    experiment (under ``paths.output_root/<name>``) with a checkpoint, else a fresh start
    in ``paths.run_dir``. ``resume=<dir>``: that run directory (must have a checkpoint).
    """
    resume = cfg.resume
    if resume in (None, False, "false", "False"):
        return Path(str(cfg.paths.run_dir)), None
    if resume in (True, "true", "True"):
        base = Path(str(cfg.paths.output_root)) / str(cfg.name)
        cands = sorted(
            (p.parent.parent for p in base.glob(f"*/{CHECKPOINT.as_posix()}")),
            key=lambda p: checkpoint_path(p).stat().st_mtime,
        )
        if not cands:
            print(
                f"[dpc.train] resume=true: no checkpoint under {base}; starting fresh",
                file=sys.stderr,
            )
            return Path(str(cfg.paths.run_dir)), None
        return cands[-1], checkpoint_path(cands[-1])
    run_dir = Path(str(resume))
    return run_dir, find_checkpoint(run_dir)


def normalize_loss_config(loss) -> None:
    """Bring a ``loss`` config group (a training config's, or an older run's saved one) to
    the current keys, in place; the one place the deprecated key is handled.

    ``loss.pose_student_align_loss`` used to be the *weight* of the student loss (a
    number, 20); the original calls that weight ``pose_predictor_student_loss_weight`` and
    uses ``pose_student_align_loss`` as a true/false switch for :func:`student_align_loss`.
    A number there is therefore the deprecated weight: it replaces
    ``pose_predictor_student_loss_weight`` (with a ``DeprecationWarning`` and a logged
    line) and the switch becomes false; a bool is the switch.
    """
    import logging
    import warnings

    from omegaconf import open_dict

    old = loss.get("pose_student_align_loss", False)
    with open_dict(loss):
        if old is None or isinstance(old, bool):
            loss.pose_student_align_loss = bool(old)
        elif isinstance(old, (int, float)):
            msg = (
                f"loss.pose_student_align_loss={old} is the deprecated name of the student-loss "
                f"weight: using loss.pose_predictor_student_loss_weight={old} (the original's "
                "name) and loss.pose_student_align_loss=false (now the original's true/false "
                "switch of the reference-point align loss)"
            )
            warnings.warn(msg, DeprecationWarning, stacklevel=2)
            logging.getLogger("dpc").warning(msg)
            loss.pose_predictor_student_loss_weight = float(old)
            loss.pose_student_align_loss = False
        else:
            raise ValueError(
                "loss.pose_student_align_loss must be true/false (or, deprecated, a number: "
                f"the student-loss weight), got {old!r}"
            )
        if "pose_predictor_student_loss_weight" not in loss:
            loss.pose_predictor_student_loss_weight = 20.0
