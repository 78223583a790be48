"""Do the student refit's targets get better when an object's other views vote? (RESULTS.md
"Round 10", tried and not kept.)

The refit (dpc/training/student_refit.py) labels each training view with the candidate
whose render of the view's own predicted cloud best matches its mask. Here the clouds
predicted from ``others`` further views of the same object are rendered at the view's
candidates too, and the errors summed. The script scores both label sets against the
ground truth (a diagnostic: the share of views, among those with a candidate within 30
degrees of the truth, labelled with that nearest candidate; the run's own test alignment
maps its frame to the data set's), and, per ``others``, prints the same.

    python results/diagnose_refit_labels.py <run_dir> 1 3 8 19   # needs eval/alignment.json

(A refit from these labels was also run on `airplane_quick_twin_flip` seed 0 with 3
views: validation pose 0.692 against 0.688.)
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from dpc.camera import quat_angle
from dpc.eval.metrics import aligned_pose
from dpc.render import build_renderer
from dpc.runs import open_run
from dpc.training.loop import open_data
from dpc.training.student_refit import silhouette_choice


@torch.no_grad()
def multiview_choice(pred, masks, renderer, sigma: float, others: int, device="cpu",
                     progress: bool = True) -> torch.Tensor:  # fmt: skip
    """Per training view ``j``, the
    candidate ``k`` minimising the summed silhouette errors against ``j``'s mask of the
    clouds predicted from ``j`` and from ``others`` further views of the same object (the
    next ones, cyclically), each rendered at ``j``'s candidate ``k``. One view's cloud is
    a guess; the object's other views give more guesses of the same shape, so the choice
    rests less on one guess's errors. Training views only: test time reads one image.

    Args:
        pred: :func:`silhouette_choice`'s predictions (``points [n, V, N, 3]``, ``scale
            [n, V]``, ``candidates [n, V, M, 4]``).
        masks: ``[n, V, H, W]`` the training masks (uint8).
    Returns ``quat [n, V, 4]``, the chosen candidates.
    """
    from tqdm import tqdm

    from dpc.data import prepare_masks
    from dpc.eval.predictions import silhouette_errors

    n, V = pred.points.shape[:2]
    k = int(others)
    if not 1 <= k < V:
        raise ValueError(f"others must be in [1, {V - 1}] (the data set "
                         f"has {V} views per object), got {others}")  # fmt: skip
    G = renderer.settings.vox_size
    cands = torch.from_numpy(pred.candidates).to(device)  # [n, V, M, 4]
    out = torch.empty(n, V, 4)
    j = torch.arange(V).repeat_interleave(k + 1)  # the judged view, once per cloud
    i = (j + torch.arange(k + 1).repeat(V)) % V  # the view each cloud comes from
    for o in tqdm(range(n), desc="multi-view choice", unit="object",
                  disable=None if progress else True):  # fmt: skip
        pts = torch.from_numpy(pred.points[o]).to(device)[i]
        scale = torch.from_numpy(pred.scale[o]).to(device)[i]
        m = prepare_masks(masks[o], G).to(device)[j]
        err = silhouette_errors(pts, scale, cands[o][j], m, renderer, sigma)  # [V (k+1), M]
        best = err.view(V, k + 1, -1).sum(1).argmin(1)
        out[o] = cands[o][torch.arange(V), best].cpu()
    return out


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    run = open_run(argv[0])
    reader, renderer = open_data(run.cfg, True, 1), build_renderer(run.cfg)
    sigma = run.settings.final_sigma
    pred = silhouette_choice(run.model, reader, renderer, sigma, run.settings.image_size,
                             progress=False)  # fmt: skip
    gt = torch.tensor(np.asarray(reader.quats("train")), dtype=torch.float64)
    with open(f"{argv[0]}/eval/alignment.json") as f:
        A = torch.tensor(json.load(f)["quat"], dtype=torch.float64)
    c = torch.tensor(pred.candidates, dtype=torch.float64)
    err = quat_angle(aligned_pose(c, A), gt[:, :, None].expand_as(c)).rad2deg()
    nearest, ok = err.argmin(-1), err.min(-1).values < 30

    def score(q) -> str:
        q = torch.as_tensor(q, dtype=torch.float64)
        idx = (c - q[:, :, None]).abs().sum(-1).argmin(-1)
        right = ((idx == nearest) & ok).double().sum() / ok.double().sum()
        within = (quat_angle(aligned_pose(q, A), gt).rad2deg() < 30).double().mean()
        return f"nearest candidate labelled {right:.3f}, label within 30 deg {within:.3f}"

    print(f"{argv[0]}: a candidate within 30 deg for {ok.double().mean():.3f} of "
          f"{ok.numel()} training views")  # fmt: skip
    print(f"  own cloud only: {score(pred.quat)}")
    for k in (int(x) for x in argv[1:]):
        q = multiview_choice(pred, reader.masks("train"), renderer, sigma, k, progress=False)
        print(f"  + {k} further views: {score(q)}")


if __name__ == "__main__":
    main(sys.argv[1:])
