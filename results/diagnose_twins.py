"""Per-view pose against the symmetric twin (RESULTS.md "Round 7", docs/eval.md "Can
silhouettes tell the pose?").

    python results/diagnose_twins.py results/r5_a_cap_s0 [...]   # from evaluation files

For each evaluation folder (``poses_test.npz``: the predicted poses after the paper's
alignment) and its data set's true cameras at azimuth ``az = atan2(z, x)`` and elevation
``el``: the share of views right (< 30 deg), right up to the twin ``(180 - az, -el)``
(the pose whose silhouette equals the true one for an object mirror-symmetric across
z = 0 under an orthographic camera), right up to the twin or the front/back flip, the
share of views nearer their twin than their truth, and the correlation of the predicted
elevation with the true one on the views nearer the truth (and with minus the true one
on the views nearer the twin).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "results"))


def twins(folder: Path) -> dict:
    from diagnose_flips import _dataset

    from dpc.camera import silhouette_twin, view_quat
    from dpc.eval.metrics import pose_errors_deg
    from dpc.eval.pose_ambiguity import azimuth_elevation

    ds = _dataset(folder)
    qp = torch.from_numpy(np.load(folder / "poses_test.npz")["quat_aligned"]).double()
    qp = qp.reshape(-1, 4)
    qt = torch.from_numpy(np.array(ds.quats("test"))).double().reshape(-1, 4)[: len(qp)]
    az, el = azimuth_elevation(qt)
    e = pose_errors_deg(qp, qt).numpy()
    e_twin = pose_errors_deg(qp, silhouette_twin(qt)).numpy()
    e_flip = pose_errors_deg(qp, view_quat(az + np.pi, el)).numpy()
    _, elp = azimuth_elevation(qp)
    elp, el = elp.numpy(), el.numpy()
    tw = e_twin < e
    return {
        "views": len(e),
        "right": float((e < 30).mean()),
        "right_up_to_twin": float((np.minimum(e, e_twin) < 30).mean()),
        "right_up_to_twin_or_flip": float((np.minimum(np.minimum(e, e_twin), e_flip) < 30).mean()),
        "nearer_twin": float(tw.mean()),
        "elevation_corr_nearer_truth": float(np.corrcoef(elp[~tw], el[~tw])[0, 1]),
        "elevation_corr_nearer_twin_with_minus_el": float(np.corrcoef(elp[tw], -el[tw])[0, 1]),
    }


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for f in sys.argv[1:]:
        r = twins(Path(f))
        print(f"{Path(f).name}: " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
