"""Pose accuracy under two global alignments, front/back flips, and the alignment's ambiguity.

The paper's protocol (docs/METHOD.md, section 6;
:func:`dpc.eval.alignment.estimate_global_alignment`:
ICP per view, keep the lowest-RMSE views, Markley average) is kept as *the* published
figure. On near-symmetric objects (cars: nearly symmetric front to back) a model's
per-view poses are often a mix of correct and front/back-flipped views; the per-view
rotations ``c_i = q_gt_i^-1 q_pred_i`` then form two clusters ("modes") 180 degrees apart
about the object's up axis, and which one the paper's RMSE ranking lands in is close to a
coin toss, so the reported accuracy swings between about ``p`` and ``1 - p``.

:func:`pose_report` is the one entry point used by the in-training validation
(:mod:`dpc.eval.validate`) and by ``python -m dpc.evaluate``. It reports, on the
evaluated views, for both the paper's alignment and a flip-robust one:

* ``accuracy`` (share of views under 30 degrees) and ``median_deg``;
* ``flipped_share``: share of views within 30 degrees of the front/back flip of the
  ground truth (the view's pose composed with a 180 degree turn about the object's up
  axis, +y in the object frame, :mod:`dpc.camera`);
* ``accuracy_up_to_flip`` = accuracy + flipped_share (the two sets are disjoint), and
  ``median_up_to_flip_deg``;
* ``twin_share`` and ``accuracy_up_to_twin``: the same for the silhouette twin
  (:func:`dpc.camera.silhouette_twin`: from ``(az, el)`` the view from ``(180 - az,
  -el)``, whose silhouette equals the truth's up to perspective for objects
  mirror-symmetric across the object frame's z = 0, as the built-in data sets are). The
  flip and the twin sets can overlap (near side views).

**Robust alignment (consensus).** Every fit view proposes its own ``c_i`` as the global
rotation; the candidate under which the most fit views are within ``threshold_deg`` (30)
wins, and is refined by Markley-averaging its inliers (re-selecting inliers, 3 rounds).
This is the majority mode by construction, deterministic, and needs no point clouds.

**Ambiguity rule.** The second mode is the best-supported candidate at least
``far_deg`` (90) degrees from the first mode, refined the same way. The alignment is
*ambiguous* when ``second_support >= ambiguity_ratio * first_support`` (default 1/3, i.e.
a split of 75/25 or closer) and the second mode holds at least ``min_views`` (3) views.
Near 50/50 it fires; at 90/10 it does not. When even the first mode holds fewer than
``min_share`` (20%) of the fit views the poses are mostly noise (an untrained model):
the report says ``weak`` and raises no warning. A second warning fires when the paper's
alignment lies more than ``threshold_deg`` from the robust one (it landed in the
minority mode or between modes).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from dpc.camera import deg, quat_angle, quat_conj, quat_mul, quat_normalize, silhouette_twin
from dpc.eval.alignment import AlignmentResult, estimate_global_alignment, markley_average

UP_AXIS = (0.0, 1.0, 0.0)  # object frame: y up (dpc.camera)
# 180 degrees about the up axis: (w, x, y, z) = (cos 90, sin 90 * up)
FLIP_QUAT = np.array([0.0, *UP_AXIS])
ACCURACY_DEG = 30.0


class AlignmentAmbiguityWarning(UserWarning):
    """The global alignment is ambiguous (two far-apart modes with comparable support)."""


def _as_quats(q, name: str) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.shape[-1] != 4:
        raise ValueError(f"{name} must be [..., 4] quaternions, got shape {q.shape}")
    return q.reshape(-1, 4)


def _usable(q: np.ndarray) -> np.ndarray:
    """``[K]`` bool: finite and not all zero (a missing pose in an array file)."""
    return np.isfinite(q).all(-1) & (np.abs(np.nan_to_num(q)).sum(-1) > 0)


def relative_rotations(q_pred, q_gt) -> tuple[np.ndarray, np.ndarray]:
    """Per view ``c = q_gt^-1 q_pred`` ``[K, 4]`` (float64, unit) of the usable views, and the
    ``[K_all]`` bool mask of which views were usable. Inputs ``[..., 4]`` (flattened)."""
    qp, qg = _as_quats(q_pred, "q_pred"), _as_quats(q_gt, "q_gt")
    if qp.shape != qg.shape:
        raise ValueError(f"q_pred {qp.shape} and q_gt {qg.shape} must have the same shape")
    ok = _usable(qp) & _usable(qg)
    a, b = torch.from_numpy(qg[ok]), torch.from_numpy(qp[ok])
    c = quat_normalize(quat_mul(quat_conj(quat_normalize(a)), quat_normalize(b)))
    return c.numpy(), ok


def angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise rotation angles ``[K, L]`` (degrees) between unit quaternions ``a [K, 4]`` and
    ``b [L, 4]`` (sign-invariant)."""
    dot = np.abs(np.asarray(a) @ np.asarray(b).T).clip(max=1.0)
    return np.degrees(2.0 * np.arccos(dot))


