"""A small in-memory dataset for tests and smoke runs: random box "cars" rendered with the
project's own renderer, behind the ``dpc.data`` reader API (:class:`ArrayDataset`)."""

from __future__ import annotations

import math

import numpy as np
import torch

from dpc.camera import view_quat
from dpc.render import PointCloudRenderer, RenderSettings


class ArrayDataset:
    """In-memory dataset with the ``dpc.data`` reader API (used for synthetic data)."""

    def __init__(self, splits: dict[str, dict[str, np.ndarray]]):
        self._arrays = splits
        first = next(iter(splits.values()))
        self.num_views = int(first["masks"].shape[1])
        self.image_size = int(first["masks"].shape[2])
        self.splits = {
            s: [f"obj{i:04d}" for i in range(len(a["masks"]))] for s, a in splits.items()
        }

    def _get(self, split: str, key: str):
        if split not in self._arrays:
            raise ValueError(f"split must be one of {list(self._arrays)}, got {split!r}")
        return self._arrays[split].get(key)

    def images(self, split):
        return self._get(split, "images")

    def masks(self, split):
        return self._get(split, "masks")

    def quats(self, split):
        return self._get(split, "quats")

    def depths(self, split):
        return self._get(split, "depths")

    def gt_points(self, split, dense: bool = False):
        return self._get(split, "points")


def _box_surface(rng: np.random.Generator, n: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``n`` points uniformly on the surface of the axis-aligned box [lo, hi]."""
    size = hi - lo
    areas = np.array([size[1] * size[2], size[0] * size[2], size[0] * size[1]]).repeat(2)
    face = rng.choice(6, size=n, p=areas / areas.sum())
    p = lo + rng.random((n, 3)) * size
    axis = face // 2
    p[np.arange(n), axis] = np.where(face % 2 == 0, lo[axis], hi[axis])
    return p


def synthetic_dataset(
    num_objects: dict[str, int] | None = None,
    num_views: int = 5,
    image_size: int = 32,
    num_points: int = 2000,
    seed: int = 0,
) -> ArrayDataset:
    """A toy "car" category: a random body box plus a cabin box on top, rendered from
    random azimuths/elevations with :class:`dpc.render.PointCloudRenderer` (masks), each
    object in its own flat colour on white (images). Seconds to build; for tests.

    Returns an :class:`ArrayDataset` with splits ``train``/``val``/``test``.
    """
    num_objects = num_objects or {"train": 16, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    renderer = PointCloudRenderer(
        RenderSettings(vox_size=image_size, kernel_size=5, backend="reference")
    )
    splits = {}
    for split, n in num_objects.items():
        pts, masks, quats, images = [], [], [], []
        for _ in range(n):
            L, Hh, W = rng.uniform(0.7, 0.95), rng.uniform(0.15, 0.25), rng.uniform(0.3, 0.45)
            body_lo = np.array([-L / 2, -0.25, -W / 2])
            body_hi = np.array([L / 2, -0.25 + Hh, W / 2])
            cl = L * rng.uniform(0.35, 0.55)
            cab_lo = np.array([-cl / 2 + rng.uniform(-0.1, 0.1), body_hi[1], -W / 2 * 0.85])
            cab_hi = np.array([cab_lo[0] + cl, body_hi[1] + rng.uniform(0.12, 0.2), W / 2 * 0.85])
            n_body = int(num_points * 0.65)
            p = np.concatenate(
                [
                    _box_surface(rng, n_body, body_lo, body_hi),
                    _box_surface(rng, num_points - n_body, cab_lo, cab_hi),
                ]
            )
            p = p.astype(np.float32)
            # random views around the object: azimuth anywhere, elevation 0..40 degrees
            az = torch.rand(num_views, generator=gen) * 2 * math.pi
            el = torch.rand(num_views, generator=gen) * math.radians(40)
            q = view_quat(az, el)
            dense = torch.from_numpy(p)[None].expand(num_views, -1, -1)
            with torch.no_grad():
                sil = renderer(dense, q, sigma=0.6).silhouette  # [V, S, S]
            m = (sil.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            colour = rng.integers(40, 200, size=3)
            img = (255 - (m[..., None] / 255.0) * (255 - colour)).round().astype(np.uint8)
            pts.append(p)
            masks.append(m)
            quats.append(q.numpy().astype(np.float32))
            images.append(img)
        splits[split] = {
            "images": np.stack(images),
            "masks": np.stack(masks),
            "quats": np.stack(quats),
            "points": np.stack(pts),
            "depths": None,
        }
    return ArrayDataset(splits)
