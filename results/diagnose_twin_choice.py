"""Can a run's own predicted clouds tell a view from its silhouette twin? (RESULTS.md "Round 9")

For every test view: the cloud the run predicted from that view (``eval/test/predictions.npz``,
model frame) is rotated into the ground-truth frame by the run's global alignment
(``eval/alignment.json``) and rendered with dpc's renderer at the view's true camera and
at its confusions (:func:`dpc.eval.pose_ambiguity.ambiguity_table`: the twin, the flip,
small errors). ``identified`` is the share of views whose true camera renders strictly
closer to the view's mask than the confusion does: what winner-takes-all between a view's
camera and its twin can reach with the shapes the run learnt (round 7 measured 0.90 for
the exact ground-truth clouds at grid 32). Also printed: the share of views with at least
one of the run's candidates within 30 degrees of the truth (after the alignment), against
the share whose read-out pose is.

    python results/diagnose_twin_choice.py <run_dir> [<run_dir> ...]
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dpc.data import open_dataset
from dpc.eval.metrics import align_points, pose_errors_deg
from dpc.eval.pose_ambiguity import ambiguity_table
from dpc.render import PointCloudRenderer, RenderSettings


def main(run_dir: str) -> dict:
    run = Path(run_dir)
    cfg = OmegaConf.load(run / "config.yaml")
    pred = np.load(run / "eval" / "test" / "predictions.npz")
    q_align = torch.tensor(json.loads((run / "eval" / "alignment.json").read_text())["quat"])
    ds = open_dataset(Path(cfg.data.root) / cfg.data.name)
    n, V = pred["points"].shape[:2]
    q_gt = torch.tensor(np.asarray(ds.quats("test"))[:n], dtype=torch.float64)
    masks = np.asarray(ds.masks("test"))[:n]
    pts = torch.tensor(pred["points"].astype(np.float32)).reshape(n * V, -1, 3)
    pts = align_points(pts, q_align.float())
    renderer = PointCloudRenderer(
        RenderSettings(
            vox_size=int(cfg.render.vox_size), kernel_size=int(cfg.render.pc_gauss_kernel_size)
        )
    )
    table = ambiguity_table(
        pts.numpy(),
        q_gt.reshape(n * V, 1, 4).numpy(),
        masks.reshape(n * V, 1, *masks.shape[2:]),
        renderer,
        0.5,
    )
    cands = torch.tensor(pred["candidates"], dtype=torch.float64)  # [n, V, C, 4]
    err_c = pose_errors_deg(cands, q_gt[:, :, None].expand_as(cands), q_align.double())
    err_p = pose_errors_deg(torch.tensor(pred["quat"], dtype=torch.float64), q_gt, q_align.double())
    out = {
        "run": str(run),
        "views": n * V,
        "twin_identified": table["twin_z"]["identified"],
        "twin_error_ratio": table["twin_z"]["error_ratio"],
        "flip_identified": table["flip"]["identified"],
        "flip_error_ratio": table["flip"]["error_ratio"],
        "any_candidate_within_30": float((err_c.amin(-1) < 30).double().mean()),
        "read_out_within_30": float((err_p < 30).double().mean()),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    for r in sys.argv[1:]:
        main(r)
