"""Opening the dataset a config names: for training (built when missing) and for a
trained run's evaluation (never built; looked up next to the run when relative)."""

from __future__ import annotations

from pathlib import Path

from dpc.data.build import ensure_dataset
from dpc.data.format import open_dataset
from dpc.data.synthetic import synthetic_dataset


def open_training_data(cfg):
    """The dataset reader named by ``cfg.data``: synthetic (built in memory) or an on-disk
    ``dpc.data`` dataset, built first when missing and ``data.build_if_missing`` is true.
    """
    d = cfg.data
    if d.source == "synthetic":
        return synthetic_dataset(
            {
                "train": int(d.synthetic.num_train),
                "val": int(d.synthetic.num_val),
                "test": int(d.synthetic.num_val),
            },
            num_views=int(d.synthetic.num_views),
            image_size=int(d.synthetic.image_size),
            seed=int(d.synthetic.seed),
        )
    if d.source != "dataset":
        raise ValueError(f"data.source must be 'dataset' or 'synthetic', got {d.source!r}")
    root = Path(str(d.root))
    path = root / str(d.name)
    if not (path / "manifest.json").exists():
        if not d.build_if_missing:
            raise FileNotFoundError(
                f"dataset {path} is missing; build it with: "
                f"python -m dpc.data build {d.build_command_args}"
            )
        path = Path(ensure_dataset(str(d.name), root=root))
    return open_dataset(path)


def open_run_data(cfg, data_path: str | None = None, run_dir: Path | None = None):
    """A trained run's dataset reader (``cfg`` is the run's config), or the on-disk dataset
    at ``data_path``.

    Never builds a dataset: a relative ``data.root`` is looked up from the current
    directory, then from the directory the run was launched in (guessed as the parent of
    ``paths.output_root``); if neither has it, a clear error names ``data_path``.
    """
    if data_path:
        if not Path(data_path).exists():
            raise FileNotFoundError(f"data_path does not exist: {data_path}")
        return open_dataset(data_path)
    d = cfg.data
    if d.get("source", "dataset") != "dataset":
        return open_training_data(cfg)  # synthetic: rebuilt in memory from its seed
    rel = Path(str(d.root)) / str(d.name)
    cands = [rel]
    if not rel.is_absolute() and run_dir is not None:
        # run_dir = <launch>/<output_root>/<name>/<timestamp>
        depth = len(Path(str(cfg.paths.get("output_root", "outputs"))).parts) + 2
        parents = Path(run_dir).resolve().parents
        if depth - 1 < len(parents):  # a run copied elsewhere may sit less deep
            cands.append(parents[depth - 1] / rel)
    for c in cands:
        if (c / "manifest.json").exists():
            return open_dataset(c)
    raise FileNotFoundError(
        f"dataset of this run not found (tried {[str(c) for c in cands]}); pass "
        "data_path=<dataset folder>, or build it: python -m dpc.data build "
        f"{d.get('build_command_args', '')}"
    )


def dataset_key(cfg, data_path: str | None = None) -> str:
    """Identifies the dataset a run is evaluated on (saved with its global alignment)."""
    if data_path:
        return str(Path(data_path).resolve())
    return f"{cfg.data.get('source', 'dataset')}:{cfg.data.name}"
