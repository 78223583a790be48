"""Objects built from the config in one place: the renderer, image and mask preparation,
and the batch sampler."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from dpc.cli import CONFIGS
from dpc.data import BatchSampler, build_batch_sampler, prepare_images, prepare_masks
from dpc.data.images import resize_masks
from dpc.data.synthetic import synthetic_dataset
from dpc.render import RenderSettings, build_renderer, final_sigma
from dpc.training.terms import batch_targets


def test_renderer_from_cfg_keeps_projection_and_backend():
    cfg = OmegaConf.create(
        {
            "render": {
                "vox_size": 24,
                "pc_gauss_kernel_size": 5,
                "projection": "max",
                "backend": "reference",
                "pc_relative_sigma_end": 0.4,
            }
        }
    )
    s = build_renderer(cfg).settings
    assert (s.vox_size, s.kernel_size, s.projection, s.backend) == (24, 5, "max", "reference")
    assert RenderSettings.from_cfg(cfg.render) == s  # the group itself works too
    assert final_sigma(cfg) == 0.4
    old = OmegaConf.create({"render": {"vox_size": 16, "pc_gauss_kernel_size": 3}})
    assert (RenderSettings.from_cfg(old).projection, RenderSettings.from_cfg(old).backend) == (
        "drc",
        "auto",
    )  # configs of older runs: the defaults


def test_prepare_images_converts_and_resizes():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 20, 20, 3), dtype=np.uint8)
    x = prepare_images(u8, 20)
    assert x.shape == (2, 3, 20, 20) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255)
    small = prepare_images(u8, 8)
    ref = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(small, ref)
    gray = prepare_images(u8[..., 0], 20)  # [B, H, W]: one channel
    assert gray.shape == (2, 1, 20, 20) and torch.equal(gray[:, 0], x[:, 0])
    ro = u8.copy()
    ro.flags.writeable = False  # e.g. a memmap slice: copied, never shared
    assert torch.equal(prepare_images(ro, 20), x)
    with pytest.raises(ValueError, match="uint8"):
        prepare_images(u8.astype(np.float32), 20)


def test_prepare_masks_matches_resize_masks():
    m = np.random.default_rng(1).integers(0, 256, (3, 17, 17), dtype=np.uint8)
    expect = resize_masks(torch.from_numpy(m).float() / 255, 9)
    assert torch.equal(prepare_masks(m, 9), expect)
    with pytest.raises(ValueError, match="masks"):
        prepare_masks(m[None], 9)


LOSS_DEFAULTS = OmegaConf.to_container(OmegaConf.load(CONFIGS / "train.yaml").loss)


def test_batch_sampler_from_cfg():
    reader = synthetic_dataset({"train": 6, "val": 2}, num_views=3, image_size=16, num_points=100)
    cfg = OmegaConf.create(
        {
            "seed": 3,
            "data": {"split": "train", "views_per_item": 2, "image_size": 12},
            "render": {"vox_size": 8},
            "trainer": {"batch_size": 4},
            # the training config's loss group (every term's weight) with one term on
            "loss": {**LOSS_DEFAULTS, "depth_weight": 0.0, "silhouette_distance_weight": 1.0},
        }
    )
    s = build_batch_sampler(cfg, reader, targets=batch_targets(cfg))
    manual = BatchSampler(reader, "train", 4, 2, 12, 8, 3, with_mask_distance=True)
    a, b = s(5), manual(5)
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert a["image"].shape == (4, 2, 3, 12, 12) and a["mask"].shape == (4, 2, 8, 8)
    # one object's views, prepared as in a batch
    objs, views = s.indices(5)
    one = s.views_of(int(objs[1]), views[1])
    assert torch.equal(one["image"], a["image"][1]) and torch.equal(one["mask"], a["mask"][1])
    val = build_batch_sampler(cfg, reader, "val", 1, 3, seed=0)
    assert (val.n, val.K, val.with_mask_distance) == (2, 3, False)
