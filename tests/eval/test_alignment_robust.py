"""Known answers for the flip-robust alignment and the pose report (dpc.eval.pose_report):
synthetic predictions with a known global rotation and a known share of front/back-flipped
views (a 180 degree turn about the object's up axis, +y)."""

import warnings

import numpy as np
import pytest
import torch

from dpc.camera import quat_from_axis_angle, quat_mul, quat_rotate, random_quat
from dpc.eval.alignment import estimate_global_alignment
from dpc.eval.pose_report import (
    FLIP_QUAT,
    AlignmentAmbiguityWarning,
    angles_deg,
    pose_figures,
    pose_report,
    robust_alignment,
)

# the front/back flip, built here independently of the module: 180 degrees about +y (up)
F_TEST = quat_from_axis_angle(
    torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), torch.tensor(np.pi, dtype=torch.float64)
)
Q_A = quat_from_axis_angle(
    torch.tensor([0.3, -1.0, 0.5], dtype=torch.float64), torch.tensor(2.2, dtype=torch.float64)
)


def _noise(n, deg, g):
    """``n`` random rotations of exactly ``deg`` degrees about random axes."""
    axis = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return quat_from_axis_angle(axis, torch.full((n,), np.radians(deg), dtype=torch.float64))


def _poses(n_obj, V, flip_share, seed, noise_deg=4.0):
    """q_pred = q_gt F^b q_a n (n: a small rotation); exactly round(flip_share * K) views
    flipped. Returns q_pred, q_gt ``[n_obj, V, 4]`` and the flip mask ``[n_obj, V]``."""
    g = torch.Generator().manual_seed(seed)
    K = n_obj * V
    q_gt = random_quat(K, g, torch.float64)
    flip = np.zeros(K, bool)
    flip[np.random.default_rng(seed).choice(K, int(round(flip_share * K)), replace=False)] = True
    F = F_TEST
    fq = torch.where(torch.from_numpy(flip)[:, None], F.expand(K, 4), torch.tensor([1.0, 0, 0, 0]))
    # the noise is applied in the GT frame: q_gt n F^b q_a
    q_pred = quat_mul(quat_mul(q_gt, _noise(K, noise_deg, g)), quat_mul(fq, Q_A.expand(K, 4)))
    return (
        q_pred.view(n_obj, V, 4).numpy(),
        q_gt.view(n_obj, V, 4).numpy(),
        flip.reshape(n_obj, V),
    )


def _deg_to_qa(q):
    return float(angles_deg(np.asarray(q, np.float64)[None], Q_A.numpy()[None])[0, 0])


@pytest.mark.parametrize("share", [0.1, 0.3])
def test_robust_recovers_rotation_and_flip_share(share):
    qp, qg, flip = _poses(40, 5, share, seed=1)
    qp_t, qg_t, flip_t = _poses(30, 5, share, seed=2)
    rob = robust_alignment(qp, qg)
    assert _deg_to_qa(rob["quat"]) < 3.0
    assert rob["support"] == int((~flip).sum())
    assert rob["second_support"] == int(flip.sum())
    assert rob["second_is_flip"]
    fig = pose_figures(qp_t, qg_t, rob["quat"])
    assert fig["flipped_share"] == pytest.approx(flip_t.mean())
    assert fig["accuracy"] == pytest.approx(1 - flip_t.mean())
    assert fig["accuracy_up_to_flip"] == 1.0
    # under the flipped alignment the roles swap
    fq = quat_mul(F_TEST, Q_A).numpy()
    fig2 = pose_figures(qp_t, qg_t, fq)
    assert fig2["accuracy"] == pytest.approx(flip_t.mean())
    assert fig2["accuracy_up_to_flip"] == 1.0


def test_views_read_as_their_silhouette_twin():
    """A known share of views predicted at their twin (the view from (180 - az, -el), built
    here from azimuth and elevation) under a known alignment: twin_share is that share,
    accuracy the rest, accuracy_up_to_twin 1; the flip does not absorb them."""
    import math

    from dpc.camera import view_quat

    g = torch.Generator().manual_seed(5)
    K = 200
    az = torch.rand(K, generator=g, dtype=torch.float64) * 2 * math.pi
    # elevations 15-40 degrees either way: the twin is far from the truth and the flip
    el = torch.sign(torch.rand(K, generator=g) - 0.5).double() * (
        math.radians(15) + torch.rand(K, generator=g, dtype=torch.float64) * math.radians(25)
    )
    q_gt = view_quat(az, el)
    twin = np.zeros(K, bool)
    twin[np.random.default_rng(5).choice(K, 60, replace=False)] = True
    tw = torch.from_numpy(twin)
    read = torch.where(tw[:, None], view_quat(math.pi - az, -el), q_gt)
    q_pred = quat_mul(read, Q_A.expand(K, 4))  # the model's frame: q_gt q_a
    fig = pose_figures(q_pred.numpy(), q_gt.numpy(), Q_A.numpy())
    assert fig["accuracy"] == pytest.approx(0.7)
    assert fig["twin_share"] == pytest.approx(0.3)
    assert fig["accuracy_up_to_twin"] == 1.0
    assert fig["accuracy_up_to_flip"] < 0.8


