"""Which airplanes does a run see turned front to back as a whole, and what does that
cost? (RESULTS.md "Round 11")

For each object of the test split (and with ``--train`` of the training split), every
view's read pose is taken into the ground-truth frame by the run's test alignment
(``eval/alignment.json``) and compared with the truth and its three confusions of a
left-right symmetric object (``dpc.camera``): the twin ``(180 - az, -el)``, the flip
``(az + 180, el)`` and the flip's twin ``(-az, -el)``. Printed per object: the share of
views within 30 degrees, and how many views lie within 30 degrees of each of the four.

An object whose views all sit on its flip is seen turned front to back as a whole: its
cloud turned half a turn about the vertical, with every camera turned along, renders
exactly the same silhouettes (perspective included), so no silhouette loss can tell; only
what the network shares across objects picks the object's frame. With ``--train`` the
script also prints the skewness along the length axis of each training object's
ground-truth cloud (``E[x^3] / E[x^2]^1.5``, x centred: where the bulk of the mass sits
along the fuselage) for the objects seen turned and for the rest, and for the clouds the
run predicts, and how much farther from the other training objects (Chamfer) each
ground-truth cloud gets when turned. It also prints a cue that does not follow the mass:
the correlation of height with length (``E[x y] / (std x std y)``, y up: on which end the
tall parts, the fins, sit), for the ground-truth clouds and for the predicted clouds taken
into the ground-truth frame by the alignment (a faithful cloud of an object seen turned
has it with the other sign).

With ``--bound`` (needs ``--train``; cheats on purpose, a diagnostic): a fresh selector
(FC 32 -> 32 -> C, as ``model.pose_selector``) is fitted on the frozen pose codes of the
training views, once with the candidate nearest the truth as label, once with the
candidate nearest the truth *as the run orients each object* (the truth, or for objects
seen turned, the truth turned): a perfect choice among a view's forms that leaves each
object's front/back where the run put it, the most any silhouette-only choice could do
with these objects turned. Printed: the test share within 30 degrees of each.

    python results/diagnose_object_flips.py <run_dir> [--train] [--bound]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from dpc.camera import flip_upright, quat_angle, silhouette_twin
from dpc.eval.metrics import align_points, aligned_pose
from dpc.eval.predictions import predict_split
from dpc.render import build_renderer
from dpc.runs import open_run
from dpc.training.loop import open_data
from dpc.training.student_refit import _fit, pose_codes

FORMS = ("self", "twin", "flip", "flip-twin")


def forms_of(gt: torch.Tensor) -> list[torch.Tensor]:
    """The truth ``[..., 4]`` and its three confusions, in :data:`FORMS`' order."""
    f = flip_upright(gt)
    return [gt, silhouette_twin(gt), f, silhouette_twin(f)]


