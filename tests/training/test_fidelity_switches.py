"""Fidelity switches (docs/training.md, "Fidelity switches"): each of the original's
behaviours against a hand-written reference or a known answer, and dpc's default left
as it was."""

import math
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from train_testutils import TINY, compose_cfg

import kernels
from dpc.camera import quat_from_axis_angle, quat_rotate, random_quat
from dpc.losses import align_reference_points, student_align_loss, student_loss
from dpc.models import build_model
from dpc.models.encoder import ImageEncoder
from dpc.render import PointCloudRenderer, RenderSettings
from dpc.runs import normalize_loss_config
from dpc.training.step import compute_step, dropout_indices
from kernels.reference import (
    blur3d_ref,
    ray_project_ref,
    ray_termination_logsum,
    splat_points_ref,
)

C = 1e-5  # the original's drc_logsum_clip_val


def _exact_probs(o):  # o [B, D, H, W] -> [B, D+1, H, W], written out as a loop
    B, D, H, W = o.shape
    out, trans = [], torch.ones_like(o[:, 0])
    for k in range(D):
        out.append(o[:, k] * trans)
        trans = trans * (1 - o[:, k])
    return torch.stack(out + [trans], 1)


# ---- 1. ray termination in log space (render.drc_logsum) ---------------------------------


def test_logsum_equals_exact_products_away_from_the_clip():
    g = torch.Generator().manual_seed(0)
    o = 0.05 + 0.9 * torch.rand(2, 6, 3, 4, generator=g, dtype=torch.float64)
    p_log = ray_termination_logsum(o, C)
    p_ex = _exact_probs(o)
    # the original's log-space "unity" is c, not 0: p_1 and the escape carry exp(c)
    f = torch.ones(7, dtype=torch.float64)
    f[0] = f[-1] = math.exp(C)
    torch.testing.assert_close(p_log, p_ex * f[:, None, None], rtol=1e-12, atol=0)
    # and the exact ones are what dpc's default computes
    out = ray_project_ref(o[:, None], return_probs=True)
    torch.testing.assert_close(out.probs, p_ex, rtol=1e-12, atol=1e-15)


def test_logsum_at_the_clip_known_answers():
    D = 5
    empty = torch.zeros(1, D, 1, 1, dtype=torch.float64)
    out = ray_project_ref(empty[:, None], logsum_clip=C, return_probs=True)
    # every cell clipped to c: sum_k p_k = exp(c) c + sum_{k>=2} c (1-c)^(k-1)
    want = math.exp(C) * C + sum(C * (1 - C) ** (k - 1) for k in range(2, D + 1))
    assert out.silhouette.item() == pytest.approx(want, rel=1e-9)
    assert out.silhouette.item() > 0  # dpc's exact products: 0
    assert ray_project_ref(empty[:, None]).silhouette.item() == 0.0
    assert out.probs[0, D].item() == pytest.approx(math.exp(C) * (1 - C) ** D, rel=1e-9)
    # a full first cell: o clipped to 1 - c, so a little light passes
    full = empty.clone()
    full[:, 0] = 1.0
    p = ray_project_ref(full[:, None], logsum_clip=C, return_probs=True).probs[0, :, 0, 0]
    assert p[0].item() == pytest.approx(math.exp(C) * (1 - C), rel=1e-12)
    assert p[1].item() == pytest.approx(C * C, rel=1e-9)
    # no gradient through a clipped cell (tf.clip_by_value), dpc's exact form has one
    x = full.clone().requires_grad_(True)
    ray_project_ref(x[:, None], logsum_clip=C).silhouette.sum().backward()
    assert x.grad[0, 0].item() == 0.0 and x.grad[0, 1].item() == 0.0
    y = full.clone().requires_grad_(True)
    ray_project_ref(y[:, None]).silhouette.sum().backward()
    assert y.grad[0, 1].item() == 0.0 and y.grad[0, 0].item() != 0.0