def _refine(c: np.ndarray, q0: np.ndarray, thr: float, rounds: int = 3) -> tuple[np.ndarray, int]:
    """Markley average of the views within ``thr`` of ``q0``, re-selected ``rounds`` times."""
    q = q0
    for _ in range(rounds):
        inl = angles_deg(c, q[None])[:, 0] < thr
        if not inl.any():
            break
        q = markley_average(c[inl])
    return q, int((angles_deg(c, q[None])[:, 0] < thr).sum())


def robust_alignment(
    q_pred,
    q_gt,
    threshold_deg: float = ACCURACY_DEG,
    far_deg: float = 90.0,
    ambiguity_ratio: float = 1.0 / 3.0,
    min_views: int = 3,
    min_share: float = 0.2,
    max_candidates: int = 2000,
) -> dict:
    """Consensus alignment (model frame -> GT frame) from per-view poses ``[..., 4]``.

    Returns a dict: ``quat`` [4] and ``support`` (views within ``threshold_deg``) of the
    first mode, ``second_quat``/``second_support`` of the best mode at least ``far_deg``
    away (None/0 if no view is that far), ``separation_deg``, ``second_is_flip`` (the
    second mode is within ``threshold_deg`` of the front/back flip of the first),
    ``ratio``, ``ambiguous``, ``weak`` (no mode holds ``min_share`` of the views: poses
    are mostly noise, e.g. an untrained model; then nothing is called ambiguous),
    ``num_views``, and the rule's settings.
    """
    c, _ = relative_rotations(q_pred, q_gt)
    K = len(c)
    if K == 0:
        raise ValueError("robust_alignment: no view has both a usable predicted and GT pose")
    cand = c
    if K > max_candidates:  # the pairwise table is K x candidates; a fixed subsample is enough
        cand = c[np.random.default_rng(0).choice(K, max_candidates, replace=False)]
    A = angles_deg(cand, c)  # [C, K]
    support = (A < threshold_deg).sum(1)
    # ties: the candidate whose inliers sit closest to it
    spread = np.where(A < threshold_deg, A, 0).sum(1) / np.maximum(support, 1)
    best = np.lexsort((spread, -support))[0]
    q1, s1 = _refine(c, cand[best], threshold_deg)
    far = angles_deg(cand, q1[None])[:, 0] >= far_deg
    q2, s2, sep = None, 0, None
    if far.any():
        idx = np.nonzero(far)[0]
        j = idx[np.lexsort((spread[idx], -support[idx]))[0]]
        q2, s2 = _refine(c, cand[j], threshold_deg)
        sep = float(angles_deg(q1[None], q2[None])[0, 0])
        if sep < far_deg:  # refinement pulled it back towards the first mode
            q2, s2, sep = None, 0, None
    flip1 = quat_mul(torch.from_numpy(FLIP_QUAT), torch.from_numpy(q1)).numpy()
    second_is_flip = q2 is not None and float(angles_deg(flip1[None], q2[None])[0, 0]) < (
        threshold_deg
    )
    ratio = s2 / max(s1, 1)
    weak = s1 < min_share * K
    return {
        "quat": [float(x) for x in q1],
        "support": s1,
        "second_quat": None if q2 is None else [float(x) for x in q2],
        "second_support": s2,
        "separation_deg": sep,
        "second_is_flip": bool(second_is_flip),
        "ratio": float(ratio),
        "ambiguous": bool(ratio >= ambiguity_ratio and s2 >= min_views and not weak),
        "weak": bool(weak),
        "num_views": K,
        "rule": (
            f"ambiguous when the best mode >= {far_deg:g} deg from the first holds >= "
            f"{ambiguity_ratio:.2f} x the first mode's views (each counted within "
            f"{threshold_deg:g} deg) and >= {min_views} views; weak (never ambiguous) "
            f"when the first mode holds < {min_share:.0%} of the views"
        ),
    }


