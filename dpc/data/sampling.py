"""Training batches: a deterministic function of ``(seed, step)``.

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

from collections.abc import Collection

import numpy as np
import torch
from torch import Tensor

from dpc.camera import mirror_camera
from dpc.data.images import mask_distance_maps, prepare_images, prepare_masks, resize_masks


def build_batch_sampler(
    cfg,
    reader,
    split: str | None = None,
    batch_size: int | None = None,
    views_per_item: int | None = None,
    seed: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    targets: Collection[str] = (),
    mirror: bool = False,
) -> BatchSampler:
    """The :class:`BatchSampler` of a training config: ``data.split``,
    ``trainer.batch_size``, ``data.views_per_item``, ``seed`` unless given; network input
    ``data.image_size`` and mask grid ``render.vox_size`` always from ``cfg``; the extra
    maps named in ``targets`` (what the loss terms read,
    :func:`dpc.training.terms.batch_targets`): ``depth``, ``mask_distance``,
    ``mask_inner_distance``, ``full_res`` (depth and mask at the data set's resolution);
    ``mirror``: mirrored objects (:meth:`BatchSampler.mirrored`; the training loop passes
    ``trainer.mirror_augment``, validation batches are never mirrored)."""
    return BatchSampler(
        reader,
        str(cfg.data.split) if split is None else split,
        int(cfg.trainer.batch_size) if batch_size is None else batch_size,
        int(cfg.data.views_per_item) if views_per_item is None else views_per_item,
        int(cfg.data.image_size),
        int(cfg.render.vox_size),
        int(cfg.seed) if seed is None else seed,
        rank,
        world_size,
        with_depth="depth" in targets,
        with_mask_distance="mask_distance" in targets,
        with_inner_distance="mask_inner_distance" in targets,
        with_full_res="full_res" in targets,
        mirror=mirror,
    )


class BatchSampler:
    """Deterministic batches ``(seed, step) -> dict`` from a reader split.

    Args:
        reader: a dataset reader (see module docstring).
        split: which split.
        batch_size: global number of objects per step (split across DDP ranks).
        views_per_item: K views per object (<= the dataset's views).
        image_size: network input size (images resized with antialiased bilinear).
        mask_size: renderer grid G (masks resized with :func:`dpc.data.images.resize_masks`).
        seed: base seed.
        rank, world_size: this process takes objects ``[rank*B/W, (rank+1)*B/W)``.
        mirror: ``trainer.mirror_augment`` (not in the paper): each object of a step is,
            with probability 1/2, seen in the mirror (:meth:`mirrored`).
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
        with_inner_distance: bool = False,
        with_full_res: bool = False,
        mirror: bool = False,
    ):
        self.mirror = mirror
        self.with_mask_distance = with_mask_distance
        self.with_inner_distance = with_inner_distance
        self.with_full_res = with_full_res
        self.images = reader.images(split)
        self.masks = reader.masks(split)
        self.quats = reader.quats(split)
        self.depths = reader.depths(split) if with_depth else None
        if with_full_res and not with_depth:
            raise ValueError("loss.surface_full_res needs the depth maps (with_depth=True)")
        if with_depth and self.depths is None:
            raise ValueError(
                "loss.depth_weight, loss.surface_depth_weight or loss.depth_coverage_weight "
                "> 0 but the dataset has no "
                f"depth maps ({split})"
            )
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

    def mirrored(self, step: int) -> np.ndarray:
        """Global ``[B]`` bool: the objects of ``step`` seen in the left-right mirror (all
        False without ``mirror``). A mirrored object has every view's image, mask and depth
        map flipped along the image's width and its cameras reflected
        (:func:`dpc.camera.mirror_camera`): for an object mirror-symmetric across its z =
        0 plane, the same object seen from the reflected cameras, so the views stay
        consistent with each other and with one shape."""
        if not self.mirror:
            return np.zeros(self.B, dtype=bool)
        return np.random.default_rng([self.seed, 3, step]).random(self.B) < 0.5

    def views_of(self, obj: int, views: np.ndarray) -> dict[str, Tensor]:
        """Object ``obj`` seen from ``views`` ``[K]``: ``image [K, 3, s, s]``,
        ``mask [K, G, G]``, ``quat [K, 4]`` (prepared as in :meth:`__call__`)."""
        return {
            "image": prepare_images(self.images[obj, views], self.image_size),
            "mask": prepare_masks(self.masks[obj, views], self.mask_size),
            "quat": torch.from_numpy(np.ascontiguousarray(self.quats[obj, views])).float(),
        }

    def __call__(self, step: int) -> dict[str, Tensor]:
        """This rank's batch: ``image [b, K, 3, s, s]`` float in [0, 1], ``mask [b, K, G, G]``,
        ``quat [b, K, 4]``, ``depth [b, K, G, G]`` and ``mask_distance [b, K, G, G]``
        and ``mask_inner_distance [b, K, G, G]`` (if asked; see
        :func:`dpc.data.images.mask_distance_maps`), ``depth_full`` / ``mask_full``
        ``[b, K, S, S]`` at the data set's resolution (if asked), ``object_index [b]``,
        ``view_index [b, K]``, ``mirrored [b]`` (:meth:`mirrored`) (b = B / world size)."""
        objs, views = self.indices(step)
        b = self.B // self.world
        rows = slice(self.rank * b, (self.rank + 1) * b)
        objs, views, mirrored = objs[rows], views[rows], self.mirrored(step)[rows]
        flip = torch.from_numpy(np.repeat(mirrored, self.K))  # [b*K] per view

        def mirror(x: Tensor) -> Tensor:  # [b*K, ..., W]: the mirrored objects' views flipped
            if not mirrored.any():  # the default: no flipped copy of the batch
                return x
            return torch.where(flip.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)

        o = objs[:, None]
        img = prepare_images(
            self.images[o, views].reshape(-1, *self.images.shape[2:]), self.image_size
        )
        img = mirror(img).view(b, self.K, *img.shape[1:])
        # [b*K, S, S] at the dataset's resolution (the distance maps are made from it)
        masks = self.masks[o, views]
        full_mask = mirror(prepare_masks(masks.reshape(-1, *masks.shape[2:]), masks.shape[-1]))
        mask = resize_masks(full_mask, self.mask_size).view(
            b, self.K, self.mask_size, self.mask_size
        )
        quat = torch.from_numpy(np.ascontiguousarray(self.quats[o, views])).float()
        if mirrored.any():
            m = torch.from_numpy(mirrored)
            quat[m] = mirror_camera(quat[m])
        out = {
            "image": img.contiguous(),
            "mask": mask.contiguous(),
            "quat": quat,
            "object_index": torch.from_numpy(objs),
            "view_index": torch.from_numpy(views),
            "mirrored": torch.from_numpy(mirrored),
        }
        if self.depths is not None:
            dep = torch.from_numpy(np.ascontiguousarray(self.depths[o, views])).float()
            dep = mirror(dep.flatten(0, 1)).view_as(dep)
            out["depth"] = resize_masks(dep.flatten(0, 1), self.mask_size).view_as(mask)
            if self.with_full_res:  # the data set's own resolution, for the surface terms
                out["depth_full"] = dep.contiguous()
                out["mask_full"] = full_mask.view(b, self.K, *full_mask.shape[1:]).contiguous()
        if self.with_mask_distance:
            out["mask_distance"] = mask_distance_maps(
                full_mask.view(b, self.K, *full_mask.shape[1:]), self.mask_size
            )
        if self.with_inner_distance:
            out["mask_inner_distance"] = mask_distance_maps(
                full_mask.view(b, self.K, *full_mask.shape[1:]), self.mask_size, inside=True
            )
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
