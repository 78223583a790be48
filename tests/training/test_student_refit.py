"""``trainer.student_refit_steps`` (dpc/training/student_refit.py): after training, a fresh
student head (and, with ``model.pose_selector``, a selector head) fitted to the candidates
the network's own renders pick on the training views."""

import numpy as np
import pytest
import torch
from train_testutils import TINY, compose_cfg

from dpc.data import open_training_data
from dpc.eval.predictions import predict_split
from dpc.losses import student_loss
from dpc.models import build_model
from dpc.render import build_renderer
from dpc.runs import load_checkpoint
from dpc.train import train
from dpc.training.student_refit import check_refit, pose_codes, refit_student


def _setup(extra=()):
    cfg = compose_cfg(TINY + ["trainer.max_steps=2", *extra])
    torch.manual_seed(0)
    return cfg, build_model(cfg), open_training_data(cfg), build_renderer(cfg)


def _student_state(model):
    return {k: v.clone() for k, v in model.pose_heads.student.state_dict().items()}


def test_refit_fits_the_student_to_the_silhouette_choice_and_nothing_else():
    cfg, model, reader, renderer = _setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # the known answer: per training view, the candidate that best matches the view's mask
    want = predict_split(model, reader, "train", 32, renderer=renderer, sigma=0.5,
                         progress=False, pose_from="silhouette").quat  # fmt: skip
    target = torch.from_numpy(want).reshape(-1, 4)
    images = reader.images("train")
    codes = pose_codes(model, images.reshape(-1, *images.shape[2:]), 32, "cpu")
    with torch.no_grad():
        loss0 = float(student_loss(model.pose_heads.student(codes), target))
    r = refit_student(model, reader, renderer, 0.5, 32, 400, seed=0, progress=False)
    with torch.no_grad():
        loss1 = float(student_loss(model.pose_heads.student(codes), target))
    assert r["views"] == len(target) == 8 * 5
    assert r["loss_start"] == pytest.approx(loss0, abs=1e-6)
    assert r["loss_end"] == pytest.approx(loss1, abs=1e-6)
    assert loss1 < 0.2 * loss0 and loss1 < 0.02
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("pose_heads.student.") for k in changed)
    assert model.training  # the mode is restored


def test_refit_starts_from_a_fresh_head_so_a_repeat_gives_the_same_student():
    cfg, model, reader, renderer = _setup()
    refit_student(model, reader, renderer, 0.5, 32, 50, seed=3, progress=False)
    first = _student_state(model)
    refit_student(model, reader, renderer, 0.5, 32, 50, seed=3, progress=False)
    for k, v in _student_state(model).items():
        torch.testing.assert_close(v, first[k], rtol=0, atol=0)


def test_train_ends_with_the_refit_and_validates_after_it(tmp_path):
    extra = ["trainer.student_refit_steps=30", "val.every=2", "val.num_objects=2"]
    plain = compose_cfg(TINY + ["trainer.max_steps=2"], tmp_path / "plain")
    refit = compose_cfg(TINY + ["trainer.max_steps=2", *extra], tmp_path / "refit")
    train(plain)
    summary = train(refit)
    assert summary["student_refit"]["views"] == 8 * 5
    assert summary["val"]  # the last validation ran (after the refit)
    ck_plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    ck_refit = load_checkpoint(tmp_path / "refit" / "checkpoints" / "last.pt")["model"]
    # the same network but the student, which is the plain run's refitted
    for k in ck_plain:
        if not k.startswith("pose_heads.student."):
            torch.testing.assert_close(ck_refit[k], ck_plain[k], rtol=0, atol=0)
    torch.manual_seed(0)
    model = build_model(plain)
    model.load_state_dict(ck_plain)
    from dpc.render import final_sigma

    sigma = final_sigma(plain)
    refit_student(model, open_training_data(plain), build_renderer(plain), sigma, 32, 30,
                  seed=int(plain.seed), progress=False)  # fmt: skip
    for k, v in _student_state(model).items():
        torch.testing.assert_close(ck_refit["pose_heads.student." + k], v)


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="trainer.student_refit_steps"):
        check_refit(compose_cfg(TINY + ["trainer.student_refit_steps=-1"]))
    with pytest.raises(ValueError, match="trainer.student_refit_steps"):
        check_refit(
            compose_cfg(TINY + ["trainer.student_refit_steps=5", "model.predict_pose=false"])
        )
    assert check_refit(compose_cfg(TINY)) == 0


