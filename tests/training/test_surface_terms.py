"""The depth-coverage and hull-surface terms (loss.depth_coverage_weight,
loss.hull_surface_weight; not in the paper): known answers, gradients, a training run."""

import pytest
import torch

from dpc.data.images import mask_distance_maps
from dpc.losses import depth_coverage, depth_surface_samples, hull_surface_loss, point_repulsion


def _square(G=9, depth=1.8, lo=2, hi=7):
    d = torch.full((G, G), 10.0)
    m = torch.zeros(G, G)
    d[lo:hi, lo:hi] = depth
    m[lo:hi, lo:hi] = 1.0
    return d, m


def test_samples_are_the_silhouette_pixels_lifted_to_grid_coordinates():
    d, m = _square()
    g = torch.Generator().manual_seed(0)
    q, ok = depth_surface_samples(d[None], m[None], camera_distance=2.0, num=40, generator=g)
    assert q.shape == (1, 40, 3) and int(ok.sum()) == 25  # 5 x 5 inside pixels, 15 padding
    inside = q[ok]
    assert torch.allclose(inside[:, 0], torch.tensor(-0.2))  # depth 1.8 - camera 2.0
    # pixel centres, corners aligned: pixel i at i / (G - 1) - 0.5
    rows = sorted({round(v, 4) for v in inside[:, 1].tolist()})
    assert rows == [round(i / 8 - 0.5, 4) for i in range(2, 7)]
    # all 25 distinct pixels: no pixel drawn twice
    assert len({tuple(v) for v in inside[:, 1:].tolist()}) == 25
    q2, ok2 = depth_surface_samples(d[None], m[None], 2.0, num=10, generator=g)
    assert int(ok2.sum()) == 10  # fewer samples than pixels: all valid


def test_coverage_is_zero_on_the_surface_and_the_gap_distance_off_it():
    d, m = _square()
    q, ok = depth_surface_samples(d[None], m[None], 2.0, num=25)
    on = q.clone()  # a cloud exactly at the sampled surface points
    assert depth_coverage(on, q, ok, cells=8).item() < 1e-4
    # one point 0.25 in front of the surface centre: every pixel's nearest point is it
    one = torch.tensor([[[-0.45, 0.0, 0.0]]])
    expect = ((q[0, :, 1:].square().sum(-1) + 0.25**2).sqrt() * 8).mean()
    assert torch.allclose(depth_coverage(one, q, ok, cells=8)[0], expect, atol=1e-5)
    # a view without silhouette pixels adds 0
    assert depth_coverage(one, q, torch.zeros_like(ok), cells=8).item() == 0.0


def test_coverage_gradient_spreads_points_over_the_surface():
    d, m = _square()
    q, ok = depth_surface_samples(d[None], m[None], 2.0, num=25)
    torch.manual_seed(0)
    pts = (torch.randn(1, 30, 3) * 0.01 + torch.tensor([-0.3, 0.0, 0.0])).requires_grad_()
    opt = torch.optim.SGD([pts], lr=0.002)
    first = depth_coverage(pts, q, ok, cells=8).item()
    for _ in range(300):
        loss = depth_coverage(pts, q, ok, cells=8).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # one-sided: points shared by several pixels settle between them, so not 0; but the
    # clump spreads out over the square (pixel rows span -0.25..0.25)
    assert first > 1.0 and loss.item() < 0.6 * first
    assert pts[0, :, 1].std().item() > 5 * 0.01


def test_coverage_gradcheck():
    d, m = _square(G=5, lo=1, hi=4)
    q, ok = depth_surface_samples(d[None].double(), m[None].double(), 2.0, num=12)
    pts = torch.rand(1, 7, 3, dtype=torch.float64).sub(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: depth_coverage(p, q, ok, cells=4), (pts,))


def test_inner_distance_maps_are_distances_to_the_background():
    m = torch.zeros(9, 9)
    m[1:8, 1:8] = 1.0
    inner = mask_distance_maps(m, 9, inside=True)
    assert inner[4, 4].item() == pytest.approx(4.0)  # centre: 4 px to row 0 / col 0 etc.
    assert inner[1, 4].item() == pytest.approx(1.0)
    assert inner[0, 0].item() == 0.0  # background
    outer = mask_distance_maps(m, 9)
    assert outer[4, 4].item() == 0.0 and outer[0, 4].item() == pytest.approx(1.0)


