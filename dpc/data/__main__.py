"""Command line: build datasets, draw contact sheets, import the original's data.

    python -m dpc.data build category=car                 # default car set -> data/car
    python -m dpc.data build category=car preset=quick    # tiny set in seconds -> data/car_quick
    python -m dpc.data sheet path=data/car out=sheet.png [split=train n=12]
    python -m dpc.data info path=data/car
    python -m dpc.data import-original src=<release folder> synset=chair out=data/chair_sn

``python -m dpc.data <command> --help`` lists a command's options (``build``: the data
set settings of :mod:`dpc.data.config`; the others: ``configs/data_<command>.yaml``).
"""

from __future__ import annotations

import json
import sys
import time

from dpc.cli import run_command


def _build(rest: list[str]) -> int:
    from dpc.data.build import build_dataset
    from dpc.data.config import make_settings, parse_overrides

    if any(a in ("-h", "--help") for a in rest):
        from dpc.data import config

        print(__doc__)
        print(config.__doc__)
        return 0
    overwrite = False
    if "overwrite=true" in rest:
        rest.remove("overwrite=true")
        overwrite = True
    s = make_settings(**parse_overrides(rest))
    t0 = time.time()
    out = build_dataset(s, overwrite=overwrite)
    print(f"dataset ready: {out}  ({time.time() - t0:.1f} s)")
    return 0


def _sheet(o) -> None:
    from dpc.data.sheet import contact_sheet

    print(contact_sheet(str(o.path), str(o.out), str(o.split), int(o.n), seed=int(o.seed)))


def _info(o) -> None:
    from dpc.data.format import read_manifest

    m = read_manifest(str(o.path))
    m.pop("checksums", None)
    print(json.dumps(m, indent=1))


def _import_original(o) -> None:
    from dpc.data.original import import_original

    splits = None if o.splits is None else str(o.splits)
    out = import_original(str(o.src), str(o.synset), str(o.out), splits, strict=bool(o.strict))
    print(f"dataset ready: {out}")


COMMANDS = {"sheet": _sheet, "info": _info, "import-original": _import_original}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "build":
        return _build(rest)
    if cmd not in COMMANDS:
        print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
        return 2
    config = "data_" + cmd.replace("-", "_")
    sys.argv = [f"{sys.argv[0]} {cmd}", *rest]
    run_command(config, COMMANDS[cmd], prog=f"dpc.data {cmd}")
    return 0


def _cli() -> int:
    """``main`` with errors a user can fix as one line and exit status 2 (as dpc.cli)."""
    try:
        return main()
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"[dpc.data] error: {exc}", file=sys.stderr)  # no traceback
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