def pose_figures(q_pred, q_gt, q_align, threshold_deg: float = ACCURACY_DEG) -> dict:
    """Pose figures of per-view poses ``[..., 4]`` under the global rotation ``q_align``
    [4] (model frame -> GT frame): ``accuracy``, ``median_deg``, ``flipped_share``,
    ``accuracy_up_to_flip``, ``median_up_to_flip_deg``, ``twin_share``,
    ``accuracy_up_to_twin``, ``num_views``, for poses ``[n, V, 4]`` also
    :func:`turned_objects`' figures, and the per-view ``errors_deg`` /
    ``errors_up_to_flip_deg`` (numpy, not JSON-ready)."""
    c, ok = relative_rotations(q_pred, q_gt)
    if len(c) == 0:
        raise ValueError("pose_figures: no view has both a usable predicted and GT pose")
    qa = quat_normalize(torch.as_tensor(np.asarray(q_align, np.float64)))
    # r = q_gt^-1 q_pred q_a^-1: identity when right, the flip F when front/back flipped
    r = quat_mul(torch.from_numpy(c), quat_conj(qa)[None]).numpy()
    err = angles_deg(r, np.array([[1.0, 0, 0, 0]]))[:, 0]
    err_flip = angles_deg(r, FLIP_QUAT[None])[:, 0]
    best = np.minimum(err, err_flip)
    # the twin is not a fixed turn of the object frame (it rolls the image), so compare
    # the aligned prediction with each view's own twin
    qg = quat_normalize(torch.from_numpy(_as_quats(q_gt, "q_gt")[ok]))
    qp = quat_normalize(torch.from_numpy(_as_quats(q_pred, "q_pred")[ok]))
    aligned = quat_mul(qp, quat_conj(qa)[None].expand_as(qp))
    err_twin = deg(quat_angle(silhouette_twin(qg), aligned)).numpy()
    return {
        "accuracy": float(np.mean(err < threshold_deg)),
        "median_deg": float(np.median(err)),
        "flipped_share": float(np.mean(err_flip < threshold_deg)),
        "accuracy_up_to_flip": float(np.mean(best < threshold_deg)),
        "median_up_to_flip_deg": float(np.median(best)),
        "twin_share": float(np.mean(err_twin < threshold_deg)),
        "accuracy_up_to_twin": float(np.mean(np.minimum(err, err_twin) < threshold_deg)),
        "num_views": len(c),
        **turned_objects(np.shape(q_pred), ok, err, err_flip, threshold_deg),
        "errors_deg": err,
        "errors_up_to_flip_deg": best,
    }


