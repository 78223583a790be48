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
RENAMED: dict[str, str] = {}  # old dotted key -> new dotted key (none so far)
# keys added since, with the value every experiment gets (the previous behaviour)
ADDED = {
    "render.kernel_variant": "passes",
    "loss.surface_depth_weight": 0.0,
    "loss.depth_coverage_weight": 0.0,
    "loss.depth_coverage_samples": 256,
    "loss.hull_surface_weight": 0.0,
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
