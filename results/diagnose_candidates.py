"""Do a run's pose candidates hold the truth, and does its read-out pick it? (RESULTS.md
"Round 10".)

For each test view: the candidates (``eval/test/predictions.npz``) taken into the
ground-truth frame with the run's own alignment (``eval/alignment.json``); whether any lies
within 30 degrees of the true camera (also per 45-degree bin of true azimuth); on those
views, the share where the read-out pose is that nearest candidate; with 4 candidates
(one head and ``model.pose_flip_axis=twin_flip``), the nearest-against-read table over
(itself, twin, flip, flip's twin).

    python results/diagnose_candidates.py <run_dir> [<run_dir> ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from dpc.camera import camera_azel, quat_angle
from dpc.data import open_dataset
from dpc.eval.metrics import aligned_pose


def main(runs: list[str]) -> None:
    for run in runs:
        d = Path(run)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        ds = open_dataset(Path(cfg["data"]["root"]) / cfg["data"]["name"])
        gt = torch.tensor(np.asarray(ds.quats("test")), dtype=torch.float64)
        p = np.load(d / "eval/test/predictions.npz")
        A = torch.tensor(json.loads((d / "eval/alignment.json").read_text())["quat"],
                         dtype=torch.float64)  # fmt: skip
        c = torch.tensor(p["candidates"], dtype=torch.float64)  # [n, V, M, 4]
        q = torch.tensor(p["quat"], dtype=torch.float64)  # [n, V, 4] the read-out
        err = quat_angle(aligned_pose(c, A), gt[:, :, None].expand_as(c)).rad2deg()
        nearest, ok = err.argmin(-1), err.min(-1).values < 30
        read = (c - q[:, :, None]).abs().sum(-1).argmin(-1)
        right = quat_angle(aligned_pose(q, A), gt).rad2deg() < 30
        print(f"{run}: read-out within 30 deg {right.double().mean():.3f}; a candidate within "
              f"30 deg {ok.double().mean():.3f}; on those, the read-out is it "
              f"{((read == nearest) & ok).double().sum() / ok.double().sum():.3f}")  # fmt: skip
        az = torch.rad2deg(camera_azel(gt)[0]) % 360
        bins = [f"{lo}-{lo + 45}: {ok[(az >= lo) & (az < lo + 45)].double().mean():.2f}"
                for lo in range(0, 360, 45)]  # fmt: skip
        print("  a candidate within 30 deg, by true azimuth: " + ", ".join(bins))
        if c.shape[2] == 4 and cfg["model"].get("pose_flip_axis") == "twin_flip":
            t = torch.zeros(4, 4, dtype=torch.long)
            for a, b in zip(nearest[ok].tolist(), read[ok].tolist()):
                t[a, b] += 1
            names = ("itself", "twin", "flip", "flip's twin")
            print("  nearest (rows) against read (columns): " + " | ".join(
                f"{names[i]}: {t[i].tolist()}" for i in range(4)))  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
