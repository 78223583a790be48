"""Known answers for pose errors, frames, Markley averaging and the ICP global alignment."""

import math

import numpy as np
import pytest
import torch

from dpc.camera import (
    quat_angle,
    quat_conj,
    quat_from_axis_angle,
    quat_mul,
    quat_rotate,
    random_quat,
)
from dpc.eval import estimate_global_alignment, icp_rotation, markley_average
from dpc.eval.metrics import (
    align_points,
    aligned_pose,
    pose_errors_deg,
    pose_summary,
    shape_metrics,
)


def _qrot(axis, angle_deg, dtype=torch.float64):
    return quat_from_axis_angle(
        torch.tensor(axis, dtype=dtype), torch.tensor(math.radians(angle_deg), dtype=dtype)
    )


def _asymmetric_cloud(n: int, seed: int) -> np.ndarray:
    """A box 'car' with a bump at one corner (no rotational symmetry), in [-0.5, 0.5]^3."""
    rng = np.random.default_rng(seed)
    size = np.array([0.9, 0.35, 0.45]) * rng.uniform(0.9, 1.1, 3)
    p = rng.uniform(-0.5, 0.5, (n, 3)) * size
    face = rng.integers(0, 3, n)
    p[np.arange(n), face] = np.sign(rng.standard_normal(n)) * size[face] / 2  # on the surface
    k = n // 5  # bump: a blob above the front-left corner
    p[:k] = np.array([0.3, 0.25, 0.15]) + rng.normal(0, 0.04, (k, 3))
    return p.astype(np.float32)


@pytest.mark.parametrize("angle", [0.0, 10.0, 29.0, 90.0, 179.0])
def test_pose_error_of_known_rotation(angle):
    g = torch.Generator().manual_seed(0)
    q_gt = random_quat(8, g, torch.float64)
    delta = _qrot([0.3, -1.0, 0.5], angle)
    q_pred = quat_mul(q_gt, delta.expand(8, 4))  # rotated by `angle` in the object frame
    err = pose_errors_deg(q_pred, q_gt)
    torch.testing.assert_close(err, torch.full_like(err, angle), atol=1e-6, rtol=0)
    # sign of the quaternion does not matter
    torch.testing.assert_close(pose_errors_deg(-q_pred, q_gt), err, atol=1e-6, rtol=0)


def test_summary_accuracy_and_median():
    s = pose_summary(np.array([1.0, 10.0, 29.9, 30.0, 170.0]))
    assert s["accuracy"] == pytest.approx(0.6) and s["median_deg"] == pytest.approx(29.9)
    with pytest.raises(ValueError, match="empty"):
        pose_summary(np.array([]))