def test_logsum_projection_gradcheck():
    g = torch.Generator().manual_seed(1)
    o = (0.05 + 0.9 * torch.rand(1, 1, 4, 2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    col = torch.rand(1, 2, 4, 2, 3, generator=g, dtype=torch.float64).requires_grad_()

    def f(o, col):
        r = ray_project_ref(o, col, 2.0, 10.0, 1.0, True, True, logsum_clip=C)
        return r.silhouette, r.depth, r.color, r.probs

    assert torch.autograd.gradcheck(f, (o, col))


def _logsum_by_hand(o, col, c, camera_distance=2.0, max_depth=10.0, background=1.0):
    """The original's log-space ray termination written out per ray with plain products
    (an implementation independent of kernels.reference): o clipped to [c, 1 - c];
    p_1 = e^c o_1, p_k = o_k prod_{j<k} (1 - o_j), escape e^c prod_j (1 - o_j) (its
    "log unity" c); silhouette sum_k p_k, depth sum_k p_k d_k + escape max_depth, colour
    sum_k p_k c_k + escape background."""
    B, _, D, H, W = o.shape
    sil, depth = torch.zeros(B, H, W, dtype=o.dtype), torch.zeros(B, H, W, dtype=o.dtype)
    color = torch.zeros(B, col.shape[1], H, W, dtype=o.dtype)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                trans, s, d, cc = 1.0, 0.0, 0.0, torch.zeros(col.shape[1], dtype=o.dtype)
                for k in range(D):
                    ok = min(max(float(o[b, 0, k, i, j]), c), 1.0 - c)
                    p = ok * trans * (math.exp(c) if k == 0 else 1.0)
                    s, d = s + p, d + p * (camera_distance + k / D - 0.5)
                    cc = cc + p * col[b, :, k, i, j]
                    trans *= 1.0 - ok
                escape = math.exp(c) * trans
                sil[b, i, j], depth[b, i, j] = s, d + escape * max_depth
                color[b, :, i, j] = cc + escape * background
    return sil, depth, color


def test_logsum_reference_matches_the_formula_written_out():
    # the reference itself against an independent per-ray implementation (the backends
    # below are checked against the reference)
    g = torch.Generator().manual_seed(3)
    o = torch.rand(2, 1, 5, 3, 3, generator=g, dtype=torch.float64)
    o[:, :, 0, 0, 0] = 0.0
    o[:, :, 1, 1, 1] = 1.0
    o[:, :, :, 2, 2] = 0.0  # an empty ray
    col = torch.rand(2, 3, 5, 3, 3, generator=g, dtype=torch.float64)
    got = ray_project_ref(o, col, logsum_clip=1e-3)
    for u, v in zip(got[:3], _logsum_by_hand(o, col, 1e-3)):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "backend",
    [
        "auto",
        "cpu",
        # on CPU tensors through Triton's interpreter (tests/conftest.py)
        pytest.param(
            "triton", marks=pytest.mark.skipif(not kernels.has_triton(), reason="no triton")
        ),
    ],
)
def test_ray_project_logsum_every_backend_matches_the_reference(backend):
    g = torch.Generator().manual_seed(2)
    o = torch.rand(2, 1, 5, 4, 4, generator=g, dtype=torch.float64)
    o[:, :, 0, 0, 0] = 0.0
    o[:, :, 1, 1, 1] = 1.0
    o[:, :, :, 2, 2] = 0.0  # an empty ray
    col = torch.rand(2, 3, 5, 4, 4, generator=g, dtype=torch.float64)
    c = 1e-3
    a = (o.clone().requires_grad_(), col.clone().requires_grad_())
    b = (o.clone().requires_grad_(), col.clone().requires_grad_())
    got = kernels.ray_project(*a, backend=backend, logsum_clip=c, return_probs=True)
    want = ray_project_ref(*b, logsum_clip=c, return_probs=True)
    w = torch.rand(4, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    for x in (got, want):
        loss = (x.silhouette * w[0, :, 0]).sum() + (x.depth * w[1, :, 0]).sum()
        loss = loss + (x.color * w[2]).sum() + (x.probs[:, :3] * w[3]).sum()
        loss.backward()
    for u, v in zip(got, want):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)
    for u, v in zip(a, b):
        torch.testing.assert_close(u.grad, v.grad, rtol=1e-10, atol=1e-12)
    exact = kernels.ray_project(o, backend=backend)
    assert (got.silhouette - exact.silhouette).abs().max() > 1e-4
    with pytest.raises(ValueError, match="logsum_clip"):
        kernels.ray_project(o, logsum_clip=0.7)


@pytest.mark.parametrize("variant", ["passes", "fused"])
def test_renderer_drc_logsum(variant):
    torch.manual_seed(0)
    pts = torch.rand(2, 200, 3) - 0.5
    q = random_quat(2)
    kw = dict(vox_size=12, kernel_size=5)
    log = PointCloudRenderer(RenderSettings(drc_logsum=True, kernel_variant=variant, **kw))
    ref = PointCloudRenderer(RenderSettings(drc_logsum=True, backend="reference", **kw))
    dpc = PointCloudRenderer(RenderSettings(kernel_variant=variant, **kw))
    a = log(pts, q, 1.0, return_depth=True)
    b = ref(pts, q, 1.0, return_depth=True)
    torch.testing.assert_close(a.silhouette, b.silhouette, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.depth, b.depth, rtol=1e-5, atol=1e-5)
    d = dpc(pts, q, 1.0, return_depth=True)
    assert (a.silhouette - d.silhouette).abs().max() > 1e-5  # the clip shows in empty rays


def test_render_settings_from_cfg_and_errors():
    cfg = compose_cfg(["render.drc_logsum=true", "render.drc_logsum_clip_val=0.001"])
    s = RenderSettings.from_cfg(cfg)
    assert s.drc_logsum and s.drc_logsum_clip_val == 0.001
    # the training config's defaults: dpc's behaviour; `fidelity=original`: the original's
    dflt = RenderSettings.from_cfg(compose_cfg([]))
    assert not dflt.drc_logsum and dflt.pc_rgb_clip_after_conv is None
    assert dflt.pc_rgb_divide_by_occupancies_epsilon == 1e-4
    assert not dflt.pc_rgb_divide_by_raw_occupancies
    assert not compose_cfg([]).render.pc_point_dropout_per_view
    assert compose_cfg(["fidelity=original"]).render.pc_point_dropout_per_view
    d = RenderSettings.from_cfg(compose_cfg(["fidelity=original"]))
    assert d.drc_logsum and d.drc_logsum_clip_val == 1e-5 and d.pc_rgb_clip_after_conv is False
    assert d.pc_rgb_divide_by_occupancies_epsilon == 0.01 and d.normalize_colors
    assert d.pc_rgb_divide_by_raw_occupancies
    # an older run's config without the keys: dpc's former behaviour, as it was trained
    old = OmegaConf.create({"render": {"vox_size": 32, "pc_gauss_kernel_size": 7}})
    s_old = RenderSettings.from_cfg(old)
    assert s_old == RenderSettings(vox_size=32, kernel_size=7)
    assert not s_old.drc_logsum and s_old.pc_rgb_clip_after_conv is None
    with pytest.raises(ValueError, match="render.drc_logsum_clip_val"):
        RenderSettings(drc_logsum_clip_val=0.0)
    with pytest.raises(ValueError, match="render.pc_rgb_clip_after_conv"):
        RenderSettings(pc_rgb_clip_after_conv="yes")


# ---- 2. colour path ----------------------------------------------------------------------


def _colour_scene():
    g = torch.Generator().manual_seed(3)
    # many points in few cells: the splatted colour sums exceed 1
    pts = (torch.rand(1, 300, 3, generator=g, dtype=torch.float64) - 0.5) * 0.3
    cols = torch.rand(1, 300, 3, generator=g, dtype=torch.float64)
    return pts, torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64), cols


