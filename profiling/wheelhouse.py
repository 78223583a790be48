"""Build the wheels the GPU check needs beyond the GPU machine's image (issue 22).

The H200 image (docs/kernels.md, "GPU check") has Python 3.12 with torch, triton, numpy,
scipy, pillow, numba, pytest, pyyaml, tqdm and pybind11, and reaches no registry: what the
check needs beyond that travels as wheels in ``.wheelhouse/`` (ignored by git, named in the
device call's ``carry``), and ``profiling/gpu_check.sh`` installs them with ``pip install
--no-index --target``. Those packages:

* training's config: hydra-core, omegaconf, antlr4-python3-runtime (sdist only: a pure
  wheel is built here);
* the car set's build on the device: trimesh, embreex (a cp312 manylinux wheel);
* the KeOps Chamfer test: pykeops, keopscore (sdists only: pure wheels built here).

    python profiling/wheelhouse.py                     # cp312 wheels from PyPI -> .wheelhouse
    python profiling/wheelhouse.py --from-installed    # offline: repack this interpreter's
                                                       # installed copies (CI, tests)

It also writes ``.wheelhouse/COMMIT`` (``git rev-parse HEAD`` and whether the tree is
dirty: ``.git`` does not travel to the device), and prints the wheels' total size and the
size of what travels (tracked + untracked-not-ignored files + the wheelhouse), which must
stay under the device's 64 MiB; exit status 1 if it does not.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import importlib.metadata as md
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".wheelhouse"
TRAVEL_LIMIT_MIB = 64.0

# (distribution, version, how): "binary" = a wheel from the registry for the target
# Python; "sdist" = only a source distribution exists: built here into a pure wheel.
# Versions: the ones this project is tested with on the CPU machines.
PACKAGES = [
    ("hydra-core", "1.3.8", "binary"),
    ("omegaconf", "2.3.1", "binary"),
    ("antlr4-python3-runtime", "4.9.3", "sdist"),
    ("trimesh", "5.2.0", "binary"),
    ("embreex", "4.4.0.post1", "binary"),
    ("keopscore", "2.3", "sdist"),
    ("pykeops", "2.3", "sdist"),
]
# Needed by those and already in the image (not carried): numpy, pyyaml, packaging, pybind11.
MANYLINUX = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def download(dest: Path, py: str) -> None:
    """Wheels for CPython ``py`` (e.g. "3.12") on x86-64 Linux into ``dest``."""
    abi = "cp" + py.replace(".", "")
    binary = [f"{n}=={v}" for n, v, how in PACKAGES if how == "binary"]
    plat = [a for p in MANYLINUX for a in ("--platform", p)]
    _pip(
        "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", py,
        "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none",
        *plat, "-d", str(dest), *binary,
    )  # fmt: skip
    sdists = [f"{n}=={v}" for n, v, how in PACKAGES if how == "sdist"]
    # Pure-Python sdists: the wheel built by this interpreter is py3-none-any.
    _pip("wheel", "-q", "--no-deps", "--no-binary=:all:", "--no-build-isolation",
         "-w", str(dest), *sdists)  # fmt: skip
    for w in dest.glob("*.whl"):
        if any(w.name.lower().startswith(n.replace("-", "_") + "-") for n, _, h in PACKAGES
               if h == "sdist") and not w.name.endswith("-py3-none-any.whl"):  # fmt: skip
            raise SystemExit(f"wheelhouse: {w.name} is not a pure wheel")


def _record_line(arc: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [arc, f"sha256={digest}", str(len(data))]


def repack_installed(name: str, dest: Path) -> Path:
    """A wheel of the installed distribution ``name`` rebuilt from its RECORD (offline).
    Scripts outside site-packages and byte-code are left out; RECORD is rewritten."""
    dist = md.distribution(name)
    info = Path(dist._path)  # type: ignore[attr-defined]  # the .dist-info folder
    site = info.parent
    wheel_meta = (info / "WHEEL").read_text()
    tags = [ln.split(":", 1)[1].strip() for ln in wheel_meta.splitlines() if ln.startswith("Tag:")]
    if not tags:
        raise SystemExit(f"wheelhouse: {name} has no WHEEL tags (not installed from a wheel?)")
    py_t, abi_t, plat_t = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    tag = "-".join(".".join(x) for x in (py_t, abi_t, plat_t))
    norm = dist.metadata["Name"].replace("-", "_").replace(".", "_")
    out = dest / f"{norm}-{dist.version}-{tag}.whl"
    skip_meta = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
    record_rows = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in dist.files or []:
            arc = f.as_posix()
            if arc.startswith("..") or "__pycache__" in arc or arc.endswith(".pyc"):
                continue
            if arc.startswith(info.name + "/") and Path(arc).name in skip_meta:
                continue
            p = site / f
            if not p.is_file():
                continue
            data = p.read_bytes()
            z.writestr(arc, data)
            record_rows.append(_record_line(arc, data))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerows(record_rows)
        w.writerow([f"{info.name}/RECORD", "", ""])
        z.writestr(f"{info.name}/RECORD", buf.getvalue())
    return out


def write_commit(dest: Path) -> str:
    """``COMMIT``: the tree's commit and dirty flag, read by gpu_check on the device."""

    def git(*a):
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    sha = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    text = f"{sha}{' dirty' if dirty else ''}\n"
    (dest / "COMMIT").write_text(text)
    return text.strip()


def travelling_bytes() -> int | None:
    """Bytes of tracked and untracked-not-ignored files (what a device call copies)."""
    r = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if r.returncode != 0:
        return None
    total = 0
    for rel in filter(None, r.stdout.split(b"\0")):
        p = ROOT / os.fsdecode(rel)
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    ap.add_argument("--python-version", default="3.12", help="the device's Python (X.Y)")
    ap.add_argument(
        "--from-installed",
        action="store_true",
        help="offline: repack this interpreter's installed copies (its own Python tag)",
    )
    ap.add_argument("--keep", action="store_true", help="keep wheels already in --dest")
    args = ap.parse_args(argv)
    dest = args.dest.resolve()
    if dest.exists() and not args.keep:
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if args.from_installed:
        for name, version, _ in PACKAGES:
            have = md.version(name)
            if have != version:
                print(f"wheelhouse: note: installed {name} {have}, pinned {version}")
            print(f"repacked {repack_installed(name, dest).name}")
    else:
        with tempfile.TemporaryDirectory() as tmp:  # a clean folder, then moved in
            download(Path(tmp), args.python_version)
            for w in Path(tmp).glob("*.whl"):
                shutil.move(str(w), dest / w.name)
    wheels = sorted(dest.glob("*.whl"))
    names = {w.name.split("-")[0].lower() for w in wheels}
    missing = [n for n, _, _ in PACKAGES if n.replace("-", "_").lower() not in names]
    if missing:
        print(f"wheelhouse: missing wheels for {missing}", file=sys.stderr)
        return 1
    commit = write_commit(dest)
    size = sum(w.stat().st_size for w in wheels)
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:8.2f} MiB  {w.name}")
    print(f"wheelhouse: {len(wheels)} wheels, {size / 2**20:.2f} MiB in {dest}; commit {commit}")
    tree = travelling_bytes()
    if tree is not None:
        total = (tree + size) / 2**20
        print(
            f"wheelhouse: travels with the tree {tree / 2**20:.2f} MiB: "
            f"{total:.2f} MiB of {TRAVEL_LIMIT_MIB:.0f} MiB"
        )
        if total > TRAVEL_LIMIT_MIB:
            print("wheelhouse: over the device's 64 MiB limit", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