def test_frame_convention_consistency():
    """A model whose frame is the GT frame rotated by q_a^-1 sees identical camera-frame
    points with q_pred = q_gt q_a; the aligned pose then has zero error and the aligned
    shape equals the GT."""
    g = torch.Generator().manual_seed(1)
    P_gt = torch.from_numpy(_asymmetric_cloud(500, 0)).double()[None].expand(6, -1, -1)
    q_gt = random_quat(6, g, torch.float64)
    q_a = random_quat(1, g, torch.float64)[0]
    P_pred = quat_rotate(quat_conj(q_a).expand(6, 4), P_gt)  # model frame
    q_pred = quat_mul(q_gt, q_a.expand(6, 4))
    torch.testing.assert_close(quat_rotate(q_pred, P_pred), quat_rotate(q_gt, P_gt))
    assert float(pose_errors_deg(q_pred, q_gt, q_a).max()) < 1e-5
    torch.testing.assert_close(
        quat_angle(aligned_pose(q_pred, q_a), q_gt),
        torch.zeros(6, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    torch.testing.assert_close(align_points(P_pred, q_a), P_gt)
    p, c = shape_metrics(align_points(P_pred, q_a).float(), P_gt.float())
    assert float(p.max()) < 1e-5 and float(c.max()) < 1e-5


def test_markley_average_noisy_copies():
    g = torch.Generator().manual_seed(2)
    q0 = random_quat(1, g, torch.float64)[0]
    rng = np.random.default_rng(0)
    axes = torch.from_numpy(rng.standard_normal((200, 3)))
    angles = torch.from_numpy(np.radians(rng.normal(0, 5, 200)))  # ~5 degree noise
    qs = quat_mul(q0.expand(200, 4), quat_from_axis_angle(axes, angles))
    signs = torch.from_numpy(rng.choice([-1.0, 1.0], (200, 1)))  # q and -q mixed
    avg = torch.from_numpy(markley_average((qs * signs).numpy()))
    assert math.degrees(float(quat_angle(avg, q0))) < 1.0
    # exact for identical copies; weights pick the heavier rotation
    torch.testing.assert_close(
        quat_angle(torch.from_numpy(markley_average(q0.expand(3, 4).numpy())), q0),
        torch.tensor(0.0, dtype=torch.float64),
        atol=1e-6,
        rtol=0,
    )
    q1 = _qrot([0, 1, 0], 90)
    w = markley_average(torch.stack([q0, q1]).numpy(), weights=[0.1, 10.0])
    assert math.degrees(float(quat_angle(torch.from_numpy(w), q1))) < 5.0
    with pytest.raises(ValueError, match="empty"):
        markley_average(np.zeros((0, 4)))


def test_icp_recovers_rotation_from_noisy_init():
    P_gt = _asymmetric_cloud(3000, 3)
    q_a = _qrot([1.0, 2.0, -0.5], 73.0)
    P_pred = quat_rotate(quat_conj(q_a)[None], torch.from_numpy(P_gt).double()[None])[0].numpy()
    q_init = quat_mul(q_a, _qrot([0.0, 0.3, 1.0], 12.0)).numpy()
    q, rmse, fit = icp_rotation(P_pred, P_gt, q_init)
    assert math.degrees(float(quat_angle(torch.from_numpy(q), q_a))) < 1.0
    assert rmse < 1e-3 and fit > 0.99


def test_global_alignment_recovers_known_rotation():
    """20 objects x 5 views: predictions in a frame rotated by q_a^-1, independently
    resampled per view with jitter, poses off by ~10 degrees of noise, and 3 objects whose
    predictions are garbage (random blobs, wrong poses): the estimate is within 1 degree."""
    n_obj, V, N = 20, 5, 1500
    rng = np.random.default_rng(4)
    g = torch.Generator().manual_seed(4)
    q_a = _qrot([-0.2, 1.0, 0.4], 140.0)
    gts = np.stack([_asymmetric_cloud(4000, 100 + o) for o in range(n_obj)])
    q_gt = random_quat(n_obj * V, g, torch.float64).view(n_obj, V, 4)
    preds = np.empty((n_obj, V, N, 3), np.float32)
    for o in range(n_obj):
        for v in range(V):
            sub = gts[o][rng.choice(4000, N, replace=False)] + rng.normal(0, 0.005, (N, 3))
            preds[o, v] = quat_rotate(quat_conj(q_a)[None], torch.from_numpy(sub).double()[None])[0]
    noise = quat_from_axis_angle(
        torch.from_numpy(rng.standard_normal((n_obj, V, 3))),
        torch.from_numpy(np.radians(rng.uniform(-10, 10, (n_obj, V)))),
    )
    q_pred = quat_mul(quat_mul(q_gt, q_a.expand(n_obj, V, 4)), noise)
    for o in (2, 7, 11):  # bad objects
        preds[o] = rng.normal(0, 0.2, (V, N, 3))
        q_pred[o] = random_quat(V, g, torch.float64)
    al = estimate_global_alignment(preds, q_pred.numpy(), gts, q_gt.numpy())
    assert math.degrees(float(quat_angle(al.tensor(), q_a))) < 1.0
    assert len(al.kept) == 30 and not {o for o, _ in al.kept} & {2, 7, 11}
    # the pose errors after alignment are the injected noise (<= 10 deg), not the frame offset
    err = pose_errors_deg(q_pred, q_gt, al.tensor())
    good = [o for o in range(n_obj) if o not in (2, 7, 11)]
    assert float(err[good].max()) < 11.0
    assert float(pose_errors_deg(q_pred, q_gt)[good].min()) > 100.0  # unaligned: way off


def test_alignment_roundtrip_json(tmp_path):
    from dpc.eval import AlignmentResult

    a = AlignmentResult(quat=[1.0, 0.0, 0.0, 0.0], kept=[(1, 2)], kept_rmse=[0.01], step=5)
    b = AlignmentResult.load(a.save(tmp_path / "al.json"))
    assert b == a