# ---- model.pose_selector: a head that picks one of the candidates, fitted in the refit ----


def test_the_selector_leaves_every_other_weight_as_without_it():
    torch.manual_seed(0)
    plain = build_model(compose_cfg(TINY)).state_dict()
    torch.manual_seed(0)
    with_sel = build_model(compose_cfg(TINY + ["model.pose_selector=true"])).state_dict()
    extra = {k for k in with_sel if k not in plain}
    assert extra and all(k.startswith("pose_selector.") or k == "selector_fitted" for k in extra)
    for k, v in plain.items():
        torch.testing.assert_close(with_sel[k], v, rtol=0, atol=0)


def test_the_pose_is_the_selected_candidate_once_fitted():
    torch.manual_seed(0)
    model = build_model(compose_cfg(TINY + ["model.pose_selector=true"])).eval()
    x = torch.rand(3, 3, 32, 32)
    out = model(x)
    assert out.pose_selected is None and torch.equal(out.pose, out.pose_student)
    with torch.no_grad():  # make candidate 2 win for every input
        last = model.pose_selector[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))
    model.selector_fitted.fill_(True)
    out = model(x)
    torch.testing.assert_close(out.pose_selected, out.pose_candidates[:, 2])
    assert torch.equal(out.pose, out.pose_selected)


def test_refit_fits_the_selector_to_the_silhouette_choice():
    cfg, model, reader, renderer = _setup(["model.pose_selector=true"])
    want = predict_split(model, reader, "train", 32, renderer=renderer, sigma=0.5,
                         progress=False, pose_from="silhouette").quat  # fmt: skip
    r = refit_student(model, reader, renderer, 0.5, 32, 300, seed=0, progress=False)
    assert bool(model.selector_fitted)
    assert r["selector_agreement"] > 0.9
    # the model's pose (what dpc.evaluate reads) is now the selector's pick: the
    # silhouette's choice on the views it agrees on, from the image alone
    got = predict_split(model, reader, "train", 32, progress=False).quat
    same = (abs(got - want).sum(-1) < 1e-6).mean()
    assert same == pytest.approx(r["selector_agreement"], abs=1e-6)


def test_a_selector_without_the_refit_is_an_error():
    with pytest.raises(ValueError, match="model.pose_selector"):
        check_refit(compose_cfg(TINY + ["model.pose_selector=true"]))
    with pytest.raises(ValueError, match="model.pose_selector"):
        build_model(compose_cfg(TINY + ["model.pose_selector=true", "model.predict_pose=false"]))


def test_a_run_with_a_selector_saves_it_fitted(tmp_path):
    from dpc.eval.loaded_run import load_run

    over = ["trainer.max_steps=2", "trainer.student_refit_steps=30", "model.pose_selector=true"]
    summary = train(compose_cfg(TINY + over, tmp_path / "run"))
    assert 0.0 <= summary["student_refit"]["selector_agreement"] <= 1.0
    run = load_run(tmp_path / "run")
    assert bool(run.model.selector_fitted)
    out = run.model(torch.rand(2, 3, 32, 32))
    assert out.pose_selected is not None and torch.equal(out.pose, out.pose_selected)
    # dpc.predict's path reads the pose the same way: with a huge silhouette weight, the
    # candidate whose render best fits the image's foreground
    from dpc.data.images import resize_masks
    from dpc.eval.loaded_run import foreground_mask
    from dpc.eval.predictions import silhouette_errors

    imgs = [np.asarray(open_training_data(run.cfg).images("val")[0, v]) for v in range(2)]
    run.model.pose_silhouette_weight = 1e6
    p = run.predict_full(imgs)
    x = run.prepare(imgs)
    o = run.model(x)
    m = resize_masks(foreground_mask(x), run.renderer.settings.vox_size)
    err = silhouette_errors(o.points, o.scale, o.pose_candidates, m, run.renderer, run.sigma)
    want = o.pose_candidates[torch.arange(2), err.argmin(1)]
    torch.testing.assert_close(p.quat_model, want)