def test_flip_is_a_turn_about_the_up_axis():
    """The module's flip turns a car's nose (along -x, y up) to +x and keeps the roof up."""
    assert angles_deg(FLIP_QUAT[None], F_TEST.numpy()[None])[0, 0] < 1e-6
    p = torch.tensor([[[-0.5, 0.0, 0.0], [0.0, 0.3, 0.0]]], dtype=torch.float64)
    out = quat_rotate(torch.from_numpy(FLIP_QUAT)[None], p)[0].numpy()
    np.testing.assert_allclose(out, [[0.5, 0, 0], [0, 0.3, 0]], atol=1e-12)


def _symmetric_clouds(n_obj, N, seed):
    """Boxes of distinct extents (symmetric under the front/back flip), [n_obj, 2N, 3]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_obj):
        ext = np.array([0.45, 0.15, 0.25]) * rng.uniform(0.8, 1.2, 3)
        p = rng.uniform(-1, 1, (N, 3)) * ext
        ax = rng.integers(0, 3, N)
        p[np.arange(N), ax] = np.sign(p[np.arange(N), ax]) * ext[ax]  # onto the surface
        out.append(np.concatenate([p, p * np.array([-1.0, 1.0, -1.0])]))  # flip-symmetric
    return np.stack(out).astype(np.float32)


def test_paper_protocol_and_robust_agree_on_known_answer():
    """The paper's ICP + Markley alignment also recovers q_a and the flip share when the
    majority of views is right (80/20), and pose_report records both and what it fitted on."""
    n_obj, V = 16, 4
    qp, qg, flip = _poses(n_obj, V, 0.2, seed=3)
    qp_t, qg_t, flip_t = _poses(20, V, 0.2, seed=4)
    gt = _symmetric_clouds(n_obj, 300, seed=5)
    # the predicted clouds are the GT clouds in the model frame: q_a^-1 P q_a
    qa_inv = Q_A * torch.tensor([1.0, -1, -1, -1], dtype=torch.float64)
    pts = quat_rotate(qa_inv.expand(n_obj, 4), torch.from_numpy(gt).double()).float().numpy()
    pts = np.repeat(pts[:, None], V, 1)  # [n_obj, V, N, 3]
    al = estimate_global_alignment(pts, qp, gt, qg, num_objects=15)
    assert _deg_to_qa(al.quat) < 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlignmentAmbiguityWarning)  # 80/20: no warning
        rep = pose_report(
            qp,
            qg,
            qp_t,
            qg_t,
            fit_points=pts,
            fit_gt_points=gt,
            fit_subset="val[:16]",
            eval_subset="test[:20]",
        )
    assert rep["fit"] == {"subset": "val[:16]", "num_views": n_obj * V}
    assert rep["eval"] == {"subset": "test[:20]", "num_views": 20 * V}
    for name in ("paper", "robust"):
        assert _deg_to_qa(rep[name]["quat"]) < 3.0
        assert rep[name]["flipped_share"] == pytest.approx(flip_t.mean())
        assert rep[name]["accuracy"] == pytest.approx(1 - flip_t.mean())
        assert rep[name]["accuracy_up_to_flip"] == 1.0
    assert rep["paper_mode"] == "first" and not rep["ambiguity"]["ambiguous"]
    assert rep["warnings"] == []


def test_ambiguity_fires_near_50_50_not_at_90_10():
    qp, qg, _ = _poses(30, 5, 0.48, seed=6)
    with pytest.warns(AlignmentAmbiguityWarning, match="AMBIGUOUS"):
        rep = pose_report(qp, qg, qp, qg, fit_subset="val")
    a = rep["ambiguity"]
    assert a["ambiguous"] and a["second_is_flip"] and a["ratio"] > 0.8
    assert a["separation_deg"] == pytest.approx(180, abs=5)
    assert rep["robust"]["accuracy_up_to_flip"] == 1.0
    qp, qg, _ = _poses(30, 5, 0.1, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlignmentAmbiguityWarning)
        rep = pose_report(qp, qg, qp, qg)
    assert not rep["ambiguity"]["ambiguous"] and rep["warnings"] == []
    assert rep["ambiguity"]["ratio"] == pytest.approx(15 / 135)


def test_paper_alignment_in_minority_mode_is_reported():
    """70/30 with the paper's alignment in the flipped (minority) mode, as measured on real
    car runs: the report says so and both accuracies differ by the flip share."""
    qp, qg, flip = _poses(20, 5, 0.3, seed=8)
    paper_q = quat_mul(F_TEST, Q_A).numpy()
    with pytest.warns(AlignmentAmbiguityWarning) as rec:
        rep = pose_report(qp, qg, qp, qg, paper_alignment=paper_q)
    assert rep["paper_mode"] == "second"
    assert rep["paper"]["accuracy"] == pytest.approx(flip.mean())
    assert rep["robust"]["accuracy"] == pytest.approx(1 - flip.mean())
    assert any("minority mode" in str(w.message) for w in rec)
    assert rep["ambiguity"]["ambiguous"]  # 30/70 = 0.43 >= 1/3


def test_random_poses_are_weak_not_ambiguous():
    """An untrained model's poses (random): no clear mode, no warning."""
    g = torch.Generator().manual_seed(11)
    qp, qg = random_quat(200, g, torch.float64), random_quat(200, g, torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AlignmentAmbiguityWarning)
        rep = pose_report(qp, qg, qp, qg, paper_alignment=[0.0, 1.0, 0.0, 0.0])
    assert rep["ambiguity"]["weak"] and not rep["ambiguity"]["ambiguous"]
    assert rep["paper_mode"] == "neither" and rep["warnings"] == []


