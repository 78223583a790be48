"""Evaluation pipeline: scoring known answers, bad inputs, and the CLIs end to end on a
tiny (untrained) checkpoint in the contract format on the synthetic dataset."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dpc.camera import quat_conj, quat_from_axis_angle, quat_mul, quat_rotate, random_quat
from dpc.cli import compose_options
from dpc.eval.alignment import AlignmentResult
from dpc.eval.predictions import Predictions, write_ply
from dpc.eval.score import score
from dpc.evaluate import run as run_evaluation

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def evaluate(**options) -> dict:
    """dpc.evaluate with ``options`` (configs/eval.yaml's names) over the defaults."""
    return run_evaluation(compose_options("eval", **options))


def _scene(n_obj=3, V=4, N=800, seed=0):
    rng = np.random.default_rng(seed)
    g = torch.Generator().manual_seed(seed)
    gt = rng.uniform(-0.4, 0.4, (n_obj, N, 3)).astype(np.float32)
    q_gt = random_quat(n_obj * V, g, torch.float64).view(n_obj, V, 4)
    return gt, q_gt


def test_score_perfect_prediction_in_rotated_frame():
    """Predictions = the GT clouds in a frame rotated by q_a^-1, poses q_gt q_a: with the
    alignment q_a, precision = coverage = 0 and every pose error is 0."""
    gt, q_gt = _scene()
    n_obj, V = q_gt.shape[:2]
    q_a = quat_from_axis_angle(
        torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    )
    pts = quat_rotate(quat_conj(q_a)[None], torch.from_numpy(gt).double())  # [n_obj, N, 3]
    preds = Predictions(
        points=pts[:, None].expand(-1, V, -1, -1).float().numpy().copy(),
        scale=np.ones((n_obj, V), np.float32),
        quat=quat_mul(q_gt, q_a.expand(n_obj, V, 4)).float().numpy(),
        candidates=None,
        object_ids=[f"o{i}" for i in range(n_obj)],
        split="test",
    )
    al = AlignmentResult(quat=q_a.tolist())
    res = score(preds, gt, q_gt.float().numpy(), al)
    assert res["precision"] < 1e-4 and res["coverage"] < 1e-4
    assert res["pose"]["accuracy"] == 1.0 and res["pose"]["median_deg"] < 0.05
    assert res["num_scored_views"] == n_obj * V
    # without the alignment the same predictions score badly
    res0 = score(preds, gt, q_gt.float().numpy(), AlignmentResult(quat=[1.0, 0, 0, 0]))
    assert res0["precision"] > 1.0 and res0["pose"]["median_deg"] > 50


def test_score_shift_gives_t():
    """Camera-supervised: a dense grid shifted by t along an axis scores |t| x 100 both ways."""
    ax = np.linspace(-0.4, 0.4, 15, dtype=np.float32)
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(1, -1, 3)
    t = 0.02
    preds = Predictions(
        points=(grid + np.array([0, t, 0], np.float32))[:, None],
        scale=np.ones((1, 1)),
        quat=None,
        candidates=None,
        object_ids=["a"],
        split="test",
    )
    res = score(preds, grid, np.zeros((1, 1, 4)), None)
    assert res["precision"] == pytest.approx(100 * t, rel=1e-4)
    assert res["coverage"] == pytest.approx(100 * t, rel=1e-4)
    assert "pose" not in res


def test_score_diagnostics_separate_stray_points():
    """A cloud equal to the GT except for k stray points 0.3 away: far_fraction = k / N,
    precision_near95 = 0 (the strays are under 5%) while precision = 30 k / N."""
    ax = np.linspace(-0.2, 0.2, 10, dtype=np.float32)
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(1, -1, 3)  # N 1000
    pred = grid.copy()
    k = 30
    pred[0, :k, 2] = 0.5  # straight above the grid's top face (z = 0.2) at grid (x, y)
    preds = Predictions(pred[:, None], np.ones((1, 1)), None, None, ["a"], "test")
    res = score(preds, grid, np.zeros((1, 1, 4)), None)
    d = res["diagnostics"]
    assert d["far_fraction"] == pytest.approx(k / 1000)
    assert d["precision_near95"] == pytest.approx(0.0, abs=1e-5)
    assert res["precision"] == pytest.approx(100 * 0.3 * k / 1000, rel=1e-3)
    assert res["per_object"][0]["far_fraction"] == [pytest.approx(k / 1000)]


def test_score_silhouette_diagnostic_counts_points_outside_a_mask():
    """One camera on the +x axis sees a square silhouette: the GT grid's own projection.
    Points of the grid are inside it, the k strays moved far along the image plane are
    outside, and a point moved only along the viewing ray stays inside."""
    from dpc.camera import view_quat, world_to_grid

    ax = np.linspace(-0.2, 0.2, 10, dtype=np.float32)
    grid = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(1, -1, 3)
    q = view_quat(torch.tensor([0.0]), torch.tensor([0.0]))  # camera at +x, looks along -x
    S = 65
    g = world_to_grid(torch.from_numpy(grid), q)[0]  # [N, (depth, row, col)]
    px = (g[:, 1:] + 0.5) * (S - 1)  # pixel (row, col) of every GT point
    lo, hi = px.amin(0).floor(), px.amax(0).ceil()
    mask = np.zeros((1, 1, S, S), np.uint8)
    mask[0, 0, int(lo[0]) : int(hi[0]) + 1, int(lo[1]) : int(hi[1]) + 1] = 255
    pred = grid.copy()
    k = 30
    pred[0, :k, 1] = 0.45  # y up: far above the top row of the silhouette
    pred[0, k, 0] = 0.45  # along the viewing ray (x): far from the GT, still inside
    preds = Predictions(pred[:, None], np.ones((1, 1)), None, None, ["a"], "test")
    res = score(preds, grid, q[None].numpy(), None, masks=mask, cell_px=2.0)
    d = res["diagnostics"]
    assert d["outside_fraction"] == pytest.approx(k / 1000)
    assert d["far_fraction"] == pytest.approx((k + 1) / 1000)
    assert d["far_outside_fraction"] == pytest.approx(k / 1000)
    assert res["per_object"][0]["outside_fraction"] == [pytest.approx(k / 1000)]
    # without masks the diagnostic is absent, the rest unchanged
    res0 = score(preds, grid, q[None].numpy(), None)
    assert "outside_fraction" not in res0["diagnostics"]
    assert res0["precision"] == pytest.approx(res["precision"])


def test_score_skips_nan_views_and_missing_gt_with_counts():
    gt, q_gt = _scene(n_obj=3, V=2)
    pts = np.repeat(gt[:, None], 2, 1).copy()
    pts[0, 1, 5] = np.nan  # one bad view
    gt_missing = gt.copy()
    gt_missing[2] = 0.0  # object 2 has no ground truth (zero-filled row)
    preds = Predictions(pts, np.ones((3, 2)), None, None, ["a", "b", "c"], "test")
    with pytest.warns(UserWarning) as rec:
        res = score(preds, gt_missing, q_gt.numpy(), None)
    msgs = " ".join(str(r.message) for r in rec)
    assert "NaN" in msgs and "without usable ground truth" in msgs
    assert res["num_scored_views"] == 3  # 6 views - 1 NaN view - 2 views of object c
    assert res["skipped"]["objects_without_gt"] == ["c"]
    assert res["skipped"]["views_with_nan_points"] == [["a", 1]]
    with pytest.raises(ValueError, match="NaN"):
        score(preds, gt, q_gt.numpy(), None, strict=True)
    with pytest.raises(ValueError, match="ground truth"):
        score(
            Predictions(gt[:, None], np.ones((3, 1)), None, None, ["a", "b", "c"], "t"),
            gt_missing,
            q_gt.numpy(),
            None,
            strict=True,
        )
    allnan = Predictions(
        np.full((1, 1, 4, 3), np.nan, np.float32), np.ones((1, 1)), None, None, ["a"], "t"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no view could be scored"):
            score(allnan, gt[:1], q_gt.numpy(), None)


def test_write_ply_reads_back(tmp_path):
    from dpc.eval.alignment import import_open3d

    p = np.random.default_rng(0).uniform(-0.5, 0.5, (100, 3)).astype(np.float32)
    o3d = import_open3d()
    pc = o3d.io.read_point_cloud(str(write_ply(tmp_path / "a.ply", p)))
    np.testing.assert_allclose(np.asarray(pc.points), p, atol=1e-7)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An untrained debug-size model saved as ``checkpoints/last.pt`` (contract format)."""
    from hydra import compose, initialize_config_dir

    from dpc.models import build_model
    from dpc.runs import save_checkpoint

    run_dir = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=debug",
                f"paths.run_dir={run_dir}",
                f"paths.output_root={run_dir}",
            ],
        )
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(run_dir / "checkpoints" / "last.pt", model, None, 7, cfg)
    return run_dir


@pytest.mark.filterwarnings("ignore:global alignment. only")
def test_evaluate_cli_end_to_end(tiny_run, capsys):
    from dpc.evaluate import main

    main([f"run_dir={tiny_run}", "split=test", "progress=false", "ply_views=2"])
    out = tiny_run / "eval" / "test"
    prec, cov = (float(x) for x in (out / "chamfer_pred_test.txt").read_text().split())
    acc, med = (float(x) for x in (out / "pose_error_pred_test.txt").read_text().split())
    res = json.loads((out / "metrics_test.json").read_text())
    assert res["precision"] == pytest.approx(prec, abs=1e-5) and math.isfinite(cov)
    assert 0 <= acc <= 1 and 0 <= med <= 180
    assert res["checkpoint_step"] == 7 and len(res["per_object"]) == 4
    assert (
        len(res["per_object"][0]["precision"]) == 5
        and len(res["per_object"][0]["pose_error_deg"]) == 5
    )
    assert 0 <= res["diagnostics"]["outside_fraction"] <= 1
    b = res["baselines"]
    assert b["mean_shape"]["chamfer"] > 0 and 0 <= b["mean_view"]["accuracy"] <= 1
    # the GT clouds have more points than the 500 predicted: the matched baseline is there
    assert b["mean_shape_matched"]["num_points"] == 500
    assert "mean shape  at the predictions' 500 points" in capsys.readouterr().out
    assert len(list((out / "ply").glob("*.ply"))) == 8
    npz = np.load(out / "predictions.npz")
    assert npz["points"].shape == (4, 5, 500, 3) and npz["quat"].shape == (4, 5, 4)
    al = AlignmentResult.load(tiny_run / "eval" / "alignment.json")
    assert al.step == 7 and al.split == "val"
    # second run reuses the saved alignment
    capsys.readouterr()
    res2 = evaluate(run_dir=str(tiny_run), split="test", progress=False, baselines=False)
    assert "using saved global alignment" in capsys.readouterr().out
    assert res2["precision"] == pytest.approx(res["precision"], rel=1e-6)
    # the paper-protocol and the flip-robust figures, with what they were fitted on (#15)
    rep = res["pose_report"]
    assert rep["paper"]["accuracy"] == pytest.approx(acc, abs=1e-6)
    assert rep["paper"]["median_deg"] == pytest.approx(med, abs=1e-4)
    assert rep["fit"]["subset"] == "val[:4] (4 objects)" and rep["fit"]["num_views"] == 20
    assert rep["eval"]["subset"] == "test[:4] (4 objects)" and rep["eval"]["num_views"] == 20
    for k in ("accuracy", "median_deg", "accuracy_up_to_flip", "flipped_share",
              "accuracy_up_to_twin", "twin_share"):  # fmt: skip
        assert 0 <= rep["robust"][k] <= 180 and k in rep["paper"]
    assert rep["robust"]["accuracy"] <= rep["robust"]["accuracy_up_to_flip"]
    assert rep["robust"]["accuracy"] <= rep["robust"]["accuracy_up_to_twin"]
    assert isinstance(rep["ambiguity"]["ambiguous"], bool) and "rule" in rep["ambiguity"]
    assert res2["pose_report"]["robust"] == rep["robust"]
    # an alignment.json from before the fit poses were saved is recomputed, not misused
    d = json.loads((tiny_run / "eval" / "alignment.json").read_text())
    d.pop("fit_q_pred"), d.pop("fit_q_gt"), d.pop("fit_subset")
    (tiny_run / "eval" / "alignment.json").write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="recomputing"):
        res3 = evaluate(run_dir=str(tiny_run), split="test", progress=False, baselines=False)
    assert res3["pose_report"]["paper"] == rep["paper"]


@pytest.mark.filterwarnings("ignore:global alignment. only")
def test_pose_from_silhouette_chooses_the_best_reprojecting_candidate(tiny_run):
    """pose_from=silhouette: per view the candidate whose render matches the input view's
    mask best, in a folder and an alignment file of its own (the student's stay)."""
    from dpc.data import open_run_data, prepare_images, prepare_masks
    from dpc.evaluate import alignment_file
    from dpc.render import build_renderer, final_sigma
    from dpc.runs import open_run

    student = tiny_run / "eval" / "test" / "metrics_test.json"
    before = student.read_text() if student.exists() else None
    res = evaluate(run_dir=str(tiny_run), split="test", progress=False, pose_from="silhouette")
    out = tiny_run / "eval" / "test_pose_silhouette"
    assert res["pose_from"] == "silhouette" and (out / "metrics_test.json").exists()
    assert (tiny_run / "eval" / "alignment_silhouette.json").exists()
    # alignment=<run dir> reads the matching file
    assert alignment_file(tiny_run, "silhouette") == tiny_run / "eval" / "alignment_silhouette.json"
    # the student's figures untouched
    assert (student.read_text() if student.exists() else None) == before
    npz = np.load(out / "predictions.npz")
    q, cands = torch.from_numpy(npz["quat"]), torch.from_numpy(npz["candidates"])
    # each chosen pose is one of the view's candidates, the one rendering closest to its mask
    run = open_run(tiny_run, "cpu")
    reader = open_run_data(run.cfg, None, tiny_run)
    images, masks = reader.images("test")[:1], reader.masks("test")[:1]
    renderer, sigma = build_renderer(run.cfg), final_sigma(run.cfg)
    with torch.no_grad():
        o = run.model(prepare_images(images[0], int(run.cfg.data.image_size)))
        M = o.pose_candidates.shape[1]
        G = renderer.settings.vox_size
        sil = renderer(o.points.repeat_interleave(M, 0), o.pose_candidates.reshape(-1, 4),
                       sigma=sigma, scale=o.scale.repeat_interleave(M, 0)).silhouette  # fmt: skip
        err = (sil.view(-1, M, G, G) - prepare_masks(masks[0], G)[:, None]).square().sum((2, 3))
    best = o.pose_candidates[torch.arange(len(err)), err.argmin(1)]
    torch.testing.assert_close(q[0].float(), best.float(), atol=1e-5, rtol=0)
    # validation's choose_by_silhouette picks the same from the student's predictions
    # (no second network pass)
    from dpc.eval.predictions import choose_by_silhouette, predict_split

    size = int(run.cfg.data.image_size)
    preds = predict_split(run.model, reader, "test", size, renderer=renderer, sigma=sigma,
                          progress=False)  # fmt: skip
    chosen = choose_by_silhouette(preds, reader.masks("test"), renderer, sigma, batch_size=3)
    np.testing.assert_array_equal(chosen, npz["quat"].astype(np.float32))
    assert (cands[0].float() - q[0, :, None].float()).abs().sum(-1).min(-1).values.max() < 1e-5
    with pytest.raises(ValueError, match="pose_from"):
        evaluate(run_dir=str(tiny_run), split="test", progress=False, pose_from="oracle")


def test_visualize_cli(tiny_run):
    from dpc.visualize import main

    out = tiny_run / "vis"
    main([f"run_dir={tiny_run}", "objects=[1]", f"out={out}", "render_size=48", "cell=64"])
    from PIL import Image

    im = Image.open(out / "obj0001.png")
    assert im.size[0] >= 4 * 64 and im.size[1] >= 3 * 64
    assert (out / "obj0001.html").exists()
    from dpc.visualize import run as write_pictures

    with pytest.raises(ValueError, match="out of range"):
        write_pictures(compose_options("visualize", run_dir=str(tiny_run), objects=[99]))


def test_run_dir_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate(run_dir=str(tmp_path), progress=False)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        evaluate(run_dir=str(tmp_path / "nope"), progress=False)
    with pytest.raises(ValueError, match="unknown options"):
        evaluate(run_dir=str(tmp_path), splt="test")


def test_score_skips_views_without_gt_pose():
    gt, q_gt = _scene(n_obj=2, V=3)
    q = q_gt.float().numpy().copy()
    q[1, 2] = np.nan  # missing GT pose of one view
    preds = Predictions(
        np.repeat(gt[:, None], 3, 1), np.ones((2, 3)), q_gt.float().numpy(), None, ["a", "b"], "t"
    )
    with pytest.warns(UserWarning, match="pose"):
        res = score(preds, gt, q, AlignmentResult(quat=[1.0, 0, 0, 0]))
    assert res["pose"]["num_views"] == 5 and res["skipped"]["views_without_pose"] == [["b", 2]]
    assert res["pose"]["accuracy"] == 1.0


def test_missing_dataset_is_a_clear_error_not_a_build(tmp_path):
    from hydra import compose, initialize_config_dir

    from dpc.models import build_model
    from dpc.runs import save_checkpoint

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose(
            "train",
            overrides=[
                "+experiment=debug",
                "data=car_quick",
                f"paths.run_dir={tmp_path}",
                f"paths.data_root={tmp_path / 'nodata'}",
                "model.pc_num_points=50",
            ],
        )
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", build_model(cfg), None, 1, cfg)
    with pytest.raises(FileNotFoundError, match="data_path="):
        evaluate(run_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "nodata").exists()


@pytest.mark.parametrize(
    "command, usage, options",
    [
        ("dpc.evaluate", "dpc.evaluate run_dir=", ["run_dir", "split", "alignment", "ply_views"]),
        ("dpc.visualize", "dpc.visualize run_dir=", ["run_dir", "split", "objects", "view"]),
        ("dpc.predict", "dpc.predict run_dir=", ["run_dir", "images", "out"]),
        ("dpc.train", "dpc.train +experiment=", ["trainer", "loss", "render"]),
        ("dpc.training.preview", "dpc.training.preview run_dir=", ["run_dir", "n", "split"]),
        ("dpc.render_demo", "dpc.render_demo [shape=", ["shape", "views", "image_size"]),
        ("dpc.eval.hull_bound", "dpc.eval.hull_bound dataset=", ["dataset", "points"]),
        ("dpc.eval.pose_ambiguity", "dpc.eval.pose_ambiguity dataset=",
         ["dataset", "vox_size", "sigma", "scale"]),
        ("dpc.eval.time_eval", "dpc.eval.time_eval [objects=", ["objects", "val_objects"]),
        ("dpc.data sheet", "dpc.data sheet path=", ["path", "out", "split", "n"]),
        ("dpc.data import-original", "dpc.data import-original src=", ["src", "synset", "out"]),
    ],
)
def test_every_command_has_one_style_and_its_help_lists_the_options(command, usage, options):
    """README "Commands": key=value options, --help with the usage line and every option
    (hydra prints `n` quoted)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    module, *sub = command.split()
    r = subprocess.run(
        [sys.executable, "-m", module, *sub, "--help"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert f"python -m {usage}" in r.stdout
    for key in options:
        assert f"\n{key}:" in r.stdout or f"\n'{key}':" in r.stdout, key


@pytest.mark.filterwarnings("ignore:global alignment. only")
def test_a_data_set_with_only_a_test_split(tiny_run, monkeypatch, capsys):
    """As a new user evaluating a trained model on another data set that holds only a
    test split: the error says what to do, the run's saved alignment can be reused
    (alignment=<run dir or file>), and the baselines are skipped with a note."""
    import dpc.evaluate
    from dpc.data import synthetic_dataset

    evaluate(run_dir=str(tiny_run), split="test", progress=False, baselines=False)
    assert (tiny_run / "eval" / "alignment.json").exists()
    only_test = synthetic_dataset({"test": 2}, num_views=5, image_size=32, num_points=300)
    assert set(only_test.splits) == {"test"}
    monkeypatch.setattr(dpc.evaluate, "open_run_data", lambda *a, **k: only_test)
    with pytest.raises(ValueError, match=f"alignment=<run dir or alignment.json>.*{tiny_run}"):
        evaluate(run_dir=str(tiny_run), split="test", progress=False, recompute_alignment=True)
    out = tiny_run / "eval" / "only_test"
    with pytest.warns(UserWarning, match="no train objects"):
        res = evaluate(run_dir=str(tiny_run), split="test", progress=False, out=str(out),
                       alignment=str(tiny_run))  # fmt: skip
    assert "using the given alignment" in capsys.readouterr().out
    assert res["baselines"] == {"note": "no train objects in this data set: baselines skipped"}
    assert len(res["per_object"]) == 2 and "pose" in res
    # the alignment file itself works as well; a missing one is a clear error
    file = str(tiny_run / "eval" / "alignment.json")
    res2 = evaluate(run_dir=str(tiny_run), split="test", progress=False, out=str(out),
                    alignment=file, baselines=False)  # fmt: skip
    assert res2["pose"] == res["pose"]
    with pytest.raises(FileNotFoundError, match="no alignment file"):
        evaluate(run_dir=str(tiny_run), progress=False, alignment=str(out / "none.json"))
