"""Does reading the pose from the image and its mirror together help? (RESULTS.md "Round 11",
tried and not kept)

A read-out probe on a trained run with a fitted selector (``model.pose_selector``) and
``model.pose_silhouette_weight`` w: each view's image and mask are also fed mirrored left
to right. For a left-right symmetric object the mirrored image is the view from
``(-az, el)``, so each candidate ``k`` of the image is matched to the mirrored input's
candidate nearest its mirror ``(-az, el)``, and the two inputs' scores are added:
``log softmax(logits)_k - w (E_k / min E - 1)`` for the image, the same for the mirror.
Printed: the share of views within 30 degrees, under the run's test alignment
(``eval/alignment.json``, not re-estimated), for the selector alone, the silhouettes
alone and both (the run's read-out), each from the image alone and with its mirror.

    python results/diagnose_mirror_readout.py <run_dir> [split]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from dpc.camera import quat_angle
from dpc.data import prepare_images, prepare_masks
from dpc.eval.metrics import aligned_pose
from dpc.eval.predictions import mirror_match, relative_errors, silhouette_errors
from dpc.render import build_renderer
from dpc.runs import open_run
from dpc.training.loop import open_data


def scores(model, x, masks, renderer, sigma):
    """Candidates ``[B, M, 4]``, selector log-probabilities ``[B, M]`` and relative
    silhouette errors ``E / min E`` ``[B, M]`` of images ``x`` and masks ``[B, G, G]``."""
    out = model(x)
    e = silhouette_errors(out.points, out.scale, out.pose_candidates, masks, renderer, sigma)
    return out.pose_candidates, torch.log_softmax(out.selector_logits, 1), relative_errors(e)


@torch.no_grad()
def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    run_dir, split = Path(argv[0]), (argv[1] if len(argv) > 1 else "test")
    run = open_run(run_dir)
    model = run.model.eval()
    if model.pose_selector is None or not float(model.pose_silhouette_weight) > 0:
        raise SystemExit(f"{run_dir}: needs model.pose_selector and pose_silhouette_weight > 0")
    reader = open_data(run.cfg, True, 1)
    renderer, sigma = build_renderer(run.cfg), run.settings.final_sigma
    size = run.settings.image_size
    A = torch.tensor(json.loads((run_dir / "eval" / "alignment.json").read_text())["quat"],
                     dtype=torch.float64)  # fmt: skip
    w = float(model.pose_silhouette_weight)
    imgs, masks = np.asarray(reader.images(split)), np.asarray(reader.masks(split))
    gt = torch.tensor(np.asarray(reader.quats(split)), dtype=torch.float64).reshape(-1, 4)
    imgs, masks = imgs.reshape(-1, *imgs.shape[2:]), masks.reshape(-1, *masks.shape[2:])
    G = renderer.settings.vox_size
    picks: dict[str, list[torch.Tensor]] = {}
    for s in range(0, len(imgs), 32):
        x, m = prepare_images(imgs[s : s + 32], size), prepare_masks(masks[s : s + 32], G)
        c, ls, rel = scores(model, x, m, renderer, sigma)
        c2, ls2, rel2 = scores(model, x.flip(-1), m.flip(-1), renderer, sigma)
        j = mirror_match(c, c2)  # [B, M] the mirrored input's candidate for each
        ls2, rel2 = ls2.gather(1, j), rel2.gather(1, j)
        both, both2 = ls - w * (rel - 1), ls2 - w * (rel2 - 1)
        reads = {"selector": ls, "selector + mirror": ls + ls2, "silhouettes": -rel,
                 "silhouettes + mirror": -rel - rel2, "both (the run's read-out)": both,
                 "both + mirror": both + both2}  # fmt: skip
        for name, sc in reads.items():
            picks.setdefault(name, []).append(c[torch.arange(len(c)), sc.argmax(1)])
    for name, q in picks.items():
        err = quat_angle(aligned_pose(torch.cat(q).double(), A), gt).rad2deg()
        print(f"{run_dir.name} {split}: {name:26s} {float((err < 30).double().mean()):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