def test_bad_views_are_skipped_and_errors_are_clear():
    qp, qg, _ = _poses(4, 3, 0.0, seed=9)
    qp = qp.copy()
    qp[0, 0] = np.nan
    qg = qg.copy()
    qg[1, 1] = 0.0
    rep = pose_report(qp, qg, qp, qg, warn=False)
    assert rep["fit"]["num_views"] == 10 and rep["eval"]["num_views"] == 10
    with pytest.raises(ValueError, match="no view"):
        robust_alignment(np.full((2, 4), np.nan), np.ones((2, 4)))
    with pytest.raises(ValueError, match="same shape"):
        robust_alignment(np.ones((2, 4)), np.ones((3, 4)))


def test_wandb_histograms_show_the_flip_peak():
    import wandb

    from dpc.training.logging import wandb_histograms

    qp, qg, flip = _poses(20, 5, 0.3, seed=12, noise_deg=2.0)
    rep = pose_report(qp, qg, qp, qg, paper_alignment=Q_A.numpy(), keep_errors=True, warn=False)
    assert len(rep["paper"]["errors_deg"]) == 100
    h = wandb_histograms(rep, wandb)
    assert set(h) == {"val/pose_error_deg_paper", "val/pose_error_deg_robust"}
    hist = h["val/pose_error_deg_paper"]
    assert isinstance(hist, wandb.Histogram)
    counts = np.asarray(hist.histogram)
    assert counts.sum() == 100 and counts[0] == (~flip).sum() and counts[-1] == flip.sum()
    assert "errors_deg" not in pose_report(qp, qg, qp, qg, warn=False)["robust"]


def test_objects_seen_turned_as_a_whole_are_counted():
    """Known answer: object 2 of 5 has 5 of its 6 views turned front to back, object 4 has 3
    of 6 (not more than half: not turned), the rest none; the accuracy of the other objects
    counts every view but object 2's."""
    g = torch.Generator().manual_seed(4)
    n, V = 5, 6
    q_gt = random_quat(n * V, g, torch.float64).view(n, V, 4)
    turned = torch.zeros(n, V, dtype=torch.bool)
    turned[2, :5] = True
    turned[4, :3] = True
    F = torch.where(turned[..., None], F_TEST.expand(n, V, 4), torch.tensor([1.0, 0, 0, 0]))
    noise = _noise(n * V, 3.0, g).view(n, V, 4)
    q_pred = quat_mul(quat_mul(q_gt, noise), quat_mul(F, Q_A.expand(n, V, 4)))
    fig = pose_figures(q_pred.numpy(), q_gt.numpy(), Q_A.numpy())
    assert fig["turned_object_indices"] == [2] and fig["num_objects"] == n
    # views right outside object 2: 4 objects x 6 views, less object 4's 3 turned views
    assert fig["accuracy_other_objects"] == pytest.approx(21 / 24)
    assert fig["accuracy"] == pytest.approx((21 + 1) / 30)
    # a missing pose is skipped, not counted against its object
    q_miss = q_pred.numpy().copy()
    q_miss[2, 0] = np.nan
    assert pose_figures(q_miss, q_gt.numpy(), Q_A.numpy())["turned_object_indices"] == [2]
    # without an object axis there is nothing to count
    flat = pose_figures(q_pred.view(-1, 4).numpy(), q_gt.view(-1, 4).numpy(), Q_A.numpy())
    assert "turned_object_indices" not in flat
    # the evaluation's summary says it in one line
    from dpc.eval.pose_report import summary_lines

    rep = pose_report(q_pred.numpy(), q_gt.numpy(), q_pred.numpy(), q_gt.numpy(),
                      Q_A.numpy(), warn=False)  # fmt: skip
    (line,) = [ln for ln in summary_lines(rep) if ln.lstrip().startswith("turned")]
    assert "1 of 5 objects" in line and "0.875" in line
    # and validation logs it (the paper's alignment's figures)
    from dpc.eval.pose_report import scalars

    sc = scalars(rep)
    assert sc["val/pose_turned_objects"] == 1 and sc["val/pose_num_objects"] == n
    assert sc["val/pose_accuracy_other_objects"] == pytest.approx(21 / 24)
