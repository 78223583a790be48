"""What Chamfer can a silhouette-only point cloud reach? Score ideal clouds.

Silhouettes constrain the object's visual hull, not where inside it the points sit: a
cloud that fills the object's volume renders the same silhouettes as one on its surface.
The ground truth (docs/METHOD.md, section 6) is a surface sample, so volume points cost precision.
This scores, against the dataset's own ground truth, two ideal predictions made from the
true mesh of each object (procedural categories, whose meshes can be regenerated):

* ``volume``: points uniform inside the mesh (what silhouettes alone cannot tell apart
  from a surface cloud),
* ``surface``: points uniform on the mesh surface (all of it, hidden parts too),

next to nothing else: no network is involved.

    python -m dpc.eval.hull_bound dataset=data/car split=test points=2000 [max_objects=200]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dpc.cli import print_json, run_command
from dpc.eval.metrics import shape_metrics


def score(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """(precision, coverage) x100 of one predicted cloud ``[N, 3]`` against ``[M, 3]``."""
    prec, cov = shape_metrics(
        torch.from_numpy(np.asarray(pred, np.float64))[None],
        torch.from_numpy(np.asarray(gt, np.float64))[None],
        "kdtree",
    )
    return 100 * float(prec[0]), 100 * float(cov[0])


def ideal_cloud_scores(
    dataset: str | Path,
    split: str = "test",
    points: int = 2000,
    max_objects: int | None = None,
    seed: int = 0,
) -> dict:
    """Mean precision / coverage / Chamfer (x100) of ideal volume and surface clouds."""
    import trimesh

    from dpc.data import open_dataset
    from dpc.data.build import make_source, normalize_mesh
    from dpc.data.config import BuildSettings

    ds = open_dataset(dataset)
    st = ds.manifest["settings"]
    if st.get("category") not in ("car", "chair"):
        raise ValueError(
            f"dataset {dataset}: hull_bound needs a procedural category (car, chair), "
            f"got {st.get('category')!r}"
        )
    s = BuildSettings(**{k: v for k, v in st.items() if k in BuildSettings.__dataclass_fields__})
    src = make_source(s)
    ids = list(ds.splits[split])[:max_objects]
    gt = ds.gt_points(split)
    out: dict[str, list] = {"volume": [], "surface": []}
    no_volume = []  # objects whose mesh gives too few inside samples (not watertight)
    for i, oid in enumerate(tqdm(ids, desc=f"ideal clouds {split}", disable=None)):
        m = src.load(oid)
        normalize_mesh(m, s)
        np.random.seed(seed + i)  # trimesh samples with numpy's global generator
        for factor in (20, 100):  # rejection sampling: thin parts need more draws
            vol = trimesh.sample.volume_mesh(m, factor * points)
            if len(vol) >= points:
                break
        if len(vol) < points:
            no_volume.append(f"{oid} ({len(vol)} inside samples)")
        else:
            out["volume"].append(score(vol[:points], gt[i]))
        out["surface"].append(score(np.asarray(m.sample(points)), gt[i]))
    if no_volume:
        print(
            f"hull_bound: no volume cloud for {len(no_volume)} of {len(ids)} objects "
            f"(mesh not watertight: inside samples < {points}); volume scores are over the "
            "rest, listed in 'volume_skipped'",
            file=sys.stderr,
        )
    res = {"dataset": str(dataset), "split": split, "points": points, "num_objects": len(ids)}
    for k, v in out.items():
        a = np.asarray(v).reshape(-1, 2)
        res[k] = {
            "precision": a[:, 0].mean() if len(a) else None,
            "coverage": a[:, 1].mean() if len(a) else None,
            "chamfer": a.sum(1).mean() if len(a) else None,
            "num_objects": len(a),
        }
    res["volume_skipped"] = no_volume
    return res


def run(a) -> dict:
    """Score the ideal clouds and print (and write) the JSON (the command's body)."""
    n_max = None if a.max_objects is None else int(a.max_objects)
    res = ideal_cloud_scores(str(a.dataset), str(a.split), int(a.points), n_max)
    print_json(res, a.out)
    return res


def main(argv=None) -> None:
    """``python -m dpc.eval.hull_bound dataset=<folder> [key=value ...]``."""
    run_command("hull_bound", run, argv, prog="dpc.eval.hull_bound")


if __name__ == "__main__":
    main()
