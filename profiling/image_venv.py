"""A virtual environment that holds only what the GPU machine's image holds (issue 22), to
run ``gpu_check.sh --dry-run`` as the device would: no hydra-core, omegaconf, antlr4,
trimesh, embreex, pykeops, keopscore, wandb or open3d unless the check installs them from
the wheelhouse.

    python profiling/image_venv.py VENV [--base-python python3.12]
    PYTHON=VENV/bin/python bash profiling/gpu_check.sh --dry-run OUT

The venv (``--without-pip``, no system site-packages) sees the base interpreter's installed
copies of the image's packages through one ``.pth`` file and a folder of symbolic links,
one per top-level entry of each such distribution: nothing is downloaded or copied. The
base interpreter is this one unless ``--base-python`` names another (for the image's
Python 3.12 it must have torch, triton, numpy, scipy, pillow, numba and pytest installed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# The image's Python packages (docs/kernels.md: the device's documented package list),
# those that matter here and their requirements. Anything else is hidden.
IMAGE_PACKAGES = [
    "torch", "triton", "numpy", "scipy", "pillow", "numba", "llvmlite", "pytest",
    "pluggy", "iniconfig", "packaging", "pygments", "pyyaml", "tqdm", "pybind11", "pip",
    "setuptools", "wheel", "typing-extensions", "sympy", "mpmath", "networkx", "jinja2",
    "markupsafe", "filelock", "fsspec",
]  # fmt: skip
NOT_IN_IMAGE = ["hydra", "omegaconf", "antlr4", "trimesh", "embreex", "pykeops", "keopscore",
                "wandb", "open3d"]  # fmt: skip

_LIST_ENTRIES = r"""
import importlib.metadata as md, json, sys
names = json.loads(sys.argv[1])
out = {}
for name in names:
    try:
        d = md.distribution(name)
    except md.PackageNotFoundError:
        continue
    site = str(d.locate_file(""))
    tops = set()
    for f in d.files or []:
        first = f.parts[0]
        if first in ("..", "__pycache__") or first.endswith(".pth"):
            continue
        tops.add(first)
    out[name] = [site, sorted(tops)]
print(json.dumps(out))
"""


def make(venv: Path, base_python: str = sys.executable) -> Path:
    """Create ``venv``; returns its python."""
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [base_python, "-c", _LIST_ENTRIES, json.dumps(IMAGE_PACKAGES)],
        check=True,
        capture_output=True,
        text=True,
    )
    found = json.loads(r.stdout)
    missing = [n for n in ("torch", "numpy", "pytest", "pip") if n not in found]
    if missing:
        raise SystemExit(f"image_venv: {base_python} lacks {missing}")
    links = venv / "image-site"
    links.mkdir()
    for _name, (site, tops) in found.items():
        for top in tops:
            src, dst = Path(site) / top, links / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
    r = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    )
    (Path(r.stdout.strip()) / "image_packages.pth").write_text(
        f"import site; site.addsitedir({str(links)!r})\n"
    )
    return py


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("venv", type=Path)
    ap.add_argument("--base-python", default=sys.executable)
    args = ap.parse_args(argv)
    py = make(args.venv, args.base_python)
    check = f"import importlib.util as u; print([m for m in {NOT_IN_IMAGE!r} if u.find_spec(m)])"
    r = subprocess.run([str(py), "-c", check], capture_output=True, text=True, check=True)
    print(f"image_venv: {py}; importable among the image's missing packages: {r.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