def test_original_colour_path_matches_a_hand_written_reference():
    pts, q, cols = _colour_scene()
    scale = torch.tensor([0.7], dtype=torch.float64)
    s = RenderSettings(
        vox_size=10,
        kernel_size=5,
        backend="reference",
        pc_rgb_clip_after_conv=False,
        pc_rgb_divide_by_occupancies_epsilon=0.01,
        pc_rgb_divide_by_raw_occupancies=True,
    )
    got = PointCloudRenderer(s)(pts, q, 1.0, scale=scale, colors=cols)
    # the original's pointcloud_project_fast, written out
    from dpc.camera import world_to_grid

    raw, feat = splat_points_ref(world_to_grid(pts, q), (10, 10, 10), cols)
    assert feat.max() > 1.0  # the clip matters here
    occ = (blur3d_ref(raw.clamp(0, 1), 1.0, 5) * 0.7).clamp(0, 1)
    rgb = blur3d_ref(feat.clamp(0, 1), 1.0, 5) / (blur3d_ref(raw, 1.0, 5) + 0.01)
    want = ray_project_ref(occ, rgb, return_depth=False)
    torch.testing.assert_close(got.color, want.color)
    torch.testing.assert_close(got.silhouette, want.silhouette)
    # dpc's: no clip, divide by the clipped blurred occupancy + 1e-4
    dflt = PointCloudRenderer(RenderSettings(vox_size=10, kernel_size=5, backend="reference"))
    d = dflt(pts, q, 1.0, scale=scale, colors=cols)
    occ_c = blur3d_ref(raw.clamp(0, 1), 1.0, 5)
    rgb_d = blur3d_ref(feat, 1.0, 5) / (occ_c + 1e-4)
    torch.testing.assert_close(d.color, ray_project_ref(occ, rgb_d, return_depth=False).color)
    assert (d.color - got.color).abs().max() > 1e-3


