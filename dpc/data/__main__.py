"""Command line: build datasets and draw contact sheets.

    python -m dpc.data build category=car                 # default car set -> data/car
    python -m dpc.data build category=car preset=quick    # tiny set in seconds -> data/car_quick
    python -m dpc.data sheet data/car --out sheet.png [--split train] [--n 12]
    python -m dpc.data info data/car
    python -m dpc.data import-original <release folder> --synset chair --out data/chair_sn
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "build":
        from dpc.data.build import build_dataset
        from dpc.data.config import make_settings, parse_overrides

        overwrite = False
        if "overwrite=true" in rest:
            rest.remove("overwrite=true")
            overwrite = True
        s = make_settings(**parse_overrides(rest))
        t0 = time.time()
        out = build_dataset(s, overwrite=overwrite)
        print(f"dataset ready: {out}  ({time.time() - t0:.1f} s)")
        return 0
    if cmd == "sheet":
        from dpc.data.sheet import contact_sheet

        p = argparse.ArgumentParser(prog="python -m dpc.data sheet")
        p.add_argument("path")
        p.add_argument("--out", default="sheet.png")
        p.add_argument("--split", default="train")
        p.add_argument("--n", type=int, default=12)
        p.add_argument("--seed", type=int, default=0)
        a = p.parse_args(rest)
        print(contact_sheet(a.path, a.out, a.split, a.n, seed=a.seed))
        return 0
    if cmd == "import-original":
        from dpc.data.original import import_original

        p = argparse.ArgumentParser(prog="python -m dpc.data import-original")
        p.add_argument("src", help="folder with renders/, gt/ and splits/")
        p.add_argument("--synset", required=True, help="ShapeNet synset id or chair/car/airplane")
        p.add_argument("--out", required=True, help="dataset folder to write")
        p.add_argument("--splits", default=None, help="folder of <synset>_<split>.txt lists")
        p.add_argument("--strict", action="store_true", help="stop at the first bad object")
        a = p.parse_args(rest)
        out = import_original(a.src, a.synset, a.out, splits_dir=a.splits, strict=a.strict)
        print(f"dataset ready: {out}")
        return 0
    if cmd == "info":
        from dpc.data.format import read_manifest

        m = read_manifest(rest[0])
        m.pop("checksums", None)
        print(json.dumps(m, indent=1))
        return 0
    print(f"unknown command {cmd!r}\n{__doc__}", file=sys.stderr)
    return 2


def _cli() -> int:
    try:
        return main()
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        # bad input: say what and where, without a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(_cli())