def turned_objects(shape, ok, err, err_flip, threshold_deg: float = ACCURACY_DEG) -> dict:
    """Objects seen turned front to back as a whole, for poses of shape ``[n, V, 4]``
    (``{}`` for any other shape): ``turned_object_indices`` (objects more than half of whose
    usable views lie within the threshold of the flip), ``num_objects`` and
    ``accuracy_other_objects`` (the accuracy over the other objects' views, None if none).

    Why: a cloud turned about the vertical with every camera turned along renders the same
    silhouettes, so silhouettes cannot tell whether a whole object is turned; only what the
    network shares across objects sets its front (RESULTS.md "Round 11": two test airplanes
    on every seed). ``ok [n V]`` marks the usable views; ``err``, ``err_flip`` ``[K]``
    (degrees, usable views only) are the errors to the truth and to its flip."""
    if len(shape) != 3:
        return {}
    n = int(shape[0])
    obj = np.repeat(np.arange(n), int(shape[1]))[np.asarray(ok)]
    views = np.bincount(obj, minlength=n)
    on_flip = np.bincount(obj, weights=(err_flip < threshold_deg).astype(float), minlength=n)
    turned = (views > 0) & (on_flip > 0.5 * views)
    rest = ~turned[obj]
    return {
        "turned_object_indices": [int(i) for i in np.nonzero(turned)[0]],
        "num_objects": int((views > 0).sum()),
        "accuracy_other_objects": float(np.mean(err[rest] < threshold_deg)) if rest.any() else None,
    }


def _public(fig: dict, keep_errors: bool = False) -> dict:
    out = {k: v for k, v in fig.items() if not k.startswith("errors")}
    if keep_errors:
        out["errors_deg"] = np.round(fig["errors_deg"], 1).tolist()
    return out


