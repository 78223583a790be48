"""Baselines: the Chamfer medoid and the mean view have known answers on simple data."""

import numpy as np
import pytest
import torch

from dpc.camera import quat_from_axis_angle, random_quat
from dpc.eval.baselines import chamfer_medoid, mean_shape_baseline, mean_view_baseline


def _sphere(r: float, n: int = 1500, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 3))
    return (r * v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_medoid_of_concentric_spheres_is_the_middle_one():
    radii = [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4]
    clouds = np.stack([_sphere(r, seed=i) for i, r in enumerate(radii)])
    idx, cloud = chamfer_medoid(clouds[::-1].copy(), num_points=500)
    assert idx == 3 and np.allclose(np.linalg.norm(cloud, axis=1), 0.25, atol=1e-5)
    res = mean_shape_baseline(cloud, clouds)
    # each sphere against the r = 0.25 one: |r - 0.25| both ways (dense enough), x100
    expect = 100 * np.mean([abs(r - 0.25) for r in radii])
    assert abs(res["precision"] - expect) < 0.3 and abs(res["coverage"] - expect) < 0.3
    assert res["num_objects"] == 7


def test_mean_view_baseline():
    g = torch.Generator().manual_seed(0)
    q = random_quat(1, g, torch.float64)[0]
    train = q.expand(10, 4).numpy()
    res = mean_view_baseline(train, train[:4])
    assert res["accuracy"] == 1.0 and res["median_deg"] < 1e-3
    # test views 90 degrees off about one axis
    off = quat_from_axis_angle(
        torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), torch.tensor(np.pi / 2)
    )
    from dpc.camera import quat_mul

    test = quat_mul(q, off).expand(3, 4).numpy()
    res = mean_view_baseline(train, test)
    assert res["accuracy"] == 0.0 and abs(res["median_deg"] - 90.0) < 1e-6


def test_the_mean_shape_is_the_medoid_of_the_train_split_not_the_evaluated_one():
    from dpc.data import synthetic_dataset
    from dpc.eval.score import baselines, load_gt, valid_gt_mask

    reader = synthetic_dataset({"train": 5, "test": 3}, num_views=2, image_size=16, num_points=400)
    gt = load_gt(reader, "test", False)
    valid = valid_gt_mask(gt)
    out = baselines(reader, "test", gt, valid, with_pose=False)
    train_gt = load_gt(reader, "train", False)
    idx, cloud = chamfer_medoid(train_gt)
    want = mean_shape_baseline(cloud, gt, valid)
    assert out["mean_shape"]["train_object"] == reader.splits["train"][idx]
    assert out["mean_shape"]["chamfer"] == pytest.approx(want["chamfer"], rel=1e-6)
    # the test split's own medoid scores differently (better: it is one of the objects)
    _, own = chamfer_medoid(gt)
    assert mean_shape_baseline(own, gt, valid)["chamfer"] != pytest.approx(want["chamfer"])


def test_matched_mean_shape_is_the_medoid_at_the_predictions_point_count():
    from dpc.data import synthetic_dataset
    from dpc.eval.baselines import subsample
    from dpc.eval.score import baselines, load_gt, valid_gt_mask

    reader = synthetic_dataset({"train": 5, "test": 3}, num_views=2, image_size=16, num_points=400)
    gt = load_gt(reader, "test", False)
    valid = valid_gt_mask(gt)
    out = baselines(reader, "test", gt, valid, with_pose=False, num_points=100)
    _, cloud = chamfer_medoid(load_gt(reader, "train", False))
    want = mean_shape_baseline(subsample(cloud, 100, seed=0), gt, valid)
    got = out["mean_shape_matched"]
    assert got["num_points"] == 100
    assert got["chamfer"] == pytest.approx(want["chamfer"], rel=1e-6)
    # a sparser cloud covers the ground truth worse
    assert got["coverage"] > out["mean_shape"]["coverage"]
    # at the medoid's own point count (or more) there is nothing to match
    for n in (None, 400, 1000):
        assert "mean_shape_matched" not in baselines(
            reader, "test", gt, valid, with_pose=False, num_points=n
        )
