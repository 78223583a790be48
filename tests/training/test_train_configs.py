"""Every experiment composes, with the paper's settings where they apply."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from train_testutils import CONFIG_DIR, compose_cfg

from dpc.models import build_model

EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))
REQUIRED = {
    "car",
    "chair",
    "airplane",
    "car_camera_supervision",
    "chair_camera_supervision",
    "airplane_camera_supervision",
    "car_quick",
    "car_quick_camera_supervision",
}


def test_required_experiments_exist():
    assert REQUIRED <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name, tmp_path):
    cfg = compose_cfg([f"+experiment={name}"], tmp_path / "run")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.name == name
    assert cfg.render.pc_gauss_kernel_size % 2 == 1
    assert cfg.data.views_per_item <= 5
    if "camera_supervision" in name:
        assert not cfg.model.predict_pose
    elif name in ("car", "chair", "airplane", "car_quick", "airplane_quick"):
        assert cfg.model.predict_pose and cfg.model.pose_predict_num_candidates == 4
        assert cfg.model.pose_predictor_student
        assert cfg.loss.pose_predictor_student_loss_weight == 20


@pytest.mark.parametrize("name", ["car", "chair", "airplane"])
def test_paper_settings(name, tmp_path):
    cfg = compose_cfg([f"+experiment={name}"], tmp_path / "run")
    assert cfg.data.name == name and cfg.data.image_size == 128
    assert (cfg.render.vox_size, cfg.render.pc_gauss_kernel_size) == (64, 21)
    assert (cfg.render.pc_relative_sigma, cfg.render.pc_relative_sigma_end) == (3.0, 0.2)
    assert cfg.render.pc_point_dropout_start == 0.07
    assert cfg.model.pc_num_points == 8000
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (1e-4, 1e-3)
    assert (cfg.trainer.batch_size, cfg.data.views_per_item) == (8, 4)


def test_car_quick_is_cpu_sized(tmp_path):
    cfg = compose_cfg(["+experiment=car_quick_camera_supervision"], tmp_path / "run")
    assert (cfg.render.vox_size, cfg.data.image_size, cfg.model.pc_num_points) == (32, 64, 2000)
    assert cfg.data.name == "car_small"
    m = build_model(cfg)
    assert m.encoder.image_size == 64 and m.decoder.num_points == 2000


def test_airplane_quick_is_cpu_sized_on_20_views(tmp_path):
    from dpc.data.config import make_settings, settings_for_name

    cfg = compose_cfg(["+experiment=airplane_quick_camera_supervision"], tmp_path / "run")
    assert (cfg.render.vox_size, cfg.data.image_size, cfg.model.pc_num_points) == (32, 64, 2000)
    assert cfg.data.name == "airplane_views20"
    # the training config's dataset name resolves to the 20-view build settings
    st = make_settings(**settings_for_name(cfg.data.name))
    assert (st.category, st.views, st.dataset_name) == ("airplane", 20, "airplane_views20")


def test_experiment_without_plus_is_not_in_defaults(tmp_path):
    # `experiment` must stay out of the defaults list, or `+experiment=` breaks
    text = Path(CONFIG_DIR, "train.yaml").read_text()
    defaults = text.split("defaults:")[1].split("\n\n")[0]
    assert "experiment" not in defaults
