"""Torch dataset for training: objects with K of their V views per item."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from dpc.data.format import DatasetInfo


class MultiViewDataset(Dataset):
    """Items are objects; each item holds ``views_per_item`` (K) of the object's V views.

    Args:
        path: dataset folder, or an open :class:`DatasetInfo`.
        split: ``"train"``, ``"val"`` or ``"test"``.
        views_per_item: K (paper: 4 of 5).
        seed: the views of item i in epoch e are a seeded function of (seed, e, i), so
            runs are reproducible with any number of loader workers; call
            :meth:`set_epoch` each epoch for fresh draws.
        random_views: False gives views 0..K-1 in order (evaluation).
        in_memory: copy the split's images and masks into RAM at construction (the
            default, memory maps, is already fast once the OS has cached the files).

    Item (S = image size): ``image`` float32 [K, 3, S, S] in [0, 1], ``mask`` float32
    [K, S, S] in [0, 1], ``quat`` float32 [K, 4], ``cam_pos`` float32 [K, 3],
    ``object_index`` int64 scalar, ``view_index`` int64 [K]. The first view is the one
    the shape is predicted from.
    """

    def __init__(self, path: str | os.PathLike | DatasetInfo, split: str = "train",
                 views_per_item: int = 4, seed: int = 0, random_views: bool = True,
                 in_memory: bool = False):
        self.info = path if isinstance(path, DatasetInfo) else DatasetInfo(path)
        V = self.info.num_views
        if not 1 <= views_per_item <= V:
            raise ValueError(f"views_per_item must be in [1, {V}] (the dataset has {V} views), "
                             f"got {views_per_item}")
        self.split = split
        self.k = views_per_item
        self.seed = int(seed)
        self.random_views = random_views
        self.epoch = 0
        self._images = self.info.images(split)
        self._masks = self.info.masks(split)
        self._in_memory = in_memory
        if in_memory:
            self._images = np.ascontiguousarray(self._images)
            self._masks = np.ascontiguousarray(self._masks)
        self._quats = np.ascontiguousarray(self.info.quats(split))
        self._cam_pos = np.ascontiguousarray(self.info.cam_pos(split))
        self.object_ids = self.info.splits[split]

    def __getstate__(self) -> dict:
        # Loader workers started with "spawn" receive a pickled copy: send the path, not
        # the memory maps (pickling a memmap copies its whole content).
        state = self.__dict__.copy()
        if not self._in_memory:
            state["_images"] = state["_masks"] = None
        state["info"] = str(self.info.path)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.info = DatasetInfo(state["info"])
        if self._images is None:
            self._images = self.info.images(self.split)
            self._masks = self.info.masks(self.split)

    def __len__(self) -> int:
        return len(self.object_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def view_indices(self, index: int) -> np.ndarray:
        """The K view indices of item ``index`` in the current epoch."""
        V = self.info.num_views
        if not self.random_views:
            return np.arange(self.k)
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        return rng.permutation(V)[: self.k]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} objects")
        index = int(index) % len(self)
        v = self.view_indices(index)
        vs = np.sort(v)  # memmap reads in increasing order, then restore the draw order
        inv = np.argsort(np.argsort(v))
        img = torch.from_numpy(np.asarray(self._images[index, vs])[inv])  # [K, S, S, 3] u8
        msk = torch.from_numpy(np.asarray(self._masks[index, vs])[inv])
        return {
            "image": img.permute(0, 3, 1, 2).float().div_(255.0),
            "mask": msk.float().div_(255.0),
            "quat": torch.from_numpy(self._quats[index, v]),
            "cam_pos": torch.from_numpy(self._cam_pos[index, v]),
            "object_index": torch.tensor(index, dtype=torch.int64),
            "view_index": torch.from_numpy(v.astype(np.int64)),
        }