def test_colour_clip_after_conv_and_raw_divisor_gradient():
    pts, q, cols = _colour_scene()
    kw = dict(vox_size=10, kernel_size=5, backend="reference", normalize_colors=False)
    after = PointCloudRenderer(RenderSettings(pc_rgb_clip_after_conv=True, **kw))
    none = PointCloudRenderer(RenderSettings(**kw))
    r = after(pts, q, 1.0, colors=cols, return_voxels=True)
    n = none(pts, q, 1.0, colors=cols)
    assert n.color.max() > 1.0 and r.color.max() <= 1.0 + 1e-12  # undivided sums clipped
    # gradcheck w.r.t. the colours (the raw divisor is held constant as in the original,
    # so the points' gradient leaves out its dependence on them by design)
    s = RenderSettings(
        vox_size=6,
        kernel_size=3,
        backend="reference",
        pc_rgb_clip_after_conv=False,
        pc_rgb_divide_by_occupancies_epsilon=0.01,
        pc_rgb_divide_by_raw_occupancies=True,
    )
    ren = PointCloudRenderer(s)
    p0, c0 = pts[:, :20], (cols[:, :20] * 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: ren(p0, q, 1.0, colors=c).color, (c0,))
    # ... and the points' gradient is that of the divisor detached: a hand-written version
    from dpc.camera import world_to_grid

    p1 = pts[:, :20].clone().requires_grad_(True)
    ren(p1, q, 1.0, colors=c0.detach()).color.sum().backward()
    p2 = pts[:, :20].clone().requires_grad_(True)
    raw, feat = splat_points_ref(world_to_grid(p2, q), (6, 6, 6), c0.detach())
    occ = blur3d_ref(raw.clamp(0, 1), 1.0, 3).clamp(0, 1)
    rgb = blur3d_ref(feat.clamp(0, 1), 1.0, 3) / (blur3d_ref(raw.detach(), 1.0, 3) + 0.01)
    ray_project_ref(occ, rgb).color.sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad)
    assert p1.grad.abs().max() > 0


# ---- 3. point dropout per view -----------------------------------------------------------


def dropout_indices_per_view(step, seed, global_batch, views, rank_slice, n, keep, device):
    return dropout_indices(step, seed, global_batch, rank_slice, n, keep, device, views=views)


def test_per_view_dropout_rounds_down_and_differs_per_view():
    idx = dropout_indices_per_view(5, 0, 4, 3, slice(0, 4), 100, 0.075, "cpu")
    assert idx.shape == (4, 3, 7)  # floor(7.5); dpc's per-object draw keeps ceil = 8
    assert dropout_indices(5, 0, 4, slice(0, 4), 100, 0.075, "cpu").shape == (4, 8)
    assert dropout_indices_per_view(5, 0, 4, 3, slice(0, 4), 100, 0.29, "cpu").shape[-1] == 29
    part = dropout_indices(5, 0, 4, slice(2, 4), 100, 0.075, "cpu")
    assert torch.equal(part, dropout_indices(5, 0, 4, slice(0, 4), 100, 0.075, "cpu")[2:4])
    for b in range(4):
        rows = [tuple(sorted(r.tolist())) for r in idx[b]]
        assert len(set(rows)) == 3  # a different subset per view
        assert all(len(set(r)) == 7 for r in rows)  # without replacement
    # a rank's slice of the global draw, as dpc's per-object draw
    part = dropout_indices_per_view(5, 0, 4, 3, slice(2, 4), 100, 0.075, "cpu")
    assert torch.equal(part, idx[2:4])
    assert dropout_indices_per_view(5, 0, 4, 3, slice(0, 4), 100, 1.0, "cpu") is None


