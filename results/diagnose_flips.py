"""Diagnostics of front/back flips of an unsupervised car run (RESULTS.md "Round 3",
docs/training.md "The one-sided solution").

    python results/diagnose_flips.py azimuth results/r3_u_ring_s0 [...]   # from evaluation files
    python results/diagnose_flips.py model <run dir> <evaluation folder>  # loads the model
    python results/diagnose_flips.py types results/r3_u_ring5k_s0 [...]   # per car type

``azimuth``: per 45-degree bin of the ground-truth camera azimuth (``atan2(x, z)`` of the
camera position; the cars' length runs along x), the share of test views right (< 30 deg)
and flipped (> 150 deg) under the paper's alignment, read from ``metrics_test.json``.
``model``: (1) whether clouds predicted from different views of one object agree in
orientation (mean Chamfer between them, and after turning one by 180 degrees about the
model's vertical, the mean image-up of its predicted cameras); (2) the silhouette loss of
each test view under its predicted (student) pose and under that pose flipped front to
back, for the views right and flipped under the paper's alignment.
``types`` (built-in procedural cars only): per car type (``dpc.data.sources.car``,
regenerated from the data set's source seed), the share of test views right and flipped
under the paper's alignment, and the accuracy without the pickups.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _dataset(folder: Path):
    from dpc.data import open_dataset

    cfg = (folder / "config.yaml").read_text()
    name = re.search(r"^data:\n(?:  .*\n)*?  name: (\S+)", cfg, re.M).group(1)
    return open_dataset(ROOT / "data" / name)


def _errors(folder: Path) -> np.ndarray:
    m = json.loads((folder / "metrics_test.json").read_text())
    return np.array([o["pose_error_deg"] for o in m["per_object"]])  # [n, V]


def azimuth(folder: Path) -> None:
    d = _dataset(folder)
    cp = d.cam_pos("test")
    err = _errors(folder)
    az = np.degrees(np.arctan2(cp[..., 0], cp[..., 2]))
    ok, flip = err < 30, err > 150
    print(f"{folder}: right {ok.mean():.3f}, flipped {flip.mean():.3f} (paper alignment)")
    edges = np.arange(-180, 181, 45)
    for a, b in zip(edges[:-1], edges[1:]):
        s = (az >= a) & (az < b)
        print(f"  azimuth [{a:4d}, {b:4d}): right {ok[s].mean():.2f}  flipped {flip[s].mean():.2f}")


def types(folder: Path) -> None:
    from dpc.data.sources.car import CarSource, make_car

    d = _dataset(folder)
    src_info = d.manifest["source"]
    if src_info.get("name") != "car":
        sys.exit(f"{folder}: types needs the built-in procedural cars, got {src_info}")
    src = CarSource(src_info["sizes"], seed=int(src_info["seed"]))
    m = json.loads((folder / "metrics_test.json").read_text())
    kind = np.array([make_car(src.rng_for(o["object_id"]))[1]["type"] for o in m["per_object"]])
    err = _errors(folder)
    ok, flip = err < 30, err > 150
    print(f"{folder}: right {ok.mean():.3f}, flipped {flip.mean():.3f} (paper alignment); "
          f"without pickups: right {ok[kind != 'pickup'].mean():.3f}, "
          f"flipped {flip[kind != 'pickup'].mean():.3f}")  # fmt: skip
    for k in sorted(set(kind)):
        s = kind == k
        print(f"  {k:10s} {s.sum():3d} objects: right {ok[s].mean():.2f}  "
              f"flipped {flip[s].mean():.2f}")  # fmt: skip


def model(run_dir: str, folder: Path) -> None:
    import dpc
    from dpc.camera import flip_about_object_up, mean_image_up, quat_from_axis_angle, quat_to_matrix
    from dpc.data.images import resize_masks
    from dpc.losses import per_view_l2
    from dpc.render import final_sigma

    run = dpc.load_run(run_dir)
    d = _dataset(folder)
    err = _errors(folder)
    imgs, masks = np.asarray(d.images("test")), np.asarray(d.masks("test"))
    with torch.no_grad():
        outs = [run.model(run.prepare(imgs[o])) for o in range(len(imgs))]
        up = mean_image_up(torch.cat([o.pose_student for o in outs]))  # the model's vertical
        R = quat_to_matrix(quat_from_axis_angle(up, torch.tensor(np.pi)))

        def chamfer(a, b):
            D = torch.cdist(a, b)
            return (D.min(1).values.mean() + D.min(0).values.mean()).item()

        direct, turned = [], []
        for o in outs[:20]:
            p = o.points
            for i in range(len(p)):
                for j in range(i + 1, len(p)):
                    direct.append(chamfer(p[i], p[j]))
                    turned.append(chamfer(p[i], p[j] @ R.T))
        print(f"clouds of one object: Chamfer {np.mean(direct):.4f} between views, "
              f"{np.mean(turned):.4f} after turning one front to back")  # fmt: skip
        G, sigma = run.renderer.settings.vox_size, final_sigma(run.cfg)
        rows = []
        for o, out in enumerate(outs):
            q = out.pose_student
            qs = torch.cat([q, flip_about_object_up(q, up)])
            sil = run.renderer(
                out.points.repeat(2, 1, 1), qs, sigma=sigma, scale=out.scale.repeat(2)
            ).silhouette
            m = torch.as_tensor(masks[o]).float()
            m = resize_masks(m / 255 if masks.dtype == np.uint8 else m, G)
            L = per_view_l2(sil, m.repeat(2, 1, 1)).view(2, -1)
            rows += [(err[o, v], L[0, v].item(), L[1, v].item()) for v in range(L.shape[1])]
    r = np.array(rows)
    for label, sel in (("right", r[:, 0] < 30), ("flipped", r[:, 0] > 150)):
        print(f"{label} views: silhouette loss {r[sel, 1].mean():.2f} at the predicted pose, "
              f"{r[sel, 2].mean():.2f} turned front to back")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("azimuth", "model", "types"):
        sys.exit(__doc__)
    if sys.argv[1] in ("azimuth", "types"):
        for f in sys.argv[2:]:
            (azimuth if sys.argv[1] == "azimuth" else types)(Path(f))
    else:
        model(sys.argv[2], Path(sys.argv[3]))