def test_selector_with_silhouette_known_answers():
    from dpc.eval.predictions import selector_with_silhouette

    logits = torch.tensor([[1.0, 0.0, -5.0]])  # the selector leans to candidate 0
    err = torch.tensor([[12.0, 10.0, 1000.0]])  # the silhouettes lean to candidate 1 (1.2x)
    # log p0 - log p1 = 1; candidate 0 pays w * 0.2: it keeps the pose until w = 5
    assert selector_with_silhouette(logits, err, 0.0).item() == 0
    assert selector_with_silhouette(logits, err, 4.9).item() == 0
    assert selector_with_silhouette(logits, err, 5.1).item() == 1
    # the weight is relative to the view's best error: scaling every error changes nothing
    for w in (0.0, 4.9, 5.1, 100.0):
        assert selector_with_silhouette(logits, 7.0 * err, w) == selector_with_silhouette(
            logits, err, w
        )


def _fitted_selector_model(weight):
    cfg, model, reader, renderer = _setup(
        ["model.pose_selector=true", f"model.pose_silhouette_weight={weight}"]
    )
    with torch.no_grad():  # a selector that prefers candidate 2 by a little, for every input
        last = model.pose_selector[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.0, 0.5, 0.0]))
    model.selector_fitted.fill_(True)
    return model, reader, renderer


def test_the_pose_weighs_the_selector_against_the_silhouettes():
    from dpc.eval.predictions import prepare_masks, selector_with_silhouette, silhouette_errors

    kw = dict(renderer=None, sigma=0.5, progress=False)
    model, reader, renderer = _fitted_selector_model(0.0)
    kw["renderer"] = renderer
    by_sil = predict_split(model, reader, "train", 32, pose_from="silhouette", **kw)
    plain = predict_split(model, reader, "train", 32, **kw)
    torch.testing.assert_close(
        torch.from_numpy(plain.quat), torch.from_numpy(plain.candidates[:, :, 2])
    )
    # a huge weight: the silhouettes decide; a middling one: per view, the known formula
    model.pose_silhouette_weight = 1e6
    huge = predict_split(model, reader, "train", 32, **kw)
    assert (abs(huge.quat - by_sil.quat).sum(-1) < 1e-6).all()
    model.pose_silhouette_weight = 100.0  # untrained: the errors differ by under 1%
    mid = predict_split(model, reader, "train", 32, **kw)
    n, V, M = mid.candidates.shape[:3]
    cands = torch.from_numpy(mid.candidates).flatten(0, 1)
    mk = reader.masks("train")[:n]
    masks = prepare_masks(mk.reshape(n * V, *mk.shape[2:]), renderer.settings.vox_size)
    pts, scale = torch.from_numpy(mid.points).flatten(0, 1), torch.from_numpy(mid.scale).flatten()
    err = silhouette_errors(pts, scale, cands, masks, renderer, 0.5)
    logits = torch.tensor([0.0, 0.0, 0.5, 0.0]).expand(n * V, M)
    k = selector_with_silhouette(logits, err, 100.0)
    assert 0 < (k != 2).sum() < len(k)  # the weight moves some views off the selector's pick
    torch.testing.assert_close(
        torch.from_numpy(mid.quat).flatten(0, 1), cands[torch.arange(n * V), k]
    )


def test_the_silhouette_weight_needs_a_selector_and_a_sane_value():
    with pytest.raises(ValueError, match="model.pose_silhouette_weight"):
        build_model(compose_cfg(TINY + ["model.pose_silhouette_weight=2"]))
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(ValueError, match="model.pose_silhouette_weight"):
            build_model(compose_cfg(TINY + ["model.pose_selector=true",
                                            f"model.pose_silhouette_weight={bad}"]))  # fmt: skip
    assert compose_cfg(TINY).model.pose_silhouette_weight == 0.0  # off by default


def test_the_pictures_show_the_pose_the_model_reads(tmp_path):
    from PIL import Image

    from dpc.visualize import main

    over = ["trainer.max_steps=2", "trainer.student_refit_steps=5", "model.pose_selector=true"]
    widths = []
    for w in (0, 5):
        run = tmp_path / f"run{w}"
        train(compose_cfg(TINY + over + [f"model.pose_silhouette_weight={w}"], run))
        main([f"run_dir={run}", "objects=[0]", f"out={run / 'vis'}", "cell=64", "html=false"])
        (png,) = (run / "vis").glob("*.png")
        widths.append(Image.open(png).size[0])
    assert widths[1] == widths[0] + 64  # one more column: "pose (cand k)"