def pose_report(
    q_pred_fit,
    q_gt_fit,
    q_pred_eval,
    q_gt_eval,
    paper_alignment: AlignmentResult | np.ndarray | list | None = None,
    fit_points=None,
    fit_gt_points=None,
    fit_subset: str = "",
    eval_subset: str = "",
    warn: bool = True,
    keep_errors: bool = False,
    **robust_kw,
) -> dict:
    """Pose accuracy of ``q_pred_eval`` under the paper's and the robust alignment, both fitted
    on the ``fit`` views; flips; the alignment's ambiguity (module docstring).

    Args:
        q_pred_fit, q_gt_fit: ``[n_obj, V, 4]`` (or ``[K, 4]``) poses the alignments are
            fitted on (e.g. val).
        q_pred_eval, q_gt_eval: ``[..., 4]`` poses scored (e.g. test; may be the fit views).
        paper_alignment: the paper's alignment (an :class:`AlignmentResult` or a quaternion
            [4]); if None and ``fit_points [n_obj, V, N, 3]`` / ``fit_gt_points
            [n_obj, P, 3]`` are given it is estimated here (ICP + Markley, docs/METHOD.md
            6); else the paper figures are left out.
        fit_subset, eval_subset: descriptions recorded in the report (e.g. ``"val[:16]"``).
        warn: emit :class:`AlignmentAmbiguityWarning` for each entry of ``warnings``.
        keep_errors: also keep the per-view errors (``errors_deg``, 0.1 degree) under
            ``paper`` / ``robust`` (for :func:`dpc.training.logging.wandb_histograms`).
        robust_kw: settings of :func:`robust_alignment`.

    Returns:
        JSON-ready dict: ``fit`` / ``eval`` (subset, views), ``robust`` and ``paper``
        (quat + :func:`pose_figures`), ``ambiguity`` (the :func:`robust_alignment` modes),
        ``paper_vs_robust_deg``, ``paper_mode`` (first | second | neither), ``warnings``.
    """
    rob = robust_alignment(q_pred_fit, q_gt_fit, **robust_kw)
    thr = float(robust_kw.get("threshold_deg", ACCURACY_DEG))
    rep: dict = {
        "fit": {"subset": fit_subset, "num_views": rob["num_views"]},
        "eval": {"subset": eval_subset},
        "robust": {
            "quat": rob["quat"],
            **_public(pose_figures(q_pred_eval, q_gt_eval, rob["quat"]), keep_errors),
        },
        "ambiguity": {k: rob[k] for k in rob if k != "quat"},
    }
    rep["eval"]["num_views"] = rep["robust"]["num_views"]
    q_paper = None
    if paper_alignment is None and fit_points is not None and fit_gt_points is not None:
        qp = np.asarray(q_pred_fit)
        with warnings.catch_warnings():  # fewer than 15 objects is expected on small subsets
            warnings.simplefilter("ignore")
            paper_alignment = estimate_global_alignment(
                fit_points, qp, fit_gt_points, q_gt_fit, num_objects=min(15, qp.shape[0])
            )
    if isinstance(paper_alignment, AlignmentResult):
        q_paper = np.asarray(paper_alignment.quat, np.float64)
    elif paper_alignment is not None:
        q_paper = np.asarray(paper_alignment, np.float64).reshape(4)
    msgs = []
    amb = rob
    if amb["ambiguous"]:
        kind = "a front/back flip of each other" if amb["second_is_flip"] else "far apart"
        msgs.append(
            f"global alignment is AMBIGUOUS on {fit_subset or 'the fit views'}: two modes "
            f"{amb['separation_deg']:.0f} deg apart ({kind}) hold {amb['support']} and "
            f"{amb['second_support']} of {amb['num_views']} views; the paper-protocol pose "
            "accuracy can land in either mode (about p or 1 - p). Compare 'robust' and "
            "'accuracy_up_to_flip'."
        )
    if q_paper is not None:
        rep["paper"] = {
            "quat": [float(x) for x in q_paper / np.linalg.norm(q_paper)],
            **_public(pose_figures(q_pred_eval, q_gt_eval, q_paper), keep_errors),
        }
        q_paper = q_paper / np.linalg.norm(q_paper)
        d1 = float(angles_deg(q_paper[None], np.array([rob["quat"]]))[0, 0])
        rep["paper_vs_robust_deg"] = d1
        mode = "first" if d1 < thr else "neither"
        if mode == "neither" and rob["second_quat"] is not None:
            d2 = angles_deg(q_paper[None], np.array([rob["second_quat"]]))
            mode = "second" if d2[0, 0] < thr else "neither"
        rep["paper_mode"] = mode
        if mode != "first" and not rob["weak"]:
            where = "the minority mode" if mode == "second" else "neither mode"
            msgs.append(
                f"the paper-protocol alignment lies {d1:.0f} deg from the robust (majority) "
                f"one, in {where}: paper accuracy {rep['paper']['accuracy']:.3f} vs robust "
                f"{rep['robust']['accuracy']:.3f}"
            )
    rep["warnings"] = msgs
    if warn:
        for m in msgs:
            warnings.warn(m, AlignmentAmbiguityWarning, stacklevel=2)
    return rep


def summary_lines(rep: dict) -> list[str]:
    """Human-readable lines of a :func:`pose_report` (for the console)."""
    lines = [
        f"  alignment   fitted on {rep['fit']['subset'] or '?'} ({rep['fit']['num_views']} views),"
        f" scored on {rep['eval']['subset'] or '?'} ({rep['eval']['num_views']} views)"
    ]
    for name in ("paper", "robust"):
        if name in rep:
            p = rep[name]
            lines.append(
                f"  pose {name:<7}acc@30 {p['accuracy']:.3f}  median {p['median_deg']:.1f} deg"
                f"  | up to front/back flip {p['accuracy_up_to_flip']:.3f}"
                f"  flipped {p['flipped_share']:.3f}"
                f"  | up to its silhouette twin {p['accuracy_up_to_twin']:.3f}"
            )
    p = rep.get("paper", rep["robust"])
    if "turned_object_indices" in p:
        name = "paper" if "paper" in rep else "robust"
        other = p["accuracy_other_objects"]
        lines.append(
            f"  turned      {len(p['turned_object_indices'])} of {p['num_objects']} objects "
            f"seen turned front to back as a whole ({name} alignment; most views on the flip, "
            "which silhouettes cannot tell from the truth)"
            + (f"; acc@30 on the other objects {other:.3f}" if other is not None else "")
        )
    a = rep["ambiguity"]
    lines.append(
        f"  modes       {a['support']} vs {a['second_support']} of {a['num_views']} fit views"
        + (f", {a['separation_deg']:.0f} deg apart" if a["separation_deg"] is not None else "")
        + ("  AMBIGUOUS" if a["ambiguous"] else "")
        + ("  (weak: poses mostly unaligned, no clear mode)" if a.get("weak") else "")
    )
    lines += [f"  WARNING: {m}" for m in rep["warnings"]]
    return lines


