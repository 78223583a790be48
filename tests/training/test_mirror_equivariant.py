"""Mirror-equivariant pose heads (model.pose_mirror_equivariant): the pose of a left-right
mirrored input is the mirrored pose (-az, el), by construction (issue 20, RESULTS.md
"Round 10")."""

import math

import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import camera_azel

MIRROR = [
    "model.pose_parametrization=view",
    "model.pose_elevation_range=[-20,40]",
    "model.pc_mirror_symmetric=true",
    "model.pose_candidates_init=ring",
    "model.pose_mirror_equivariant=true",
]
TWIN = ["model.pose_flip_candidates=true", "model.pose_flip_axis=twin",
        "model.pose_predict_num_candidates=2"]  # fmt: skip


def _circle(x):
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


@torch.no_grad()
def _mirror_error(model, partner, seed=0):
    """Largest azimuth and elevation error (radians) of the candidates and the student of
    mirrored images against the mirrors (-az, el) of the partners' on the images."""
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    out, mirrored = model(x), model(x.flip(-1))
    az, el = camera_azel(out.pose_candidates.double())
    maz, mel = camera_azel(mirrored.pose_candidates.double())
    a, e = camera_azel(out.pose_student.double())
    sa, se = camera_azel(mirrored.pose_student.double())
    az_err = max(_circle(maz + az[:, partner]).abs().max(), _circle(sa + a).abs().max())
    el_err = max((mel - el[:, partner]).abs().max(), (se - e).abs().max())
    return float(az_err), float(el_err)


@pytest.mark.parametrize("extra,partner", [([], [0, 3, 2, 1]), (TWIN, [1, 0, 3, 2])])
def test_mirrored_input_gives_the_mirrored_poses(extra, partner):
    """Known answer: 4 ring heads at 0, 90, 180, 270 degrees pair 90 with 270; 2 heads on
    the front half at -45 / 45 pair with each other and so do their twins. The same
    network without the option is not equivariant (the test fails if it is ignored)."""
    from dpc.models import build_model

    torch.manual_seed(0)
    model = build_model(compose_cfg(TINY + MIRROR + extra))
    assert model.pose_heads.mirror_partner() == partner[: len(model.pose_heads.candidates)]
    # move the heads off their ring start, so the pairing is what is tested, not the init
    with torch.no_grad():
        for p in model.pose_heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
    az_err, el_err = _mirror_error(model, partner)
    assert az_err < 1e-4 and el_err < 1e-4
    torch.manual_seed(0)
    plain = build_model(compose_cfg(TINY + MIRROR[:-1] + extra))
    with torch.no_grad():
        for p in plain.pose_heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
    assert max(_mirror_error(plain, partner)) > 1e-2


def test_ring_start_is_kept():
    from dpc.models import build_model

    out = build_model(compose_cfg(TINY + MIRROR + TWIN))(torch.rand(3, 3, 32, 32))
    az, el = camera_azel(out.pose_candidates)
    want = torch.tensor([-45.0, 45.0, -135.0, 135.0])
    assert (_circle(torch.deg2rad(torch.rad2deg(az) - want))).abs().max() < math.radians(5.0)
    assert torch.rad2deg(el).abs().max() < 5.0


def test_mirror_equivariant_needs_its_prerequisites():
    from dpc.models import build_model

    for drop in ("model.pc_mirror_symmetric=false", "model.pose_parametrization=quaternion"):
        with pytest.raises(ValueError, match="model.pose_mirror_equivariant"):
            build_model(compose_cfg(TINY + MIRROR + [drop]))
    with pytest.raises(ValueError, match="pose_candidates_init=ring"):
        build_model(compose_cfg(TINY + MIRROR + ["model.pose_candidates_init=random"]))
    # ring heads over half the circle (flip candidates) are not symmetric about 0
    with pytest.raises(ValueError, match="not symmetric about azimuth 0"):
        build_model(compose_cfg(TINY + MIRROR + ["model.pose_flip_candidates=true"]))


def test_train_and_refit_end_to_end_keep_the_student_equivariant(tmp_path):
    """Training, the student refit (on the images' and their mirrors' codes) and the
    selector's fit run; the refitted student is still equivariant."""
    from dpc.runs import open_run
    from dpc.train import train

    cfg = compose_cfg(
        TINY + MIRROR + TWIN + ["trainer.max_steps=2", "trainer.student_refit_steps=5",
                                "model.pose_selector=true"],
        tmp_path,
    )  # fmt: skip
    summary = train(cfg)
    assert summary["student_refit"]["views"] == 8 * 5
    model = open_run(tmp_path, torch.device("cpu")).model
    assert model.mirror_equivariant and bool(model.selector_fitted)
    _, el_err = _mirror_error(model, [1, 0, 3, 2])
    assert el_err < 1e-4
