"""dpc.eval.pose_ambiguity: the true pose against fixed confusions, from ground truth only."""

import json
import math

import numpy as np
import pytest
import torch

from dpc.camera import view_quat
from dpc.eval.pose_ambiguity import (
    CONFUSIONS,
    ambiguity_table,
    azimuth_elevation,
    confusion_quats,
    dataset_ambiguity,
    main,
)
from dpc.render import PointCloudRenderer, RenderSettings


def _views(n, V, seed):
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(n, V, generator=g, dtype=torch.float64) * 2 * math.pi
    el = (torch.rand(n, V, generator=g, dtype=torch.float64) - 0.3) * math.radians(60)
    return view_quat(az, el).float()


def _render_masks(pts, quats, renderer, sigma, scale):
    n, V = quats.shape[:2]
    P = torch.as_tensor(pts)[:, None].expand(n, V, -1, -1).reshape(n * V, -1, 3)
    s = torch.full((n * V,), scale)
    with torch.no_grad():
        sil = renderer(P, quats.reshape(n * V, 4), sigma=sigma, scale=s).silhouette
    return sil.view(n, V, *sil.shape[1:]).numpy()


def test_confusions_are_the_stated_rotations():
    q = _views(3, 4, 0).reshape(-1, 4)
    az, el = azimuth_elevation(q)
    c = confusion_quats(q)
    assert c.shape == (12, 1 + len(CONFUSIONS), 4)
    # the first is the truth, re-made
    a0, e0 = azimuth_elevation(c[:, 0])
    assert torch.allclose(torch.cos(a0 - az), torch.ones_like(az), atol=1e-6)
    assert torch.allclose(e0, el, atol=1e-6)
    names = list(CONFUSIONS)
    at, et = azimuth_elevation(c[:, 1 + names.index("twin_z")])
    assert torch.allclose(torch.cos(at - (math.pi - az)), torch.ones_like(az), atol=1e-6)
    assert torch.allclose(et, -el, atol=1e-6)
    ax, ex = azimuth_elevation(c[:, 1 + names.index("twin_x")])
    assert torch.allclose(torch.cos(ax + az), torch.ones_like(az), atol=1e-6)
    assert torch.allclose(ex, -el, atol=1e-6)


