"""Training data: deterministic batches as a function of (seed, step), and a small
synthetic dataset for tests.

Every batch is a pure function of ``(seed, step)``: which objects (epoch-wise random
permutations) and which of their views (a random K-subset, the first one being the
view the shape is predicted from). A resumed run therefore reads exactly the batches the
uninterrupted run would have, without saving any sampler state, and DDP ranks take
disjoint slices of the same global batch.

Readers follow the ``dpc.data`` reader API (docs/CONTRACTS.md): ``.splits``,
``.num_views``, ``.image_size``, ``.images(split)`` uint8 ``[n, V, S, S, 3]``,
``.masks(split)`` uint8 ``[n, V, S, S]``, ``.quats(split)`` ``[n, V, 4]``,
``.depths(split)`` or None, ``.gt_points(split)`` ``[n, P, 3]``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dpc.camera import mask_distance_maps, resize_masks, view_quat


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
    from dpc.render import PointCloudRenderer, RenderSettings

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


def open_training_data(cfg):
    """The dataset reader named by ``cfg.data``: synthetic (built in memory) or an on-disk
    ``dpc.data`` dataset, built first when missing and ``data.build_if_missing`` is true.
    """
    d = cfg.data
    if d.source == "synthetic":
        return synthetic_dataset(
            {
                "train": int(d.synthetic.num_train),
                "val": int(d.synthetic.num_val),
                "test": int(d.synthetic.num_val),
            },
            num_views=int(d.synthetic.num_views),
            image_size=int(d.synthetic.image_size),
            seed=int(d.synthetic.seed),
        )
    if d.source != "dataset":
        raise ValueError(f"data.source must be 'dataset' or 'synthetic', got {d.source!r}")
    try:
        import dpc.data as dpc_data
    except ImportError as e:  # the data package is another part of the project
        raise RuntimeError(f"dpc.data is not available ({e}); use data=synthetic") from e
    root = Path(str(d.root))
    path = root / str(d.name)
    if not (path / "manifest.json").exists():
        if not d.build_if_missing:
            raise FileNotFoundError(
                f"dataset {path} is missing; build it with: "
                f"python -m dpc.data build {d.build_command_args}"
            )
        path = Path(dpc_data.ensure_dataset(str(d.name), root=root))
    return dpc_data.open_dataset(path)


class BatchSampler:
    """Deterministic batches ``(seed, step) -> dict`` from a reader split.

    Args:
        reader: a dataset reader (see module docstring).
        split: which split.
        batch_size: global number of objects per step (split across DDP ranks).
        views_per_item: K views per object (<= the dataset's views).
        image_size: network input size (images resized with antialiased bilinear).
        mask_size: renderer grid G (masks resized with :func:`dpc.camera.resize_masks`).
        seed: base seed.
        rank, world_size: this process takes objects ``[rank*B/W, (rank+1)*B/W)``.
    """

    def __init__(
        self,
        reader,
        split: str,
        batch_size: int,
        views_per_item: int,
        image_size: int,
        mask_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        with_depth: bool = False,
        with_mask_distance: bool = False,
    ):
        self.with_mask_distance = with_mask_distance
        self.images = reader.images(split)
        self.masks = reader.masks(split)
        self.quats = reader.quats(split)
        self.depths = reader.depths(split) if with_depth else None
        if with_depth and self.depths is None:
            raise ValueError(f"loss.depth_weight > 0 but the dataset has no depth maps ({split})")
        self.n = int(self.masks.shape[0])
        self.V = int(self.masks.shape[1])
        if views_per_item > self.V:
            raise ValueError(f"views_per_item={views_per_item} > views in the dataset ({self.V})")
        if batch_size % world_size:
            raise ValueError(
                f"batch_size={batch_size} must be divisible by world size {world_size}"
            )
        self.B, self.K = batch_size, views_per_item
        self.image_size, self.mask_size, self.seed = image_size, mask_size, seed
        self.rank, self.world = rank, world_size
        self._perm_cache: dict[int, np.ndarray] = {}

    def indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Global ``(objects [B], views [B, K])`` of ``step``."""
        pos = step * self.B + np.arange(self.B)
        epochs, within = pos // self.n, pos % self.n
        objs = np.empty(self.B, dtype=np.int64)
        for e in np.unique(epochs):
            if e not in self._perm_cache:
                if len(self._perm_cache) > 4:
                    self._perm_cache.clear()
                self._perm_cache[e] = np.random.default_rng([self.seed, 1, int(e)]).permutation(
                    self.n
                )
            sel = epochs == e
            objs[sel] = self._perm_cache[e][within[sel]]
        rng = np.random.default_rng([self.seed, 2, step])
        views = np.argsort(rng.random((self.B, self.V)), axis=1)[:, : self.K]
        return objs, views

    def __call__(self, step: int) -> dict[str, Tensor]:
        """This rank's batch: ``image [b, K, 3, s, s]`` float in [0, 1], ``mask [b, K, G, G]``,
        ``quat [b, K, 4]``, ``depth [b, K, G, G]`` and ``mask_distance [b, K, G, G]``
        (if asked; see :func:`dpc.camera.mask_distance_maps`), ``object_index [b]``,
        ``view_index [b, K]``, ``step`` (b = B / world size)."""
        objs, views = self.indices(step)
        b = self.B // self.world
        objs, views = (
            objs[self.rank * b : (self.rank + 1) * b],
            views[self.rank * b : (self.rank + 1) * b],
        )
        o = objs[:, None]
        img = torch.from_numpy(np.ascontiguousarray(self.images[o, views]))  # [b, K, S, S, 3]
        img = img.permute(0, 1, 4, 2, 3).float().div_(255.0)
        S = img.shape[-1]
        if S != self.image_size:
            img = F.interpolate(
                img.flatten(0, 1),
                size=(self.image_size,) * 2,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            ).view(b, self.K, 3, self.image_size, self.image_size)
        # [b, K, S, S] at the dataset's resolution (the distance maps are made from it)
        full_mask = torch.from_numpy(np.ascontiguousarray(self.masks[o, views])).float().div_(255.0)
        mask = resize_masks(full_mask.flatten(0, 1), self.mask_size).view(
            b, self.K, self.mask_size, self.mask_size
        )
        out = {
            "image": img.contiguous(),
            "mask": mask.contiguous(),
            "quat": torch.from_numpy(np.ascontiguousarray(self.quats[o, views])).float(),
            "object_index": torch.from_numpy(objs),
            "view_index": torch.from_numpy(views),
        }
        if self.depths is not None:
            dep = torch.from_numpy(np.ascontiguousarray(self.depths[o, views])).float()
            out["depth"] = resize_masks(dep.flatten(0, 1), self.mask_size).view_as(mask)
        if self.with_mask_distance:
            out["mask_distance"] = mask_distance_maps(full_mask, self.mask_size)
        return out


class StepBatches(torch.utils.data.Dataset):
    """Item ``i`` = the batch of step ``start + i``: lets a ``DataLoader`` build batches in
    worker processes while staying a function of the step."""

    def __init__(self, sampler: BatchSampler, start: int, stop: int):
        self.sampler, self.start, self.stop = sampler, start, stop

    def __len__(self):
        return max(0, self.stop - self.start)

    def __getitem__(self, i):
        return self.sampler(self.start + i)


def batch_iterator(sampler: BatchSampler, start: int, stop: int, num_workers: int = 0):
    """Iterate the batches of steps ``start..stop-1``: in-process (``num_workers=0``) or
    through a ``DataLoader`` with workers (prefetching, pinned memory on CUDA)."""
    if num_workers <= 0:
        return (sampler(s) for s in range(start, stop))
    dl = torch.utils.data.DataLoader(
        StepBatches(sampler, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=False,
        prefetch_factor=4,
        pin_memory=torch.cuda.is_available(),
    )
    return iter(dl)