def test_hull_surface_is_zero_on_a_contour_and_takes_the_best_view():
    m = torch.zeros(9, 9)
    m[1:8, 1:8] = 1.0
    inner = mask_distance_maps(m, 9, inside=True)
    two = torch.stack((inner, inner))  # [K=2, G, G]
    c = 4 / 8 - 0.5  # pixel 4 (centre)
    edge = 1 / 8 - 0.5  # pixel 1 (first silhouette row)
    # point 0: at the centre in view 0, on the rim pixel in view 1 -> 1 px (the rim
    # pixel's centre is 1 px from the background pixel's centre)
    # point 1: at the centre in both views -> 4 px
    gp = torch.tensor([[[0.0, c, c], [0.0, c, c]], [[0.0, edge, c], [0.0, c, c]]])  # [K, N, 3]
    assert torch.allclose(hull_surface_loss(gp, two), torch.tensor((1.0 + 4.0) / 2))


def test_hull_surface_gradient_pushes_interior_points_to_the_contour():
    m = torch.zeros(17, 17)
    m[2:15, 2:15] = 1.0
    inner = mask_distance_maps(m, 17, inside=True)[None]
    pts = torch.tensor([[[0.0, 0.03, -0.02], [0.0, -0.05, 0.01]]]).requires_grad_()
    opt = torch.optim.SGD([pts], lr=0.002)
    for _ in range(200):
        loss = hull_surface_loss(pts, inner)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6  # from ~6 px to within a pixel of the contour


def test_hull_surface_gradcheck():
    m = torch.zeros(9, 9)
    m[1:8, 1:8] = 1.0
    inner = mask_distance_maps(m, 9, inside=True).double()[None].expand(2, 9, 9)
    pts = (torch.rand(2, 5, 3, dtype=torch.float64) * 0.5 - 0.25).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: hull_surface_loss(p, inner), (pts,))


@pytest.mark.parametrize("full_res", [False, True])
def test_two_step_run_with_both_terms(tmp_path, full_res):
    """Both terms train on a tiny built car set (camera-supervised) and are logged; with
    loss.surface_full_res the batch carries the depth maps at the data set's resolution."""
    import json

    from train_testutils import TINY, compose_cfg

    from dpc.data import build_batch_sampler, open_training_data
    from dpc.train import train
    from dpc.training.terms import batch_targets

    run = tmp_path / "run"
    tiny = [o for o in TINY if not o.startswith("data")]
    over = ["+experiment=car_quick_camera_supervision_surface", "data=car_quick"]
    over += ["loss.depth_coverage_weight=10", "loss.hull_surface_weight=1"]
    over += [f"loss.surface_full_res={str(full_res).lower()}"]
    over += tiny + [f"paths.data_root={tmp_path / 'data'}", "trainer.max_steps=2"]
    cfg = compose_cfg(over, run)
    train(cfg)
    reader = open_training_data(cfg)
    batch = build_batch_sampler(cfg, reader, targets=batch_targets(cfg))(0)
    G = int(cfg.render.vox_size)
    assert batch["depth"].shape[-1] == G
    if full_res:
        S = reader.masks("train").shape[-1]
        assert S != G and batch["depth_full"].shape[-1] == S == batch["mask_full"].shape[-1]
    else:
        assert "depth_full" not in batch
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "loss" in r]
    assert len(recs) == 2
    assert all(r["depth_coverage"] > 0 and r["hull_surface"] > 0 for r in recs)


def test_repulsion_matches_a_brute_force_reference_and_its_gradient():
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(2, 37, 3, generator=g, dtype=torch.float64) * 0.3
    pts[1, 5] = pts[1, 6]  # a duplicate: it is its own neighbour's nearest, not its own
    queries = torch.stack([torch.randperm(37, generator=g)[:11] for _ in range(2)])
    got = point_repulsion(pts, queries, 3, 0.1)
    want = []
    for b in range(2):
        d = torch.cdist(pts[b, queries[b]], pts[b])
        d[torch.arange(11), queries[b]] = float("inf")
        near = d.topk(3, largest=False).values
        want.append(((0.1 - near).clamp_min(0) / 0.1).square().mean())
    # atol: the duplicate's distance is sqrt(1e-12), not 0 (the square root's guard)
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-7, atol=1e-5)
    assert got[1] > 0 and torch.isfinite(got).all()
    ok = torch.ones(37, dtype=torch.bool)
    ok[[5, 6]] = False  # away from the duplicate (distance 0 has no derivative)
    q = torch.stack([torch.nonzero(ok)[:11, 0]] * 2)
    fn = lambda p: point_repulsion(p, q, 3, 0.1)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (pts.clone().requires_grad_(),))


def test_repulsion_spreads_points_apart():
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(1, 200, 3, generator=g) * 0.05).requires_grad_()
    opt = torch.optim.Adam([pts], lr=1e-3)
    nn0 = torch.cdist(pts[0], pts[0]).fill_diagonal_(9).min(-1).values.mean().item()
    for _ in range(100):
        loss = point_repulsion(pts, torch.arange(200)[None], 4, 0.05).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    nn1 = torch.cdist(pts[0], pts[0]).fill_diagonal_(9).min(-1).values.mean().item()
    assert nn1 > 1.5 * nn0
