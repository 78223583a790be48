"""dpc.predict / dpc.load_run: predictions on your own images from a tiny trained run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent / "training"))
from train_testutils import REPO, TINY, compose_cfg  # noqa: E402

import dpc  # noqa: E402
from dpc.camera import quat_from_axis_angle, quat_mul, quat_rotate, view_quat  # noqa: E402
from dpc.eval.alignment import AlignmentResult  # noqa: E402
from dpc.eval.loaded_run import ImageError, load_image, pose_angles  # noqa: E402


def _train(tmp, extra, experiment="car_quick"):
    from dpc.train import train

    run = tmp / "run"
    train(compose_cfg([f"+experiment={experiment}"] + TINY + ["trainer.max_steps=2"] + extra, run))
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 2-step unsupervised run (32 px inputs, 300 points, 2 candidates + student)."""
    return _train(tmp_path_factory.mktemp("pred"), ["model.pose_predict_num_candidates=2"])


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A PNG with alpha (non-square), a JPEG, a corrupt PNG and a text file."""
    d = tmp_path_factory.mktemp("imgs")
    rgba = np.zeros((60, 90, 4), np.uint8)
    rgba[15:45, 20:70] = (200, 40, 40, 255)  # an opaque red block on transparent
    Image.fromarray(rgba, "RGBA").save(d / "car_alpha.png")
    rgb = np.full((100, 100, 3), 255, np.uint8)
    rgb[30:70, 10:90] = (40, 60, 160)
    Image.fromarray(rgb).save(d / "photo.jpg", quality=92)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (d / "readme.txt").write_text("not an image")
    return d


def test_load_image_modes_and_errors(tmp_path):
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[..., :3] = 100
    rgba[:, :10, 3] = 255  # left half opaque grey, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = load_image(tmp_path / "a.png")
    assert a.shape == (20, 20, 3) and a.dtype == np.uint8  # padded to a square
    assert (a[:5] == 255).all() and (a[15:] == 255).all()  # white padding rows
    assert (a[5:15, :10] == 100).all() and (a[5:15, 10:] == 255).all()  # alpha over white
    half = rgba.copy()
    half[..., 3] = 128
    np.testing.assert_allclose(load_image(half)[5, 0], 100 * 128 / 255 + 255 * 127 / 255, atol=1)
    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).astype(np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    g = load_image(tmp_path / "g.png")
    assert g.shape == (8, 8, 3) and (g[..., 0] == grey).all() and (g[..., 2] == grey).all()
    assert load_image(np.ones((16, 16)))[0, 0].tolist() == [255, 255, 255]  # float in [0, 1]
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty.png: empty file"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage" * 10)
    with pytest.raises(ImageError, match=r"bad.jpg: not a readable image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match=r"shape \(4, 4, 5\)"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match="smaller than 8"):
        load_image(np.zeros((3, 40, 3), np.uint8))
    with pytest.raises(ImageError, match=r"in \[0, 1\]"):
        load_image(np.full((16, 16, 3), 7.0))


def test_pose_angles_invert_view_quat():
    az = torch.tensor([0.3, 2.0, 4.5, 6.0], dtype=torch.float64)
    el = torch.tensor([-0.3, 0.1, 0.6, 1.2], dtype=torch.float64)
    a = pose_angles(view_quat(az, el))
    np.testing.assert_allclose(a["azimuth_deg"].numpy(), np.degrees(az.numpy()), atol=1e-6)
    np.testing.assert_allclose(a["elevation_deg"].numpy(), np.degrees(el.numpy()), atol=1e-6)
    np.testing.assert_allclose(a["roll_deg"].numpy(), 0, atol=1e-6)
    roll = quat_from_axis_angle(torch.tensor([1.0, 0, 0]).double(), torch.tensor(0.4).double())
    b = pose_angles(quat_mul(roll, view_quat(az[:1], el[:1])))
    assert float(b["roll_deg"][0]) == pytest.approx(math.degrees(0.4), abs=1e-6)
    assert float(b["azimuth_deg"][0]) == pytest.approx(math.degrees(0.3), abs=1e-6)


def test_load_run_api(tiny_run, image_folder):
    run = dpc.load_run(tiny_run, device="cpu")
    points, quats = run.predict([image_folder / "car_alpha.png", image_folder / "photo.jpg"])
    assert points.shape == (2, 300, 3) and quats.shape == (2, 4)
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones(2))
    assert "model" in run.frame  # no alignment saved yet
    # the same as the network on the prepared tensor
    x = run.prepare([image_folder / "photo.jpg"])
    assert x.shape == (1, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 + 1e-5
    with torch.no_grad():
        out = run.model(x)
    torch.testing.assert_close(points[1:], out.points)
    torch.testing.assert_close(quats[1:], out.pose_student)
    with pytest.raises(ImageError, match="broken.png"):
        run.predict([image_folder / "broken.png"])


def test_load_run_applies_saved_alignment(tiny_run, image_folder, tmp_path):
    """With eval/alignment.json, points and poses come out in the GT frame: points rotated
    by q_a, poses q_pred q_a^-1 (dpc.eval.metrics conventions)."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    q_a = quat_from_axis_angle(torch.tensor([0.2, 1.0, 0.1]).double(), torch.tensor(1.1).double())
    AlignmentResult(quat=q_a.tolist(), step=2).save(run_dir / "eval" / "alignment.json")
    run = dpc.load_run(run_dir, device="cpu")
    assert "paper alignment" in run.frame
    p = run.predict_full([image_folder / "photo.jpg"])
    torch.testing.assert_close(
        p.points, quat_rotate(q_a[None], p.points_model.double()).float(), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        quat_mul(p.quat.double(), q_a[None]).float(), p.quat_model, atol=1e-5, rtol=0
    )
    # with the fit poses saved (dpc.evaluate does), the flip-robust (majority) alignment is
    # used: 7 of 10 fit views say q_a, 3 say its front/back flip
    from dpc.eval.pose_report import FLIP_QUAT, attach_fit_poses

    g = torch.Generator().manual_seed(0)
    from dpc.camera import random_quat

    q_gt = random_quat(10, g, torch.float64)
    rel = torch.stack([q_a] * 7 + [quat_mul(torch.from_numpy(FLIP_QUAT), q_a)] * 3)
    al = AlignmentResult(quat=[1.0, 0, 0, 0], step=2)  # a wrong paper alignment
    attach_fit_poses(al, quat_mul(q_gt, rel).numpy(), q_gt.numpy(), "val[:2]")
    al.save(run_dir / "eval" / "alignment.json")
    run = dpc.load_run(run_dir, device="cpu")
    assert "flip-robust" in run.frame
    d = float(torch.rad2deg(2 * torch.acos(torch.dot(run.alignment, q_a).abs().clamp(max=1))))
    assert d < 0.01


