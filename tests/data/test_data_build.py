"""Builder: tiny builds, reuse, resume after an interruption, manifest checks, loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dpc.data import (
    FORMAT_VERSION,
    DatasetFormatError,
    MultiViewDataset,
    build_dataset,
    ensure_dataset,
    make_settings,
    open_dataset,
)
from dpc.data.__main__ import main as cli
from dpc.data.sources.car import CarSource


class CountingCars(CarSource):
    """Cars that count loads and can raise after ``fail_after`` loads (a simulated kill)."""

    loads = 0
    fail_after: int | None = None

    def load(self, object_id):
        if CountingCars.fail_after is not None and CountingCars.loads >= CountingCars.fail_after:
            raise KeyboardInterrupt("simulated kill")
        CountingCars.loads += 1
        return super().load(object_id)


@pytest.fixture(autouse=True)
def _reset_counter():
    CountingCars.loads = 0
    CountingCars.fail_after = None


def test_tiny_build_layout_and_reader(tiny_kwargs):
    out = build_dataset(**tiny_kwargs)
    ds = open_dataset(out)
    assert ds.num_views == 5 and ds.image_size == 32
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 4, "val": 1, "test": 1}
    assert ds.images("train").shape == (4, 5, 32, 32, 3) and ds.images("train").dtype == np.uint8
    assert ds.masks("val").shape == (1, 5, 32, 32)
    assert ds.depths("test").dtype == np.float16
    assert ds.quats("train").shape == (4, 5, 4) and ds.quats("train").dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ds.cam_pos("train"), axis=-1), 2.0, atol=1e-5)
    assert ds.gt_points("train").shape == (4, 200, 3)
    assert ds.gt_points("train", dense=True).shape == (4, 400, 3)
    assert np.abs(ds.gt_points("train", dense=True)).max() <= 0.5 + 1e-5
    m = ds.masks("train")
    d = ds.depths("train").astype(np.float32)
    # background depth 10 exactly where the mask is empty
    assert (d[m == 0] == 10).all() and (d[m == 255] < 3).all()
    ds.verify()
    man = json.loads((out / "manifest.json").read_text())
    assert man["format_version"] == FORMAT_VERSION and man["num_skipped"] == 0
    assert set(man["checksums"]) >= {"train/images.npy", "test/gt_points.npy"}
    assert man["renderer"]["focal_length"] == 1.875 and man["renderer"]["camera_distance"] == 2.0


def test_builds_are_deterministic(tmp_path, tiny_kwargs):
    a = open_dataset(build_dataset(**tiny_kwargs))
    b = open_dataset(build_dataset(**{**tiny_kwargs, "root": str(tmp_path / "other"),
                                      "workers": 2}))
    np.testing.assert_array_equal(a.masks("train"), b.masks("train"))
    np.testing.assert_array_equal(a.quats("val"), b.quats("val"))
    np.testing.assert_array_equal(a.gt_points("test"), b.gt_points("test"))


def test_rerun_reuses_and_other_settings_refuse(tiny_kwargs):
    s = make_settings(**tiny_kwargs)
    out = build_dataset(s, mesh_source=CountingCars({"train": 4, "val": 1, "test": 1}))
    n = CountingCars.loads
    assert n == 6
    mtime = (out / "manifest.json").stat().st_mtime_ns
    build_dataset(s, mesh_source=CountingCars({"train": 4, "val": 1, "test": 1}))
    assert CountingCars.loads == n  # nothing reloaded
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(DatasetFormatError, match="other settings"):
        build_dataset(**{**tiny_kwargs, "views": 3})
    build_dataset(**{**tiny_kwargs, "views": 3}, overwrite=True)
    assert open_dataset(out).num_views == 3


def test_interrupted_build_resumes(tiny_kwargs):
    s = make_settings(**tiny_kwargs)
    sizes = {"train": 4, "val": 1, "test": 1}
    CountingCars.fail_after = 3
    with pytest.raises(KeyboardInterrupt):
        build_dataset(s, mesh_source=CountingCars(sizes))
    folder = Path(tiny_kwargs["root"]) / "car_quick"
    assert not (folder / "manifest.json").exists()  # never looks complete
    with pytest.raises(DatasetFormatError, match="unfinished build"):
        open_dataset(folder)
    CountingCars.fail_after = None
    CountingCars.loads = 0
    build_dataset(s, mesh_source=CountingCars(sizes))
    assert CountingCars.loads == 3  # only the 3 unfinished objects
    ds = open_dataset(folder)
    assert len(ds.splits["train"]) == 4 and not (folder / ".partial").exists()
    # identical to an uninterrupted build
    ref = open_dataset(build_dataset(**{**tiny_kwargs, "name": "ref"}))
    np.testing.assert_array_equal(ref.images("train"), ds.images("train"))


def test_manifest_version_mismatch(tiny_kwargs):
    out = build_dataset(**tiny_kwargs)
    man = json.loads((out / "manifest.json").read_text())
    man["format_version"] = FORMAT_VERSION + 1
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DatasetFormatError, match=r"manifest\.json has format_version 2"):
        open_dataset(out)


def test_unreadable_manifest(tiny_kwargs):
    out = build_dataset(**tiny_kwargs)
    (out / "manifest.json").write_text("{ truncated")
    with pytest.raises(DatasetFormatError, match=r"manifest\.json is not valid JSON"):
        open_dataset(out)


def test_missing_and_corrupt_arrays(tiny_kwargs):
    out = build_dataset(**tiny_kwargs)
    (out / "train" / "masks.npy").write_bytes(b"garbage")
    ds = open_dataset(out)
    with pytest.raises(DatasetFormatError, match="masks.npy"):
        ds.masks("train")
    with pytest.raises(DatasetFormatError, match="checksum mismatch"):
        ds.verify()
    with pytest.raises(DatasetFormatError, match="not a built dataset"):
        open_dataset(out / "nothing_here")


def test_multiview_dataset_items(tiny_kwargs):
    out = build_dataset(**tiny_kwargs)
    ds = MultiViewDataset(out, "train", views_per_item=4, seed=1)
    assert len(ds) == 4
    item = ds[2]
    assert item["image"].shape == (4, 3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (4, 32, 32) and 0 <= item["mask"].min() <= item["mask"].max() <= 1
    assert item["quat"].shape == (4, 4) and item["cam_pos"].shape == (4, 3)
    assert item["object_index"].item() == 2 and item["view_index"].shape == (4,)
    assert len(set(item["view_index"].tolist())) == 4
    info = open_dataset(out)
    v = item["view_index"].numpy()
    np.testing.assert_array_equal(item["mask"].numpy(), info.masks("train")[2, v] / 255.0)
    np.testing.assert_array_equal(item["quat"].numpy(), info.quats("train")[2, v])
    # same epoch -> same views; another epoch -> (almost surely) other draws somewhere
    np.testing.assert_array_equal(ds[2]["view_index"], item["view_index"])
    before = [ds[i]["view_index"].tolist() for i in range(4)]
    ds.set_epoch(1)
    assert [ds[i]["view_index"].tolist() for i in range(4)] != before
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 4, 3, 32, 32)
    # pickles without the memory maps (spawned loader workers), and reopens them
    import pickle

    blob = pickle.dumps(ds)
    assert len(blob) < 20000
    ds2 = pickle.loads(blob)
    ds2.set_epoch(0)
    np.testing.assert_array_equal(ds2[2]["image"], item["image"])
    with pytest.raises(ValueError, match="views_per_item"):
        MultiViewDataset(out, "train", views_per_item=6)


def test_ensure_dataset_and_cli(tmp_path, tiny_kwargs):
    root = tiny_kwargs["root"]
    cfg = {k: v for k, v in tiny_kwargs.items() if k != "root"}
    p = ensure_dataset(cfg, root=root)
    assert (p / "manifest.json").exists()
    assert ensure_dataset(str(p)) == p  # a dataset path is returned as is
    assert cli(["build", "category=car", "preset=quick", f"root={root}", "train=2", "val=1",
                "test=1", "image_size=16", "name=cli", "progress=false"]) == 0
    sheet = tmp_path / "sheet.png"
    assert cli(["sheet", f"path={p}", f"out={sheet}", "n=4"]) == 0
    from PIL import Image

    assert Image.open(sheet).size[0] > 3 * 32
    with pytest.raises(ValueError, match="unknown dataset setting"):
        cli(["build", "categroy=car"])


def test_normalize_diagonal_keeps_objects_in_frame(tiny_kwargs):
    """normalize=diagonal (the default) scales each object to bounding-box diagonal 1: GT
    points span a box of diagonal ~1 and no mask touches the image border. The key of a
    cube-normalised dataset stays what it was before the option existed, and differs from
    the diagonal one, so an old cube build is never reused as a diagonal one."""
    assert make_settings(**{**tiny_kwargs, "normalize": "cube"}).identity().get("normalize") is None
    assert make_settings(**tiny_kwargs).identity()["normalize"] == "diagonal"
    out = build_dataset(**{**tiny_kwargs, "normalize": "diagonal", "name": "diag"})
    ds = open_dataset(out)
    pts = ds.gt_points("train", dense=True)
    ext = pts.max(1) - pts.min(1)
    np.testing.assert_allclose(np.linalg.norm(ext, axis=-1), 1.0, atol=0.03)
    m = ds.masks("train")
    border = np.concatenate([m[..., 0, :], m[..., -1, :], m[..., :, 0], m[..., :, -1]], -1)
    assert border.max() == 0
    with pytest.raises(ValueError, match="normalize"):
        make_settings(**{**tiny_kwargs, "normalize": "sphere"})
