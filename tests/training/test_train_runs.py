"""Short CPU training runs at tiny sizes: every experiment family, the NaN guard,
validation, the real-dataset path and logging files."""

import json

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.models import candidate_count
from dpc.runs import load_checkpoint, open_run
from dpc.train import NonFiniteLossError, check_loss_config, train
from dpc.training.step import compute_step

TINY_NO_DATA = [o for o in TINY if not o.startswith("data")]


def _records(run_dir):
    return [json.loads(l) for l in (run_dir / "train_log.jsonl").read_text().splitlines()]


FAMILIES = {
    "unsupervised": ["+experiment=car_quick", "model.pose_predict_num_candidates=2"],
    "camera_supervision": ["+experiment=car_quick_camera_supervision"],
    "one_candidate": ["+experiment=car_quick_1cand"],
    "no_anneal": ["+experiment=car_quick_no_anneal"],
    "rgb_color_loss": [
        "+experiment=car_quick_camera_supervision",
        "model.pc_rgb=true",
        "loss.color_weight=0.1",
    ],
    "max_projection": ["+experiment=car_camera_supervision", "render.projection=max"],
    "paper_unsupervised": ["+experiment=chair"],
    "silhouette_distance": [
        "+experiment=car_quick",
        "model.pose_predict_num_candidates=2",
        "loss.silhouette_distance_weight=1.0",
        "loss.silhouette_distance_from_step=1",
    ],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_two_step_run(family, tmp_path):
    run = tmp_path / "run"
    cfg = compose_cfg(FAMILIES[family] + TINY + ["trainer.max_steps=2"], run)
    summary = train(cfg)
    assert summary["step"] == 2
    env = json.loads((run / "summary.json").read_text())["environment"]
    assert env["packages"]["torch"] == torch.__version__  # what the run was trained on
    assert env["torch_threads"] == torch.get_num_threads() and env["python"]
    recs = [r for r in _records(run) if "loss" in r]
    assert [r["step"] for r in recs] == [0, 1]
    for r in recs:
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss", "projection_loss"))
        assert r["sigma"] > 0 and 0 < r["keep_fraction"] <= 1
    if cfg.model.predict_pose and cfg.model.pose_predict_num_candidates > 1:
        assert sum(recs[0]["winner_counts"]) == cfg.trainer.batch_size * cfg.data.views_per_item
        assert "student_loss" in recs[0]
    if cfg.loss.color_weight > 0:
        assert "color_loss" in recs[0]
    if cfg.loss.silhouette_distance_weight > 0:
        assert "silhouette_distance" not in recs[0]  # off before silhouette_distance_from_step
        assert recs[1]["silhouette_distance"] >= 0  # on from step 1
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["step"] == 2 and set(ck) >= {"model", "optimizer", "step", "rng", "config"}
    assert (run / "config.yaml").exists()
    loaded = open_run(run)
    model, cfg2 = loaded.model, loaded.cfg
    assert loaded.step == 2 and loaded.settings.num_candidates == candidate_count(cfg)
    assert cfg2.name == cfg.name and not model.training


def test_training_reduces_loss_and_validates(tmp_path):
    run = tmp_path / "run"
    cfg = compose_cfg(
        ["+experiment=car_quick_camera_supervision"]
        + TINY
        + [
            "trainer.max_steps=60",
            "trainer.log_every=10",
            "val.every=60",
            "val.num_objects=2",
            "optim.lr=1e-3",
        ],
        run,
    )
    summary = train(cfg)
    recs = [r for r in _records(run) if "loss" in r]
    assert recs[-1]["projection_loss"] < 0.7 * recs[0]["projection_loss"]
    val = summary["val"]
    assert val["projection_loss"] > 0 and val["chamfer"] > 0  # camera supervision: Chamfer


def test_nan_guard_skips_then_stops(tmp_path, monkeypatch):
    import dpc.train

    def nan_at_some_steps(*args, **kwargs):
        out = compute_step(*args, **kwargs)
        step = args[4]
        return out._replace(loss=out.loss * float("nan")) if step in (2, 4, 5, 6) else out

    monkeypatch.setattr(dpc.train, "compute_step", nan_at_some_steps)
    run = tmp_path / "run"
    cfg = compose_cfg(
        ["+experiment=car_quick_camera_supervision"]
        + TINY
        + ["trainer.max_steps=20", "trainer.nan_max_consecutive=3"],
        run,
    )
    with pytest.raises(NonFiniteLossError, match="3 consecutive non-finite losses at step 6"):
        train(cfg)
    recs = _records(run)
    events = [r for r in recs if "event" in r]
    assert [e["step"] for e in events] == [2, 4, 5, 6]
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["step"] == 6 and ck["stopped_by"] == "non-finite loss"
    # the checkpoint is the last good state: the weights after step 3 (steps 4-6 skipped)
    for p in ck["model"].values():
        assert torch.isfinite(p).all()
    # skipped step 2 did not stop the run: step 3 trained
    assert any(r.get("step") == 3 and "loss" in r for r in recs)


def test_real_dataset_is_built_when_missing(tmp_path):
    run = tmp_path / "run"
    data_root = tmp_path / "data"
    cfg = compose_cfg(
        [
            "+experiment=car_quick_camera_supervision",
            "data=car_quick",
            f"paths.data_root={data_root}",
        ]
        + TINY_NO_DATA
        + ["data.image_size=64", "trainer.max_steps=2"],
        run,
    )
    assert cfg.data.root == str(data_root)
    train(cfg)
    assert (data_root / "car_quick" / "manifest.json").exists()


def test_missing_dataset_stops_with_command(tmp_path):
    cfg = compose_cfg(
        [
            "+experiment=car_quick",
            "data.build_if_missing=false",
            f"paths.data_root={tmp_path}/nothing",
        ]
        + TINY_NO_DATA,
        tmp_path / "run",
    )
    with pytest.raises(
        FileNotFoundError, match="python -m dpc.data build category=car preset=small"
    ):
        train(cfg)


@pytest.mark.parametrize(
    "override",
    [
        "loss.silhouette_distance_weight=-0.1",
        "loss.silhouette_distance_from_step=-1",
        "loss.repulsion_radius=0",
        "loss.repulsion_neighbors=0",
        "loss.repulsion_queries=0",
    ],
)
def test_negative_loss_setting_is_a_clear_error(override):
    cfg = compose_cfg(["+experiment=car_quick", override] + TINY)
    with pytest.raises(ValueError, match=override.split("=")[0].replace(".", r"\.")):
        check_loss_config(cfg.loss)
    check_loss_config(compose_cfg(["+experiment=car_quick"] + TINY).loss)  # defaults pass