def test_predict_folder_two_predictions_one_clear_error(tiny_run, image_folder, tmp_path, capsys):
    from dpc.eval.loaded_run import LoadedRun
    from dpc.predict import predict_images

    out = tmp_path / "out"
    s = predict_images(LoadedRun(tiny_run), image_folder, out, cell=96)
    err = capsys.readouterr().err
    assert [Path(r["image"]).name for r in s["predicted"]] == ["car_alpha.png", "photo.jpg"]
    assert list(s["failed"]) == [str(image_folder / "broken.png")]
    assert "broken.png: not a readable image" in err and "1 FAILED" in err
    assert any("readme.txt" in n for n in s["notes"])
    for name in ("car_alpha", "photo"):
        rec = json.loads((out / f"{name}.json").read_text())
        pose = rec["pose"]
        assert pose["predicted"] and len(pose["quaternion_wxyz"]) == 4
        assert 0 <= pose["azimuth_deg"] < 360 and -90 <= pose["elevation_deg"] <= 90
        assert len(pose["candidates_wxyz"]) == 2
        ply = (out / f"{name}.ply").read_bytes()
        assert b"element vertex 300" in ply
        im = Image.open(out / f"{name}.png")
        assert im.size[0] == 6 * 96 and im.size[1] > 96
    assert json.loads((out / "summary.json").read_text())["failed"]