class _Recorder(PointCloudRenderer):
    """A renderer that keeps the points it was called with."""

    def forward(self, points, *args, **kwargs):
        self.seen = points.detach().clone()
        return super().forward(points, *args, **kwargs)


def _tiny_step(overrides, keep=0.5):
    cfg = compose_cfg(TINY + ["model.pose_predict_num_candidates=2", *overrides])
    normalize_loss_config(cfg.loss)
    torch.manual_seed(0)
    model = build_model(cfg)
    b, K, S, G = 2, 2, 32, 16
    g = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.rand(b, K, 3, S, S, generator=g),
        "mask": (torch.rand(b, K, G, G, generator=g) > 0.5).float(),
        "quat": random_quat(b * K, generator=g).view(b, K, 4),
    }
    ren = _Recorder(RenderSettings.from_cfg(cfg))
    out = compute_step(model, ren, batch, cfg, 3, 1.0, keep, slice(0, b))
    return out, ren.seen, model, batch


def test_step_per_view_dropout_renders_a_subset_per_image():
    out, seen, _, _ = _tiny_step(["render.pc_point_dropout_per_view=true"], keep=0.105)
    b, K, M = 2, 2, 2
    assert seen.shape == (b * K * M, 31, 3)  # floor(0.105 * 300) = 31
    per_obj = seen.view(b, K * M, 31, 3)
    for i in range(b):
        sets = {tuple(sorted(map(tuple, v.tolist()))) for v in per_obj[i]}
        assert len(sets) == K * M
        pts = {tuple(p) for p in out.points[i].tolist()}
        assert all(tuple(p) in pts for p in per_obj[i].reshape(-1, 3).tolist())
    _, seen_d, _, _ = _tiny_step([], keep=0.105)  # the default
    assert seen_d.shape == (b * K * M, 32, 3)  # dpc: ceil, one subset per object
    assert torch.equal(seen_d[0], seen_d[K * M - 1])


# ---- 4. pose-code activation -------------------------------------------------------------


def test_pose_code_activation_switch():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    enc = {a: ImageEncoder(32, 4, 64, True, a) for a in ("leaky_relu", "relu")}
    enc["relu"].load_state_dict(enc["leaky_relu"].state_dict())
    z_l, p_l = enc["leaky_relu"](x)
    z_r, p_r = enc["relu"](x)
    torch.testing.assert_close(z_l, z_r)  # the shape code is untouched
    assert (p_l < 0).any() and (p_r >= 0).all()
    torch.testing.assert_close(p_r, p_l.clamp_min(0))  # relu(u) = leaky(u) where u >= 0
    m = build_model(compose_cfg(TINY))  # the default: dpc's leaky ReLU
    assert isinstance(m.encoder.pose_act, torch.nn.LeakyReLU)
    m = build_model(compose_cfg(TINY + ["fidelity=original"]))  # the original's ReLU
    assert isinstance(m.encoder.pose_act, torch.nn.ReLU)
    # an older run's config without the key: dpc's former leaky ReLU
    old = OmegaConf.create(OmegaConf.to_container(compose_cfg(TINY).model))
    del old["pose_code_activation"]
    old = OmegaConf.create({"model": old, "data": {"image_size": 32}})
    assert isinstance(build_model(old).encoder.pose_act, torch.nn.LeakyReLU)
    with pytest.raises(ValueError, match="model.pose_code_activation"):
        build_model(compose_cfg(TINY + ["model.pose_code_activation=tanh"]))


# ---- 5. the student-loss keys ------------------------------------------------------------


