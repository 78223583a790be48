"""The surface-depth term (loss.surface_depth_weight, not in the paper): known answers."""

import torch

from dpc.losses import surface_depth_loss, surface_depth_residuals


def _maps(G=8, depth=1.8, inside=slice(2, 6)):
    d = torch.full((G, G), 10.0)
    m = torch.zeros(G, G)
    d[inside, inside] = depth
    m[inside, inside] = 1.0
    return d, m


def test_residual_is_depth_behind_the_surface_and_valid_only_inside():
    d, m = _maps()
    # (depth, row, col): one point at the image centre 0.1 behind the surface at 1.8
    # (camera distance 2), one on the background, one off the image.
    gp = torch.tensor([[[-0.1, 0.0, 0.0], [0.0, 0.45, 0.45], [0.0, 0.7, 0.0]]])
    r, ok = surface_depth_residuals(gp, d[None], m[None], camera_distance=2.0)
    assert torch.allclose(r[0, 0], torch.tensor(0.1))
    assert ok.tolist() == [[True, False, False]]


def test_loss_takes_the_best_view_and_ignores_invalid_views():
    # two views of one cloud of 2 points: residuals [K=2, N=2]
    r = torch.tensor([[0.2, -0.5], [0.05, 3.0]])
    ok = torch.tensor([[True, True], [True, False]])
    loss = surface_depth_loss(r, ok, cells=10)
    assert torch.allclose(loss, torch.tensor((0.5 + 5.0) / 2))  # min(2, 0.5), only 5.0
    none = surface_depth_loss(r, torch.zeros_like(ok), cells=10)
    assert none.item() == 0.0


def test_gradient_pulls_points_to_the_surface():
    d, m = _maps(depth=1.9)
    pts = torch.tensor([[[0.2, 0.0, 0.0], [-0.3, 0.05, -0.05]]], requires_grad=True)
    opt = torch.optim.SGD([pts], lr=0.01)
    for _ in range(200):
        r, ok = surface_depth_residuals(pts, d[None], m[None], camera_distance=2.0)
        loss = surface_depth_loss(r[:, None], ok[:, None], cells=7)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    assert torch.allclose(pts[0, :, 0], torch.tensor([-0.1, -0.1]), atol=0.05)


def test_two_step_run_with_the_term(tmp_path):
    """The recommended experiment trains on a data set with depth maps (a tiny car set
    built into tmp_path) and logs the term."""
    import json

    from train_testutils import TINY, compose_cfg

    from dpc.train import train

    run = tmp_path / "run"
    tiny = [o for o in TINY if not o.startswith("data")]
    over = ["+experiment=car_quick_camera_supervision_surface", "data=car_quick"]
    over += tiny + [f"paths.data_root={tmp_path / 'data'}", "trainer.max_steps=2"]
    cfg = compose_cfg(over, run)
    assert cfg.loss.surface_depth_weight == 10.0
    train(cfg)
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "loss" in r]
    assert len(recs) == 2 and all(r["surface_depth"] > 0 for r in recs)
