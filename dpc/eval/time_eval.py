"""Time the evaluation at the default car scale on random data:
``python -m dpc.eval.time_eval [objects=200] [val_objects=30]`` (configs/time_eval.yaml).

200 test objects x 5 views, 128 px images, an untrained paper-size ``DPCModel`` (8000
points), 8000 ground-truth points. Prediction uses the network; scoring and the ICP
alignment use spread-out clouds (the ground truth plus 1 cm noise, rotated for the
alignment), because an untrained network's tight blobs are an unrealistically slow case
for the KD-tree.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from dpc.camera import random_quat
from dpc.cli import run_command
from dpc.data import ArrayDataset
from dpc.eval.alignment import estimate_global_alignment
from dpc.eval.predictions import predict_split
from dpc.eval.score import score
from dpc.models import DPCModel


def run(opts) -> None:
    """Time prediction, scoring and the alignment (the command's body)."""
    n, n_val = int(opts.objects), int(opts.val_objects)
    V, rng = 5, np.random.default_rng(0)

    def split(k):
        return {
            "images": rng.integers(0, 255, (k, V, 128, 128, 3), dtype=np.uint8),
            "masks": rng.integers(0, 255, (k, V, 128, 128), dtype=np.uint8),
            "quats": random_quat(k * V).view(k, V, 4).numpy(),
            "points": rng.uniform(-0.4, 0.4, (k, 8000, 3)).astype(np.float32),
            "depths": None,
        }

    reader = ArrayDataset({"test": split(n), "val": split(n_val)})
    model = DPCModel(image_size=128).eval()
    print(f"torch threads {torch.get_num_threads()}")
    t = time.perf_counter()
    p = predict_split(model, reader, "test", 128, progress=False)
    print(f"predict {n * V} views: {time.perf_counter() - t:.1f} s")
    gt = reader.gt_points("test")
    p.points = (gt[:, None] + rng.normal(0, 0.01, (n, V, 8000, 3))).astype(np.float32)
    t = time.perf_counter()
    score(p, gt, reader.quats("test"), None)
    print(f"score {n * V} views (Chamfer 8000 x 8000 both ways): {time.perf_counter() - t:.1f} s")
    gv = reader.gt_points("val")
    pv = (gv[:, None] + rng.normal(0, 0.01, (n_val, V, 8000, 3))).astype(np.float32)
    t = time.perf_counter()
    estimate_global_alignment(pv, reader.quats("val"), gv, reader.quats("val"))
    print(f"alignment ICP {n_val} objects x {V} views: {time.perf_counter() - t:.1f} s")


def main(argv=None) -> None:
    """``python -m dpc.eval.time_eval [key=value ...]``."""
    run_command("time_eval", run, argv, prog="dpc.eval.time_eval")


if __name__ == "__main__":
    main()
