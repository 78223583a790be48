"""Mirrored objects in the training batches (trainer.mirror_augment; issue 20, RESULTS.md
"Round 11")."""

import numpy as np
import torch
from train_testutils import TINY, compose_cfg

from dpc.camera import azel_quat, camera_azel, mirror_camera, quat_angle, random_quat
from dpc.data import build_batch_sampler, open_training_data
from dpc.render import build_renderer


def _symmetric_cloud(seed=3):
    g = torch.Generator().manual_seed(seed)
    half = (torch.rand(1, 150, 3, generator=g) - 0.5) * torch.tensor([0.8, 0.3, 0.4])
    half[..., 2] = half[..., 2].abs() + 0.05
    return torch.cat((half, half * torch.tensor([1.0, 1.0, -1.0])), 1)


def test_a_symmetric_cloud_from_the_mirrored_camera_is_the_mirrored_image_at_any_roll():
    renderer = build_renderer(compose_cfg(TINY))
    pts = _symmetric_cloud()
    for q in random_quat(4, torch.Generator().manual_seed(5)):
        sil = renderer(pts, q[None], sigma=0.5).silhouette[0]
        mir = renderer(pts, mirror_camera(q[None]), sigma=0.5).silhouette[0]
        torch.testing.assert_close(mir, sil.flip(-1), atol=1e-4, rtol=0)
        assert (sil - sil.flip(-1)).abs().max() > 0.05  # the view itself is not symmetric


def test_mirror_camera_is_an_involution_and_mirrors_the_azimuth_of_upright_cameras():
    q = random_quat(20, torch.Generator().manual_seed(1), dtype=torch.float64)
    assert quat_angle(mirror_camera(mirror_camera(q)), q).max() < 1e-6
    g = torch.Generator().manual_seed(2)
    up = azel_quat(torch.rand(20, generator=g, dtype=torch.float64) * 6 - 3,
                   torch.rand(20, generator=g, dtype=torch.float64) - 0.5)  # fmt: skip
    az, el = camera_azel(up)
    assert quat_angle(mirror_camera(up), azel_quat(-az, el)).max() < 1e-6
    assert quat_angle(mirror_camera(up), up).min() > 1e-3  # it moves them


def _batches(extra, step, **kw):
    cfg = compose_cfg(TINY + extra)
    reader = open_training_data(cfg)
    return build_batch_sampler(cfg, reader, **kw)(step)


class _DepthReader:
    """A tiny reader with depth maps (the synthetic set has none)."""

    def __init__(self, n=6, V=4, S=16):
        g = np.random.default_rng(0)
        q = random_quat(n * V, torch.Generator().manual_seed(0)).view(n, V, 4).numpy()
        self.d = {"images": g.integers(0, 256, (n, V, S, S, 3), dtype=np.uint8),
                  "masks": g.integers(0, 256, (n, V, S, S), dtype=np.uint8),
                  "quats": q, "depths": g.random((n, V, S, S)).astype(np.float32)}  # fmt: skip

    def __getattr__(self, name):
        return lambda split: self.d[name]


def test_mirrored_objects_have_every_view_flipped_and_their_cameras_reflected():
    from dpc.data.sampling import BatchSampler

    reader = _DepthReader()
    plain = BatchSampler(reader, "train", 6, 3, 16, 8, 0, with_depth=True)(3)
    assert not plain["mirrored"].any()  # off by default
    got = BatchSampler(reader, "train", 6, 3, 16, 8, 0, with_depth=True, mirror=True)(3)
    assert torch.equal(got["object_index"], plain["object_index"])
    assert torch.equal(got["view_index"], plain["view_index"])
    m = got["mirrored"]
    assert 0 < int(m.sum()) < len(m)  # this step has both kinds (a known draw)
    for key in ("image", "mask", "depth"):
        torch.testing.assert_close(got[key][m], plain[key][m].flip(-1))
        torch.testing.assert_close(got[key][~m], plain[key][~m])
    torch.testing.assert_close(got["quat"][~m], plain["quat"][~m])
    assert quat_angle(got["quat"][m], mirror_camera(plain["quat"][m])).max() < 1e-3


def test_the_draw_is_a_function_of_seed_and_step_and_splits_across_ranks():
    a, b = _batches([], 7, mirror=True), _batches([], 7, mirror=True)
    assert torch.equal(a["mirrored"], b["mirrored"]) and torch.equal(a["image"], b["image"])
    halves = [_batches([], 7, rank=r, world_size=2, mirror=True) for r in (0, 1)]
    assert torch.equal(torch.cat([h["mirrored"] for h in halves]), a["mirrored"])
    assert torch.equal(torch.cat([h["image"] for h in halves]), a["image"])
    cfg = compose_cfg(TINY)
    s = build_batch_sampler(cfg, open_training_data(cfg), mirror=True)
    share = np.mean([s.mirrored(step).mean() for step in range(200)])
    assert 0.4 < share < 0.6


def test_only_the_training_loop_mirrors():
    """The key reaches the sampler through the training loop (below); other batches (the
    validation's projection loss, the shape refit) are never mirrored."""
    got = _batches(["trainer.mirror_augment=true"], 7)
    assert not got["mirrored"].any()


def test_training_reads_mirrored_batches(tmp_path, monkeypatch):
    """The training loop's batches come from the key (the test fails if the loop ignores
    it): over 4 steps of 4 objects, some are mirrored."""
    from dpc.data.sampling import BatchSampler
    from dpc.train import train

    seen, call = [], BatchSampler.__call__

    def spy(self, step):
        out = call(self, step)
        seen.append(out["mirrored"])
        return out

    monkeypatch.setattr(BatchSampler, "__call__", spy)
    train(compose_cfg(TINY + ["trainer.max_steps=4", "trainer.mirror_augment=true"],
                      tmp_path / "run"))  # fmt: skip
    assert seen and torch.cat(seen).any()
