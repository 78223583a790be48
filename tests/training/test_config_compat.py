"""Every experiment name keeps its resolved values: the resolved training config of each
experiment at commit 8e3acfa (before the config groups `model=camera_supervision` and
`size=cpu`) is stored in data/resolved/<name>.yaml (`_default`: no experiment); composing
it now must give the same values, apart from the keys listed here."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from train_testutils import compose_cfg

RESOLVED = Path(__file__).with_name("data") / "resolved"
# keys removed since the fixtures were written (test aids out of the product config:
# tests patch dpc.training.step.compute_step instead)
REMOVED = {"trainer.debug_nan_steps", "trainer.debug_step_sleep"}
# old dotted key -> new dotted key (the student weight got the original's name; a number
# under the old key still works, dpc.runs.normalize_loss_config)
RENAMED = {"loss.pose_student_align_loss": "loss.pose_predictor_student_loss_weight"}
# keys added since, with the value every experiment gets (the previous behaviour)
ADDED = {
    "render.kernel_variant": "passes",
    "loss.surface_depth_weight": 0.0,
    "loss.depth_coverage_weight": 0.0,
    "loss.depth_coverage_samples": 256,
    "loss.hull_surface_weight": 0.0,
    "loss.surface_full_res": False,
    "loss.pose_student_align_loss": False,
    # fidelity switches (docs/training.md): dpc's behaviour by default, the original's
    # with `fidelity=original`
    "render.drc_logsum": False,
    "render.drc_logsum_clip_val": 1e-5,
    "render.pc_rgb_clip_after_conv": None,
    "render.pc_rgb_divide_by_occupancies": True,
    "render.pc_rgb_divide_by_occupancies_epsilon": 1e-4,
    "render.pc_rgb_divide_by_raw_occupancies": False,
    "render.pc_point_dropout_per_view": False,
    "model.pose_code_activation": "leaky_relu",
    "model.pose_flip_candidates": False,
    "model.pose_flip_axis": "camera",  # issue 20: the exact object flip is an option
    "model.pose_candidates_init": "random",  # issue 20: ring-started heads are an option
    "loss.hull_surface_from_step": 0,
    "trainer.student_refit_steps": 0,  # issue 20: the refit is an option
    "model.pose_selector": False,  # issue 20: the selector is an option
    "trainer.shape_refit_steps": 0,  # issue 20: the shape refit is an option
    "trainer.shape_refit_hull_weight": 10.0,
    "trainer.shape_refit_lr": 1.0e-4,
    "trainer.shape_refit_repulsion_weight": 0.0,  # issue 20: point repulsion is an option
    "loss.repulsion_weight": 0.0,
    "loss.repulsion_radius": 0.015,
    "loss.repulsion_neighbors": 4,
    "loss.repulsion_queries": 256,
    "loss.repulsion_from_step": 0,
    "model.pose_silhouette_weight": 0.0,  # issue 20: reading the pose with silhouettes too
    "model.pose_parametrization": "quaternion",  # issue 20: azimuth-elevation heads
    "model.pose_elevation_range": [-80.0, 80.0],
    "model.pc_mirror_symmetric": False,  # issue 20: a mirror-symmetric cloud is an option
    "model.pose_mirror_equivariant": False,  # issue 20: mirror-equivariant heads (round 10)
    "model.pose_mirror_readout": False,  # issue 20: the pose read with the mirror (round 11)
    "trainer.mirror_augment": False,  # issue 20: mirrored objects in the batches (round 11)
}
NAMES = sorted(p.stem for p in RESOLVED.glob("*.yaml"))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_fixtures_cover_the_experiments():
    assert len(NAMES) == 14 and "car_quick_camera_supervision" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_experiment_resolves_to_the_same_values(name, tmp_path):
    cfg = compose_cfg([] if name == "_default" else [f"+experiment={name}"])
    cfg.paths.run_dir = "RUN_DIR"  # hydra's own value, not set outside a hydra run
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    before = _flat(OmegaConf.to_container(OmegaConf.load(RESOLVED / f"{name}.yaml")))
    before = {RENAMED.get(k, k): v for k, v in before.items() if k not in REMOVED}
    for key, value in ADDED.items():
        assert now.pop(key) == value, key
    assert now == before
