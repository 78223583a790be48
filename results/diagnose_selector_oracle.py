"""How far can the image pick the right camera among a run's candidates? (RESULTS.md "Round 9")

A diagnostic that CHEATS on purpose (ground-truth poses of the training split), to bound
what any selector reading the image could reach; nothing here is a recipe. For the run's
trained network, every training and test view's candidates (the heads and their twins)
are scored against the truth after the run's global alignment (``eval/alignment.json``)
and rendered against the view's mask. Then a fresh selector MLP (FC 32 -> 32 -> C, as
``model.pose_selector``) is fitted on the frozen pose codes, and, separately, the pose
encoder plus a selector are fine-tuned (600 steps, batch 64, Adam 1e-4), with labels:

- ``silhouette``: the candidate whose render best matches the mask (the refit's labels);
- ``confident``: the same, on the 70% of views whose best candidate beats its twin
  partner by the widest relative margin;
- ``ORACLE``: the candidate nearest the ground truth (the cheat).

Printed: the share of test views whose picked candidate lies within 30 degrees of the
truth, beside the share with any candidate within 30 degrees.

    python results/diagnose_selector_oracle.py <run_dir>
"""

import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dpc.data import open_dataset, prepare_images, prepare_masks
from dpc.eval.metrics import pose_errors_deg
from dpc.eval.predictions import predict_split, silhouette_errors
from dpc.models.pose import _mlp
from dpc.render import build_renderer
from dpc.runs import open_run
from dpc.training.student_refit import _fit, pose_codes

run_dir = Path(sys.argv[1])
CONFIDENT_Q = 0.3  # the confident views: margin above this quantile (the top 70%)
run = open_run(run_dir)
m, cfg, st = run.model, run.cfg, run.settings
ds = open_dataset(Path(cfg.data.root) / cfg.data.name)
renderer = build_renderer(cfg)
sigma, size = st.final_sigma, st.image_size
qal = torch.tensor(
    json.loads((run_dir / "eval" / "alignment.json").read_text())["quat"], dtype=torch.float64
)


def split_data(split):
    p = predict_split(m, ds, split, size, renderer=renderer, sigma=sigma, progress=False)
    n, V = p.points.shape[:2]
    C = p.candidates.shape[2]
    pts = torch.tensor(p.points.astype(np.float32)).reshape(n * V, -1, 3)
    sc = torch.tensor(p.scale).reshape(-1).float()
    cands = torch.tensor(p.candidates).reshape(n * V, C, 4).float()
    masks = np.asarray(ds.masks(split))[:n]
    mk = prepare_masks(masks.reshape(n * V, *masks.shape[2:]), renderer.settings.vox_size)
    err = torch.cat(
        [
            silhouette_errors(
                pts[s : s + 64], sc[s : s + 64], cands[s : s + 64], mk[s : s + 64], renderer, sigma
            )
            for s in range(0, n * V, 64)
        ]
    )
    qgt = torch.tensor(np.asarray(ds.quats(split))[:n], dtype=torch.float64).reshape(n * V, 1, 4)
    perr = pose_errors_deg(cands.double(), qgt.expand(-1, C, 4), qal)
    imgs = ds.images(split)
    imgs = imgs.reshape(-1, *imgs.shape[2:])
    codes = pose_codes(m, imgs, size, "cpu")
    return codes, err, perr, C, imgs


def right(perr, pick):
    """Share of views whose picked candidate ``pick [n]`` lies within 30 degrees."""
    return float((perr.gather(1, pick[:, None])[:, 0] < 30).double().mean())


with torch.no_grad():
    ctr, etr, ptr, C, imgs_tr = split_data("train")
    cte, ete, pte, _, imgs_te = split_data("test")
M = C // 2


def pair_margin(err):
    # relative margin between the best candidate and its twin partner
    k = err.argmin(1)
    partner = (k + M) % C
    e = err.gather(1, k[:, None])[:, 0]
    ep = err.gather(1, partner[:, None])[:, 0]
    return k, ep / e.clamp_min(1e-9) - 1


k_sil, marg = pair_margin(etr)
k_or = ptr.argmin(1)
print(
    "train: silhouette label right (within 30):",
    right(ptr, k_sil),
    "oracle any:",
    float((ptr.min(1).values < 30).double().mean()),
)
print(
    "test: silhouette readout acc:",
    right(pte, ete.argmin(1)),
    "any:",
    float((pte.min(1).values < 30).double().mean()),
)


def fit_eval(codes, labels, name, seed=1):
    sel = _mlp(codes.shape[1], (32, 32), C)
    ce = torch.nn.functional.cross_entropy
    _fit(sel, codes, ce, labels, 2000, seed)
    with torch.no_grad():
        pick = sel(cte).argmax(1)
    print(f"{name}: views {len(codes)}, test acc {right(pte, pick):.3f}")


fit_eval(ctr, k_sil, "selector on silhouette labels")
fit_eval(ctr, k_or, "selector on ORACLE labels")
thr = torch.quantile(marg, CONFIDENT_Q)
confident = marg > thr
lab_right = right(ptr[confident], k_sil[confident])
print(
    f"conf q={CONFIDENT_Q}: margin>{thr:.3f} keeps {int(confident.sum())}, "
    f"label right {lab_right:.3f}"
)
fit_eval(
    ctr[confident], k_sil[confident], f"selector on confident silhouette labels q={CONFIDENT_Q}"
)


def run_ft(labels, keep, name, steps=600, seed=0):
    enc = copy.deepcopy(m.encoder)
    enc.train()
    sel = _mlp(ctr.shape[1], (32, 32), C)
    opt = torch.optim.Adam(list(enc.parameters()) + list(sel.parameters()), 1e-4)
    idx_all = torch.nonzero(keep)[:, 0]
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = idx_all[torch.randint(0, len(idx_all), (64,), generator=g)]
        x = prepare_images(imgs_tr[i.numpy()], size)
        code = enc(x)[1]
        loss = torch.nn.functional.cross_entropy(sel(code), labels[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        picks = []
        for s in range(0, len(imgs_te), 64):
            picks.append(sel(enc(prepare_images(imgs_te[s : s + 64], size))[1]).argmax(1))
        pick = torch.cat(picks)
    print(f"{name}: train views {int(keep.sum())}, test acc {right(pte, pick):.3f}", flush=True)


allv = torch.ones(len(k_or), dtype=torch.bool)
run_ft(k_or, allv, "finetune ORACLE labels")
run_ft(k_sil, allv, "finetune silhouette labels")
run_ft(k_sil, confident, f"finetune confident silhouette labels q={CONFIDENT_Q}")