def scalars(rep: dict, prefix: str = "val/") -> dict[str, float]:
    """Loggable scalars of a report: ``pose_accuracy_robust``, ``pose_median_deg_robust``,
    ``pose_accuracy_up_to_flip``, ``pose_flipped_share`` (under the robust alignment: the
    majority mode, so they do not depend on which mode the paper's alignment picked),
    ``alignment_ambiguous`` (0/1), ``alignment_mode_ratio``, ``alignment_fit_views``,
    ``alignment_paper_vs_robust_deg``; for poses per object ``pose_turned_objects``,
    ``pose_num_objects`` and ``pose_accuracy_other_objects`` (:func:`turned_objects`, under
    the paper's alignment when there is one)."""
    base = rep["robust"]
    out = {
        "pose_accuracy_robust": rep["robust"]["accuracy"],
        "pose_median_deg_robust": rep["robust"]["median_deg"],
        "pose_accuracy_up_to_flip": base["accuracy_up_to_flip"],
        "pose_flipped_share": base["flipped_share"],
        "alignment_ambiguous": float(rep["ambiguity"]["ambiguous"]),
        "alignment_weak": float(rep["ambiguity"].get("weak", False)),
        "alignment_mode_ratio": rep["ambiguity"]["ratio"],
        "alignment_fit_views": float(rep["fit"]["num_views"]),
    }
    if "paper_vs_robust_deg" in rep:
        out["alignment_paper_vs_robust_deg"] = rep["paper_vs_robust_deg"]
    p = rep.get("paper", rep["robust"])
    if "turned_object_indices" in p:
        out["pose_turned_objects"] = len(p["turned_object_indices"])
        out["pose_num_objects"] = p["num_objects"]
        out["pose_accuracy_other_objects"] = p["accuracy_other_objects"]
    return {prefix + k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def attach_fit_poses(al: AlignmentResult, q_pred, q_gt, subset: str) -> AlignmentResult:
    """Record the fit views' poses ``[..., 4]`` and subset in ``al`` (saved with it), so a
    saved alignment carries what :func:`report_for_alignment` needs."""
    al.fit_q_pred = np.round(_as_quats(q_pred, "q_pred"), 7).tolist()
    al.fit_q_gt = np.round(_as_quats(q_gt, "q_gt"), 7).tolist()
    al.fit_subset = subset
    return al


def report_for_alignment(
    al: AlignmentResult, q_pred_eval, q_gt_eval, eval_subset: str, warn: bool = True
) -> dict:
    """:func:`pose_report` with the paper alignment ``al`` and the fit poses saved in it
    (:func:`attach_fit_poses`)."""
    if al.fit_q_pred is None or al.fit_q_gt is None:
        raise ValueError("the alignment has no fit poses (saved by an older version): recompute it")
    return pose_report(
        al.fit_q_pred,
        al.fit_q_gt,
        q_pred_eval,
        q_gt_eval,
        paper_alignment=al,
        fit_subset=al.fit_subset or al.split,
        eval_subset=eval_subset,
        warn=warn,
    )