def test_a_cloud_with_a_half_turn_symmetry_cannot_tell_the_flip():
    """A cloud that a half turn about the vertical maps onto itself renders the same at
    the true pose and at its flip (the camera's up stays up): ratio 1 exactly, whatever
    the masks. Without the symmetry the flip is told apart."""
    rng = np.random.default_rng(1)
    half = rng.uniform(-0.4, 0.4, (150, 3)) * [1.0, 0.5, 0.3]
    sym = np.concatenate([half, half * [-1, 1, -1]])[None].astype(np.float32)
    q = _views(1, 6, 2)
    r = PointCloudRenderer(RenderSettings(vox_size=16, kernel_size=5))
    # masks from another cloud: the true pose is not exact, so the ratio is a real ratio
    other = rng.uniform(-0.3, 0.3, (300, 3))[None].astype(np.float32)
    masks = _render_masks(other, q, r, 0.7, 0.3)
    res = ambiguity_table(sym, q, masks, r, 0.7, scale=0.3)
    assert res["flip"]["error_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert res["flip"]["angle_deg"] == pytest.approx(180.0, abs=1e-3)
    assert res["az+15"]["angle_deg"] == pytest.approx(15.0, abs=1e-3)
    assert res["el+15"]["angle_deg"] == pytest.approx(15.0, abs=1e-3)
    lop = np.concatenate([half, half * [-1, 1, -1] * 0.5])[None].astype(np.float32)
    masks = _render_masks(lop, q, r, 0.7, 0.3)
    res = ambiguity_table(lop, q, masks, r, 0.7, scale=0.3)
    assert res["flip"]["error_ratio"] > 2.0
    assert res["flip"]["identified"] == 1.0


def test_the_twin_of_a_mirror_symmetric_flat_object_is_the_closest_confusion():
    """A flat cloud mirror-symmetric across z = 0 (an airplane's layout: wings along z)
    draws nearly its true silhouette at (180 - az, -el): the twin renders closer than a
    15-degree azimuth error on most views (0.92 here), and the twin about the other axis
    does not; with one wing cut off, the twin is never that close."""
    rng = np.random.default_rng(3)
    body = np.c_[rng.uniform(-0.45, 0.2, 400), rng.normal(0, 0.03, 400), rng.normal(0, 0.03, 400)]
    wing = np.c_[rng.uniform(-0.05, 0.1, 400), rng.normal(0, 0.01, 400),
                 rng.uniform(0.0, 0.4, 400)]  # fmt: skip
    half = np.concatenate([body, wing])
    pts = np.concatenate([half, half * [1, 1, -1]])[None].astype(np.float32)
    q = _views(1, 24, 4)
    r = PointCloudRenderer(RenderSettings(vox_size=24, kernel_size=5))
    masks = (_render_masks(pts, q, r, 0.5, 0.2) * 255).round().astype(np.uint8)
    res = ambiguity_table(pts, q, masks, r, 0.5)  # the scale fitted to the masks
    assert res["scale"] == 0.2
    assert res["twin_z"]["closer_than_az15"] >= 0.75
    assert res["twin_x"]["closer_than_az15"] <= 0.25
    assert res["twin_z"]["error_ratio"] < res["twin_x"]["error_ratio"]
    # the truth renders the masks (up to the uint8 rounding): every confusion is farther
    for name in ("flip", "az+30", "el+15"):
        assert res[name]["identified"] == 1.0, name
    one_wing = np.concatenate([half, body * [1, 1, -1]])[None].astype(np.float32)
    masks = (_render_masks(one_wing, q, r, 0.5, 0.2) * 255).round().astype(np.uint8)
    assert ambiguity_table(one_wing, q, masks, r, 0.5)["twin_z"]["closer_than_az15"] <= 0.1


def test_shapes_are_checked():
    r = PointCloudRenderer(RenderSettings(vox_size=8, kernel_size=3))
    q = _views(2, 3, 0)
    with pytest.raises(ValueError, match="quats"):
        ambiguity_table(np.zeros((3, 10, 3)), q, np.zeros((2, 3, 8, 8)), r, 0.5)
    with pytest.raises(ValueError, match="masks"):
        ambiguity_table(np.zeros((2, 10, 3)), q, np.zeros((2, 2, 8, 8)), r, 0.5)
    with pytest.raises(ValueError, match="scale"):
        ambiguity_table(np.zeros((2, 10, 3)), q, np.zeros((2, 3, 8, 8)), r, 0.5, scale=0.0)


def test_command_on_a_built_data_set(tmp_path, capsys):
    from dpc.data import build_dataset

    path = build_dataset(category="car", preset="quick", root=str(tmp_path), progress=False,
                         workers=0, train=1, val=1, test=2, image_size=32,
                         gt_points_dense=800, gt_points=400)  # fmt: skip
    out = tmp_path / "amb.json"
    main([f"dataset={path}", "vox_size=16", "progress=false", f"out={out}"])
    res = json.loads(out.read_text())
    assert res == json.loads(capsys.readouterr().out)
    assert res["views"] == 2 * 5 and res["grid"] == 16
    assert set(CONFUSIONS) <= set(res)
    for name in CONFUSIONS:
        assert 0.0 <= res[name]["identified"] <= 1.0
    blind = res["twin_blind"]  # the data set's own elevation range, from its manifest
    assert blind["elevation_range"] == [-20.0, 40.0]
    assert blind["coin_toss"] <= blind["knowing_the_range"] <= 1.0
    with pytest.raises(ValueError, match="split must be one of"):
        dataset_ambiguity(path, "nope")
    with pytest.raises(ValueError, match="vox_size"):
        dataset_ambiguity(path, vox_size=4)
    with pytest.raises(SystemExit) as e:
        main([f"dataset={tmp_path / 'nowhere'}", "progress=false"])
    assert e.value.code == 2
    assert "nowhere" in capsys.readouterr().err


def test_twin_blind_accuracy_known_answers():
    from dpc.eval.pose_ambiguity import twin_blind_accuracy

    r = math.radians
    # a side view (its twin 10 degrees away: right either way), a low front view (a coin
    # toss), a high front view (its twin at -30 degrees: outside a [-20, 40] rig)
    az = torch.tensor([r(90), 0.0, 0.0], dtype=torch.float64)
    el = torch.tensor([r(5), r(10), r(30)], dtype=torch.float64)
    q = view_quat(az, el)
    res = twin_blind_accuracy(q, (-20, 40))
    assert res["twin_within"] == pytest.approx(1 / 3)
    assert res["coin_toss"] == pytest.approx(2 / 3)
    assert res["twin_outside_range"] == pytest.approx(1 / 3)
    assert res["knowing_the_range"] == pytest.approx(2.5 / 3)
    assert "knowing_the_range" not in twin_blind_accuracy(q)
    # a range that holds every twin changes nothing
    assert twin_blind_accuracy(q, (-80, 80))["knowing_the_range"] == pytest.approx(2 / 3)
