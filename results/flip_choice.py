"""Whether a run's clouds tell a car's front from its back (RESULTS.md "Round 4").

    python results/flip_choice.py <run dir> <evaluation folder>

On the test split, each view's pose chosen by silhouette (the candidate whose render of
the view's own predicted cloud best matches the view's mask, ``dpc.evaluate
pose_from=silhouette``) among the run's M candidates, and among the 2M poses made of the
candidates and their front/back flips (:func:`dpc.camera.with_flipped_candidates`, both
flip axes). Printed: the share of views right (< 30 deg) and flipped (> 150 deg) under the
paper's alignment of ``<evaluation folder>/alignment.json`` (the run's ``dpc.evaluate``
output). A test-time diagnostic: it reads the input's mask.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dpc.camera import with_flipped_candidates
from dpc.data import open_run_data
from dpc.eval.loaded_run import load_run
from dpc.eval.metrics import pose_errors_deg
from dpc.eval.predictions import Predictions, choose_by_silhouette, predict_split


def main(run_dir: str, eval_dir: str) -> None:
    run = load_run(run_dir, "cpu")
    reader = open_run_data(run.cfg, None, run.run_dir)
    pred = predict_split(run.model, reader, "test", run.image_size, renderer=run.renderer,
                         sigma=run.sigma, progress=False, pose_from="silhouette")  # fmt: skip
    q_align = json.loads((Path(eval_dir) / "alignment.json").read_text())["quat"]
    q_align = torch.tensor(q_align, dtype=torch.float64)
    gt = torch.from_numpy(reader.quats("test")[: len(pred.quat)]).double().reshape(-1, 4)

    def shares(q) -> str:
        q = torch.from_numpy(q).double().reshape(-1, 4)
        e = pose_errors_deg(q, gt, q_align).numpy()
        return f"right {(e < 30).mean():.3f}, flipped {(e > 150).mean():.3f}"

    print(f"{run_dir}: among the {pred.candidates.shape[2]} candidates: {shares(pred.quat)}")
    masks = reader.masks("test")
    for axis in ("camera", "object"):
        both = with_flipped_candidates(torch.from_numpy(pred.candidates), axis).numpy()
        p2 = Predictions(pred.points, pred.scale, pred.quat, both, pred.object_ids, "test")
        q2 = choose_by_silhouette(p2, masks, run.renderer, run.sigma)
        print(f"  with their flips ({axis} axis): {shares(q2)}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
