"""The commands' one style (README, "Commands"): ``python -m dpc.<command> key=value ...``.

Every command is a hydra app of ``configs/<name>.yaml``: its options are that file's keys,
``--help`` prints them with their defaults, an unknown key is an error. From Python, the
same options: :func:`compose_options`. Errors a user can fix (a missing file, a bad
value) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_options(config_name: str, **options) -> DictConfig:
    """``configs/<config_name>.yaml`` composed as its hydra app does, with ``options``
    (Python values) replacing the defaults; an unknown option is a clear error."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name)
    unknown = set(options) - set(cfg)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(cfg)}")
    return OmegaConf.merge(cfg, options)


def run_command(
    config_name: str, task: Callable[[DictConfig], object], argv=None, prog: str | None = None
) -> None:
    """Run ``task(options)`` as the hydra app of ``configs/<config_name>.yaml``: overrides
    ``key=value`` from ``argv`` (default the command line); ``--help`` lists the options.
    A task returning a non-zero int exits with it."""
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    name = prog or f"dpc.{config_name}"

    def body(cfg: DictConfig) -> None:
        try:
            status = task(cfg)
        except (FileNotFoundError, ValueError) as e:
            print(f"[{name}] error: {e}", file=sys.stderr)
            sys.exit(2)
        if isinstance(status, int) and not isinstance(status, bool) and status:
            sys.exit(status)

    app = hydra.main(version_base="1.3", config_path=str(CONFIGS), config_name=config_name)
    app(body)()


def print_json(result: dict, out=None) -> None:
    """Print a command's JSON result and, with ``out`` (a path), write it there too."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(str(out)).write_text(text + "\n")
