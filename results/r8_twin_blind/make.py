"""twin_blind_test.json: dpc.eval.pose_ambiguity.twin_blind_accuracy on each built-in data
set's test cameras, with the elevation range from the data set's manifest (the figures
``python -m dpc.eval.pose_ambiguity dataset=data/<set>`` prints as ``twin_blind``).

    python results/r8_twin_blind/make.py
"""

import json
from pathlib import Path

import numpy as np

from dpc.data import open_dataset
from dpc.eval.pose_ambiguity import twin_blind_accuracy

HERE = Path(__file__).resolve().parent
out = {}
for name in ("airplane_views20", "car_small", "chair_small"):
    ds = open_dataset(HERE.parents[1] / "data" / name)
    st = ds.manifest["settings"]
    rng = (st["elevation_min"], st["elevation_max"])
    out[name] = twin_blind_accuracy(np.asarray(ds.quats("test")), rng)
(HERE / "twin_blind_test.json").write_text(json.dumps(out, indent=1) + "\n")