def test_deprecated_numeric_key_maps_to_the_weight():
    cfg = compose_cfg(["loss.pose_student_align_loss=5"])
    with pytest.warns(DeprecationWarning, match="pose_predictor_student_loss_weight"):
        normalize_loss_config(cfg.loss)
    assert cfg.loss.pose_predictor_student_loss_weight == 5.0
    assert cfg.loss.pose_student_align_loss is False
    # an old run's saved loss group: the weight under the old key only
    old = OmegaConf.create({"pose_student_align_loss": 20.0, "color_weight": 0.0})
    with pytest.warns(DeprecationWarning):
        normalize_loss_config(old)
    assert old.pose_predictor_student_loss_weight == 20.0 and old.pose_student_align_loss is False
    # a bool is the switch; the current defaults need no mapping
    new = compose_cfg(["loss.pose_student_align_loss=true"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalize_loss_config(new.loss)
    assert new.loss.pose_student_align_loss is True
    assert new.loss.pose_predictor_student_loss_weight == 20.0
    with pytest.raises(ValueError, match="loss.pose_student_align_loss"):
        normalize_loss_config(OmegaConf.create({"pose_student_align_loss": "often"}))


def test_old_run_config_loads_with_the_new_key(tmp_path):
    from dpc.runs import open_run, save_checkpoint

    cfg = compose_cfg(TINY, run_dir=tmp_path)
    model = build_model(cfg)
    old = OmegaConf.to_container(cfg, resolve=True)
    loss = old["loss"]
    del loss["pose_predictor_student_loss_weight"]
    loss["pose_student_align_loss"] = 7.0  # as runs saved it before the rename
    save_checkpoint(tmp_path / "checkpoints" / "last.pt", model, None, 1, old)
    with pytest.warns(DeprecationWarning):
        got = open_run(tmp_path).cfg
    assert got.loss.pose_predictor_student_loss_weight == 7.0
    assert got.loss.pose_student_align_loss is False


def test_student_align_loss_known_answers_and_gradient():
    ref = align_reference_points()
    assert ref.shape == (2000, 3) and ref.abs().max() <= 3.0
    assert torch.equal(ref, align_reference_points())  # fixed
    q = random_quat(5, generator=torch.Generator().manual_seed(0))
    assert student_align_loss(q, q, ref).item() == pytest.approx(0.0, abs=1e-10)
    assert student_align_loss(-q, q, ref).item() == pytest.approx(0.0, abs=1e-10)
    # a rotation by t about z: |R p - p|^2 = 2 (1 - cos t) (x^2 + y^2)
    t = 0.3
    ident = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    rz = quat_from_axis_angle(
        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    )
    r64 = ref.double()
    want = 0.5 * (2 * (1 - math.cos(t)) * (r64[:, :2] ** 2).sum(1)).mean()
    assert student_align_loss(rz[None], ident, r64).item() == pytest.approx(want.item(), rel=1e-9)
    torch.testing.assert_close(
        0.5 * (quat_rotate(rz[None], r64[None]) - r64).square().sum() / 2000, want
    )
    # the teacher is held constant; the student's gradient checks out
    s = random_quat(3, dtype=torch.float64).requires_grad_(True)
    te = random_quat(3, dtype=torch.float64).requires_grad_(True)
    small = r64[:50]
    assert torch.autograd.gradcheck(lambda s: student_align_loss(s, te, small), (s,))
    student_align_loss(s, te, small).backward()
    assert te.grad is None


def test_step_uses_the_switched_student_loss():
    outs = {}
    for flag in ("false", "true"):
        out, _, model, batch = _tiny_step([f"loss.pose_student_align_loss={flag}"])
        b, K = batch["mask"].shape[:2]
        m = model(batch["image"].flatten(0, 1), shape_index=torch.arange(b) * K)
        cand = m.pose_candidates.view(b, K, -1, 4)
        teacher = cand.gather(2, out.winner[..., None, None].expand(b, K, 1, 4))[:, :, 0]
        st = m.pose_student.view(b, K, 4)
        want = (
            student_align_loss(st, teacher, align_reference_points())
            if flag == "true"
            else student_loss(st, teacher)
        )
        torch.testing.assert_close(out.terms["student_loss"], want)
        outs[flag] = out.terms["student_loss"]
    assert outs["true"] != outs["false"]
