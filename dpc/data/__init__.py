"""Datasets: CPU mesh rendering, built-in categories, the on-disk format and loaders.

See docs/data.md. Public API::

    build_dataset(settings | **kwargs) -> Path     ensure_dataset(cfg_or_name, root) -> Path
    open_dataset(path) -> DatasetInfo              MultiViewDataset(path, split, views_per_item)
"""

from dpc.data.build import build_dataset, ensure_dataset, make_source
from dpc.data.config import PRESETS, BuildSettings, make_settings
from dpc.data.dataset import MultiViewDataset
from dpc.data.format import FORMAT_VERSION, DatasetFormatError, DatasetInfo, open_dataset
from dpc.data.mesh_utils import MeshError
from dpc.data.render import MeshRenderer, MeshRenderSettings

__all__ = [
    "FORMAT_VERSION", "PRESETS", "BuildSettings", "DatasetFormatError", "DatasetInfo",
    "MeshError", "MeshRenderSettings", "MeshRenderer", "MultiViewDataset", "build_dataset",
    "ensure_dataset", "make_settings", "make_source", "open_dataset",
]
