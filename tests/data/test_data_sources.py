"""Built-in categories and mesh files: validity, variety, bad meshes, AC3D loading and the
airplane selection rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dpc.data import build_dataset, open_dataset
from dpc.data.__main__ import _cli
from dpc.data.mesh_utils import MeshError, check_mesh, sample_visible_surface
from dpc.data.sources.ac3d import load_ac, strip_line_surfaces
from dpc.data.sources.airplane import DEBIAN_AI_FOLDER, AirplaneSource, catalogue
from dpc.data.sources.car import CAR_TYPES, CarSource, make_car
from dpc.data.sources.chair import BACKS, BASES, ChairSource, make_chair


@pytest.mark.parametrize("kind", CAR_TYPES)
def test_car_types_are_watertight_and_oriented(kind):
    for s in range(3):
        m, info = make_car(np.random.default_rng(s), kind)
        assert m.is_watertight and m.is_winding_consistent and m.volume > 0
        assert info["type"] == kind
        lo, hi = m.bounds
        ext = hi - lo
        assert ext[0] > ext[2] > 0 and ext[0] > ext[1]  # long along x, wide along z
        assert lo[1] == pytest.approx(0.0, abs=1e-9)  # wheels on the ground plane y = 0
        # the nose (-x end) is lower than the roof: the windshield rises towards +x
        front = m.vertices[m.vertices[:, 0] < lo[0] + 0.05 * ext[0], 1].max()
        assert front < hi[1]


def test_cars_vary_and_are_normalised():
    src = CarSource(seed=0)
    kinds, dims = set(), []
    for i in range(30):
        m = src.load(f"train_{i:05d}")
        kinds.add(m.metadata["info"]["type"])
        lo, hi = m.bounds
        np.testing.assert_allclose((hi - lo).max(), 1.0)
        np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-9)
        dims.append(hi - lo)
    assert len(kinds) >= 5
    assert np.std(np.array(dims)[:, 1]) > 0.02  # heights differ (vans vs sports cars)
    # the same id gives the same car
    a, b = src.load("val_00003"), CarSource(seed=0).load("val_00003")
    np.testing.assert_array_equal(a.vertices, b.vertices)


def test_chairs_are_watertight_and_varied():
    for base in set(BASES):
        for back in set(BACKS):
            m, info = make_chair(np.random.default_rng(1), base, back)
            assert m.is_watertight and m.is_winding_consistent, (base, back)
    infos = [ChairSource(seed=0).load(f"train_{i:05d}").metadata["info"] for i in range(30)]
    assert len({i["base"] for i in infos}) >= 3 and len({i["back"] for i in infos}) >= 4


def test_gt_points_skip_hidden_surfaces():
    """A box with a smaller box inside: no GT point may lie on the hidden inner box."""
    import trimesh

    outer = trimesh.creation.box((1, 1, 1))
    inner = trimesh.creation.box((0.4, 0.4, 0.4))
    m = trimesh.util.concatenate([outer, inner])
    pts = sample_visible_surface(m, 2000, np.random.default_rng(0))
    assert pts.shape == (2000, 3)
    assert (np.abs(pts).max(1) > 0.49).all()  # all on the outer surface


def _write_obj(path: Path, verts, faces):
    lines = [f"v {x} {y} {z}" for x, y, z in verts] + [f"f {a + 1} {b + 1} {c + 1}"
                                                        for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def test_mesh_folder_dataset_with_bad_meshes(tmp_path):
    import trimesh

    folder = tmp_path / "meshes"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        trimesh.creation.box((1, 0.3 + 0.1 * i, 0.5)).export(folder / f"box{i}.obj")
    trimesh.creation.icosphere(2).export(folder / "sub" / "ball.ply")
    (folder / "empty.obj").write_text("# no faces\nv 0 0 0\n")
    _write_obj(folder / "nan.obj", [(0, 0, 0), (1, 0, 0), (float("nan"), 1, 0)], [(0, 1, 2)])
    (folder / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\n"
                                        b"element vertex 99\n")
    out = build_dataset(category="folder", source=str(folder), root=str(tmp_path / "data"),
                        name="mine", preset="quick", image_size=32, gt_points_dense=300,
                        gt_points=100, val_fraction=0.2, test_fraction=0.2, progress=False)
    ds = open_dataset(out)
    man = ds.manifest
    assert man["num_skipped"] == 3
    reasons = " | ".join(x["reason"] for v in man["skipped"].values() for x in v)
    assert "empty.obj" in reasons and "nan.obj" in reasons and "broken.ply" in reasons
    assert sum(len(v) for v in ds.splits.values()) == 6
    assert "sub__ball" in sum(ds.splits.values(), [])


def test_check_mesh_errors():
    import trimesh

    with pytest.raises(MeshError, match="thing: mesh is empty"):
        check_mesh(trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), int)), "thing")
    bad = trimesh.creation.box()
    bad.vertices[0, 0] = np.nan
    with pytest.raises(MeshError, match="NaN"):
        check_mesh(bad, "nanbox")


AC_BOX = """AC3D
MATERIAL "red" rgb 1 0 0  amb 0.2 0.2 0.2  emis 0 0 0  spec 0.5 0.5 0.5  shi 10  trans 0
OBJECT world
kids 1
OBJECT poly
name "box"
loc {dx} 0 0
numvert 8
{verts}
numsurf 8
SURF 0x10
mat 0
refs 4
0 0 0
3 0 0
2 0 0
1 0 0

