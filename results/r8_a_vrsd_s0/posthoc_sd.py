"""A further shape refit pulling the outside points in (RESULTS.md "Round 8", not kept).

    python results/r8_a_vrsd_s0/posthoc_sd.py SRC DST W STEPS [HULL REP]

Copies run SRC to DST and runs dpc's shape refit (:func:`dpc.training.shape_refit.refit_shape`)
for STEPS more steps with ``loss.silhouette_distance_weight=W`` (and the refit's hull and
repulsion weights HULL, REP) at the training views' silhouette-chosen poses.
"""

import copy
import shutil
import sys
from pathlib import Path

import torch

from dpc.data import open_run_data
from dpc.eval.loaded_run import load_run
from dpc.runs import load_checkpoint
from dpc.training.shape_refit import refit_shape
from dpc.training.student_refit import silhouette_choice

torch.set_num_threads(1)
src, dst, w, steps = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
if dst.exists():
    shutil.rmtree(dst)
(dst / "checkpoints").mkdir(parents=True)
for f in ("config.yaml", "summary.json", "train_log.jsonl"):
    shutil.copy(src / f, dst / f)
run = load_run(src)
reader = open_run_data(run.cfg, None, run.run_dir)
cfg = copy.deepcopy(run.cfg)
cfg.loss.silhouette_distance_weight = w
cfg.loss.silhouette_distance_from_step = 0
if len(sys.argv) > 5:
    cfg.trainer.shape_refit_hull_weight = float(sys.argv[5])
if len(sys.argv) > 6:
    cfg.trainer.shape_refit_repulsion_weight = float(sys.argv[6])
choice = silhouette_choice(run.model, reader, run.renderer, run.sigma, run.image_size, "cpu")
print(refit_shape(run.model, reader, run.renderer, cfg, choice.quat, steps, "cpu", progress=False))
ck = load_checkpoint(src / "checkpoints" / "last.pt")
ck["model"] = run.model.state_dict()
torch.save(ck, dst / "checkpoints" / "last.pt")
(dst / "made_by.txt").write_text(f"posthoc_sd.py {' '.join(sys.argv[1:])}\n")