def test_predict_cli_exit_status_and_help(tiny_run, image_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "cli"
    p = subprocess.run(
        [sys.executable, "-m", "dpc.predict", f"run_dir={tiny_run}", f"images={image_folder}",
         f"out={out}", "cell=64"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    assert "broken.png" in p.stderr and "predicted 2 of 3" in p.stderr
    assert sorted(f.name for f in out.iterdir()) == sorted(
        [f"{n}.{e}" for n in ("car_alpha", "photo") for e in ("json", "ply", "png")]
        + ["summary.json"]
    )
    assert not (tmp_path / "outputs").exists()  # hydra writes nothing else
    # a glob with only good files: exit 0
    p = subprocess.run(
        [sys.executable, "-m", "dpc.predict", f"run_dir={tiny_run}",
         f"images={image_folder}/*.jpg", f"out={tmp_path / 'g'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert (tmp_path / "g" / "photo.png").exists()
    h = subprocess.run(
        [sys.executable, "-m", "dpc.predict", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert h.returncode == 0 and "images=<file, folder or glob>" in h.stdout
    assert "run_dir: ???" in h.stdout and "exit status is 1" in h.stdout


def test_camera_supervised_run_predicts_points_without_pose(tmp_path, image_folder):
    run_dir = _train(tmp_path, [], "car_quick_camera_supervision")
    run = dpc.load_run(run_dir, device="cpu")
    points, quats = run.predict(str(image_folder / "photo.jpg"))
    assert points.shape == (1, 300, 3) and quats is None
    from dpc.predict import predict_images

    s = predict_images(run, image_folder / "photo.jpg", tmp_path / "o", cell=64)
    pose = s["predicted"][0]["pose"]
    assert pose["predicted"] is False and not s["failed"]
    assert 0 <= pose["fitted_view"]["azimuth_deg"] < 360  # labelled as fitted, not predicted


def test_fit_view_recovers_a_known_view(tiny_run):
    """The best-fit view of a camera-supervised run's cloud: render a cloud from a grid
    view, give that silhouette as the foreground, get the view back."""
    import torch

    from dpc.eval.loaded_run import FIT_AZIMUTHS, FIT_ELEVATIONS

    run = dpc.load_run(tiny_run, device="cpu")
    g = torch.Generator().manual_seed(0)
    # an asymmetric cloud: a box with a bump at one end
    pts = torch.rand(1, 600, 3, generator=g) * torch.tensor([0.8, 0.25, 0.35]) - 0.4
    pts[0, :150] = torch.rand(150, 3, generator=g) * 0.15 + torch.tensor([0.2, 0.0, -0.05])
    q = view_quat(torch.deg2rad(torch.tensor([FIT_AZIMUTHS[5]])),
                  torch.deg2rad(torch.tensor([FIT_ELEVATIONS[2]])))  # fmt: skip
    S = run.renderer.settings.vox_size
    with torch.no_grad():
        fg = run.renderer(pts, q.float(), sigma=run.sigma, scale=torch.ones(1)).silhouette
    fit = run.fit_view(pts, torch.ones(1), (fg > 0.5).float().view(1, S, S))
    a = pose_angles(fit)
    assert float(a["azimuth_deg"][0]) == pytest.approx(FIT_AZIMUTHS[5], abs=1e-3)
    assert float(a["elevation_deg"][0]) == pytest.approx(FIT_ELEVATIONS[2], abs=1e-3)
