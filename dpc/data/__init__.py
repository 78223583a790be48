"""Datasets: CPU mesh rendering, built-in categories, the on-disk format and loaders,
training batches and image preparation.

See docs/data.md. Public API::

    build_dataset(settings | **kwargs) -> Path     ensure_dataset(cfg_or_name, root) -> Path
    open_dataset(path) -> DatasetInfo              MultiViewDataset(path, split, views_per_item)
    open_training_data(cfg) -> reader              open_run_data(cfg, data_path, run_dir)
    build_batch_sampler(cfg, reader) -> BatchSampler   prepare_images(uint8, size) -> float
"""

from dpc.data.build import build_dataset, ensure_dataset, make_source
from dpc.data.config import PRESETS, BuildSettings, make_settings
from dpc.data.dataset import MultiViewDataset
from dpc.data.format import FORMAT_VERSION, DatasetFormatError, DatasetInfo, open_dataset
from dpc.data.images import prepare_images, prepare_masks
from dpc.data.mesh_render import MeshRenderer, MeshRenderSettings
from dpc.data.mesh_utils import MeshError
from dpc.data.readers import dataset_key, open_run_data, open_training_data
from dpc.data.sampling import BatchSampler, batch_iterator, build_batch_sampler
from dpc.data.synthetic import ArrayDataset, synthetic_dataset

__all__ = [
    "FORMAT_VERSION", "PRESETS", "ArrayDataset", "BatchSampler", "BuildSettings",
    "DatasetFormatError", "DatasetInfo", "MeshError", "MeshRenderSettings", "MeshRenderer",
    "MultiViewDataset", "batch_iterator", "build_batch_sampler", "build_dataset",
    "dataset_key", "ensure_dataset", "make_settings", "make_source", "open_dataset",
    "open_run_data", "open_training_data", "prepare_images", "prepare_masks",
    "synthetic_dataset",
]