SURF 0x10
mat 0
refs 4
4 0 0
5 0 0
6 0 0
7 0 0
SURF 0x10
mat 0
refs 4
0 0 0
1 0 0
5 0 0
4 0 0
SURF 0x10
mat 0
refs 4
2 0 0
3 0 0
7 0 0
6 0 0
SURF 0x10
mat 0
refs 4
1 0 0
2 0 0
6 0 0
5 0 0
SURF 0x10
mat 0
refs 4
3 0 0
0 0 0
4 0 0
7 0 0
SURF 0x2
mat 0
refs 2
0 0 0
6 0 0
SURF 0x10
mat 0
refs 2
1 0 0
7 0 0
kids 0
"""


def _ac(L=2.0, dx=0.0, scale=1.0):
    """AC3D text of a box [-L, L] x [-0.5, 0.5] x [-1, 1] (times ``scale``), moved by dx
    in x, with one line surface and one 2-vertex polygon that the loader must drop."""
    corners = [(-L, -0.5, -1), (L, -0.5, -1), (L, 0.5, -1), (-L, 0.5, -1),
               (-L, -0.5, 1), (L, -0.5, 1), (L, 0.5, 1), (-L, 0.5, 1)]
    verts = "\n".join(" ".join(str(scale * c) for c in v) for v in corners)
    return AC_BOX.format(verts=verts, dx=dx)


def test_ac3d_loader_drops_lines_and_applies_loc(tmp_path):
    text = _ac(dx=3.0)
    clean = strip_line_surfaces(text)
    assert clean.count("SURF") == 6 and "numsurf 6" in clean
    f = tmp_path / "box.ac"
    f.write_text(text)
    m = load_ac(f)
    assert len(m.faces) == 12
    np.testing.assert_allclose(m.bounds, [[1, -0.5, -1], [5, 0.5, 1]], atol=1e-6)
    np.testing.assert_allclose(m.visual.face_colors[0, :3], [255, 0, 0])
    (tmp_path / "bad.ac").write_text("AC3D\nOBJECT world\nkids 1\nOBJECT poly\n"
                                     "numsurf 1\nSURF 0x10\n")
    with pytest.raises(MeshError, match="bad.ac"):
        load_ac(tmp_path / "bad.ac")
    (tmp_path / "no.ac").write_text("hello")
    with pytest.raises(MeshError, match="not an AC3D file"):
        load_ac(tmp_path / "no.ac")


def test_airplane_selection_rules(tmp_path):
    ai = tmp_path / "AI" / "Aircraft"
    files = {
        "jet/Models/jet.ac": _ac(L=3.0),
        "jet/Models/jet_livery2.ac": _ac(L=3.0),  # same geometry: a livery
        "jet/Models/lights/nav.ac": _ac(scale=0.1),
        "jet/Models/droptank.ac": _ac(scale=0.3),
        "prop/Models/prop.ac": _ac(L=1.5),
        "prop/Models/engine.ac": _ac(scale=0.2),  # small part of its aircraft
        "balloon/Models/balloon1.ac": _ac(L=1.0),
    }
    for rel, text in files.items():
        (ai / rel).parent.mkdir(parents=True, exist_ok=True)
        (ai / rel).write_text(text)
    kept, excluded = catalogue(ai)
    assert sorted(kept) == ["jet-jet", "prop-prop"]
    why = dict(excluded)
    assert "balloon" in why["balloon/Models/balloon1.ac"]
    assert "same geometry" in why["jet/Models/jet_livery2.ac"]
    assert "part" in why["prop/Models/engine.ac"] and "part" in why["jet/Models/droptank.ac"]
    src = AirplaneSource(ai, val_fraction=0.0, test_fraction=0.0)
    assert src.split_ids()["train"] == ["jet-jet", "prop-prop"]
    m = src.load("jet-jet")
    np.testing.assert_allclose(m.bounds[1] - m.bounds[0], [1.0, 1 / 6, 1 / 3], atol=1e-6)
    d = json.loads(json.dumps(src.describe()))
    assert d["count"] == 2 and len(d["excluded"]) == 5


def test_airplane_package_or_install_hint(tmp_path, capsys):
    """With flightgear-data-ai installed: its models load, y up and nose along -x (the
    fuselage's front end is narrower than the wing span); without it: the command says
    how to install it."""
    missing = str(tmp_path / "no_flightgear")
    rc = _cli_args(["build", "category=airplane", f"source={missing}", f"root={tmp_path}"])
    assert rc == 2
    assert "apt-get install -y flightgear-data-ai" in capsys.readouterr().err
    if not Path(DEBIAN_AI_FOLDER).is_dir():
        return  # the package is not installed here: the hint above is what users see
    m = load_ac(Path(DEBIAN_AI_FOLDER) / "733" / "Models" / "733.ac")
    lo, hi = m.bounds
    ext = hi - lo
    assert ext[1] < ext[0] and ext[1] < ext[2]  # y (up) is the smallest extent
    # the vertical tail is at the back (+x): the highest vertices are in the rear half
    top = m.vertices[m.vertices[:, 1] > hi[1] - 0.1 * ext[1]]
    assert top[:, 0].mean() > (lo[0] + hi[0]) / 2


def _cli_args(args):
    import sys

    old = sys.argv
    sys.argv = ["dpc.data", *args]
    try:
        return _cli()
    finally:
        sys.argv = old