def form_errors(q_aligned: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` degrees from the aligned poses ``[..., 4]`` to each form of the truth."""
    return torch.stack([quat_angle(q_aligned, f).rad2deg() for f in forms_of(gt)], -1)


def turned(err: torch.Tensor) -> torch.Tensor:
    """``[n]`` bool: objects (``err [n, V, 4]``) most of whose views within 30 degrees of a
    form sit on the flip or the flip's twin (seen front to back as a whole)."""
    near, ok = err.argmin(-1), err.min(-1).values < 30
    back = ((near >= 2) & ok).sum(1)
    front = ((near < 2) & ok).sum(1)
    return back > front


def table(split: str, err: torch.Tensor) -> None:
    near, ok = err.argmin(-1), err.min(-1).values < 30
    acc = (err[..., 0] < 30).double()
    print(f"{split}: pose within 30 deg {float(acc.mean()):.3f} over {acc.numel()} views; "
          f"per object: share right, then views near {' / '.join(FORMS)}")  # fmt: skip
    for o in range(err.shape[0]):
        counts = "/".join(str(int(((near[o] == k) & ok[o]).sum())) for k in range(4))
        print(f"  object {o:3d}: {float(acc[o].mean()):.2f}  {counts}")
    t = turned(err)
    rest = acc[~t].mean() if (~t).any() else float("nan")
    print(f"  seen front to back as a whole: {int(t.sum())} of {len(t)} objects "
          f"({[int(i) for i in torch.nonzero(t)[:, 0]]}); the other objects' views right: "
          f"{float(rest):.3f}")  # fmt: skip


def skew_x(points: torch.Tensor) -> torch.Tensor:
    """``[...]``: skewness along x of clouds ``[..., N, 3]``."""
    x = points[..., 0] - points[..., 0].mean(-1, keepdim=True)
    return x.pow(3).mean(-1) / x.pow(2).mean(-1).pow(1.5).clamp_min(1e-12)


def height_length_corr(points: torch.Tensor) -> torch.Tensor:
    """``[...]``: correlation of x (length) with y (up) over clouds ``[..., N, 3]``."""
    c = points - points.mean(-2, keepdim=True)
    x, y = c[..., 0], c[..., 1]
    return (x * y).mean(-1) / (x.pow(2).mean(-1) * y.pow(2).mean(-1)).sqrt().clamp_min(1e-12)


def turn_ratio(clouds: torch.Tensor, points: int = 1500, seed: int = 0) -> torch.Tensor:
    """``[n]``: for clouds ``[n, P, 3]`` (y up), the summed Chamfer distance of each cloud
    turned half a turn about y to all the clouds, over the same for the cloud as it is
    (< 1: turned, it looks more like the others)."""
    g = torch.Generator().manual_seed(seed)
    c = clouds[:, torch.randperm(clouds.shape[1], generator=g)[:points]]
    turn = torch.tensor([-1.0, 1.0, -1.0], dtype=c.dtype)

    def chamfer_to_all(x):  # [P, 3] -> summed over the n clouds
        d = torch.cdist(x[None].expand(len(c), -1, -1), c)
        return float((d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)).sum())

    return torch.tensor([chamfer_to_all(x * turn) / chamfer_to_all(x) for x in c])


def main(argv: list[str]) -> None:
    torch.set_num_threads(2)
    run_dir = Path(argv[0])
    run = open_run(run_dir)
    reader = open_data(run.cfg, True, 1)
    renderer, sigma = build_renderer(run.cfg), run.settings.final_sigma
    A = torch.tensor(json.loads((run_dir / "eval" / "alignment.json").read_text())["quat"],
                     dtype=torch.float64)  # fmt: skip
    preds = {}
    for split in ("test", "train") if "--train" in argv else ("test",):
        p = predict_split(run.model, reader, split, run.settings.image_size, renderer=renderer,
                          sigma=sigma, progress=False)  # fmt: skip
        gt = torch.tensor(np.asarray(reader.quats(split)), dtype=torch.float64)
        err = form_errors(aligned_pose(torch.tensor(p.quat, dtype=torch.float64), A), gt)
        table(split, err)
        preds[split] = (p, gt, err)
    if "--train" not in argv:
        return
    p, gt, err = preds["train"]
    t = turned(err)
    gt_points = torch.tensor(np.asarray(reader.gt_points("train")), dtype=torch.float64)
    s_gt = skew_x(gt_points)
    s_pred = skew_x(torch.tensor(p.points, dtype=torch.float64)).mean(1)
    for name, s in (("ground-truth clouds", s_gt), ("predicted clouds (model frame)", s_pred)):
        a, b = s[t], s[~t]
        print(f"skewness along x, {name}: objects seen turned: median {float(a.median()):+.2f}, "
              f"share > 0 {float((a > 0).double().mean()):.2f}; the rest: median "
              f"{float(b.median()):+.2f}, share > 0 {float((b > 0).double().mean()):.2f}")
    n, V = p.points.shape[:2]
    aligned = align_points(torch.tensor(p.points, dtype=torch.float64).flatten(0, 1), A)
    c_pred = height_length_corr(aligned).reshape(n, V).mean(1)
    c_gt = height_length_corr(gt_points)
    major = torch.sign(c_gt.median())
    for name, c in (("ground-truth clouds", c_gt),
                    ("predicted clouds (ground-truth frame)", c_pred)):  # fmt: skip
        a, b = (torch.sign(c[t]) == major).double(), (torch.sign(c[~t]) == major).double()
        print(f"height-length correlation, {name}: the ground truth's majority sign on "
              f"{float(a.mean()):.2f} of the objects seen turned (median "
              f"{float(c[t].median()):+.2f}), {float(b.mean()):.2f} of the rest (median "
              f"{float(c[~t].median()):+.2f})")  # fmt: skip
    ratio = turn_ratio(gt_points.float())
    print(f"ground-truth clouds turned about the vertical, summed Chamfer distance to the other "
          f"training objects over their own: objects seen turned {float(ratio[t].min()):.2f}-"
          f"{float(ratio[t].max()):.2f} (median {float(ratio[t].median()):.2f}); the rest "
          f"{float(ratio[~t].min()):.2f}-{float(ratio[~t].max()):.2f} (median "
          f"{float(ratio[~t].median()):.2f})")  # fmt: skip
    if "--bound" not in argv:
        return
    pt, gtt, _ = preds["test"]

    def codes_and_errors(pr, g, split):
        imgs = reader.images(split)
        codes = pose_codes(run.model, imgs.reshape(-1, *imgs.shape[2:]), run.settings.image_size,
                           "cpu")  # fmt: skip
        c = torch.tensor(pr.candidates, dtype=torch.float64)  # [n, V, C, 4]
        cerr = quat_angle(aligned_pose(c, A), g[:, :, None].expand_as(c)).rad2deg()
        return codes, c, cerr.reshape(-1, c.shape[2])

    ctr, cand_tr, etr = codes_and_errors(p, gt, "train")
    cte, _, ete = codes_and_errors(pt, gtt, "test")
    C = etr.shape[1]
    g_turned = torch.where(t[:, None, None], flip_upright(gt), gt)  # the run's orientation
    e_turned = quat_angle(aligned_pose(cand_tr, A), g_turned[:, :, None].expand_as(cand_tr))
    from dpc.models.pose import _mlp

    held = float((ete.min(1).values < 30).double().mean())
    print(f"test: a candidate within 30 deg for {held:.3f}")
    as_oriented = e_turned.rad2deg().reshape(-1, C).argmin(1)
    for name, labels in (("truth", etr.argmin(1)),
                         ("truth as the run orients each object", as_oriented)):  # fmt: skip
        sel = _mlp(ctr.shape[1], (32, 32), C)
        _fit(sel, ctr, torch.nn.functional.cross_entropy, labels, 2000, 1)
        with torch.no_grad():
            pick = sel(cte).argmax(1)
        right = float((ete.gather(1, pick[:, None])[:, 0] < 30).double().mean())
        print(f"selector on frozen codes, labels = {name}: test {right:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
