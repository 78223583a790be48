"""Loading AC3D (.ac) files through assimp (the ``assimp-py`` binding).

The AC3D parsing, node transforms and triangulation are assimp's. One thing has to be
done first: FlightGear models contain line surfaces (AC3D ``SURF`` types 1 and 2, used
for antennas and wires) and polygons with fewer than 3 vertices, which assimp passes
through as line/point primitives, and ``assimp-py`` refuses any non-triangle primitive.
They have no area, so they can neither be seen in a silhouette nor sampled for ground
truth: :func:`strip_line_surfaces` removes them from the text (fixing each object's
``numsurf``) before assimp reads it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import trimesh

from dpc.data.mesh_utils import MeshError

INSTALL_HINT = "pip install 'assimp-py>=1.1'"


def strip_line_surfaces(text: str, name: str = "<ac>") -> str:
    """AC3D text with every non-polygon surface (lines) and every polygon of fewer than
    3 vertices removed."""
    lines = [ln for ln in text.splitlines() if ln.strip()]  # some files have blank lines
    out: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if line.startswith("numsurf"):
            count = int(line.split()[1])
            i += 1
            kept: list[list[str]] = []
            for _ in range(count):
                if i >= n or not lines[i].startswith("SURF"):
                    raise MeshError(f"{name}: malformed AC3D surface near line {i + 1}")
                flags = int(lines[i].split()[1], 16)
                block = [lines[i]]
                i += 1
                while i < n and not lines[i].startswith("refs"):
                    block.append(lines[i])  # mat
                    i += 1
                if i >= n:
                    raise MeshError(f"{name}: truncated AC3D surface (no refs)")
                nref = int(lines[i].split()[1])
                block.extend(lines[i:i + 1 + nref])
                i += 1 + nref
                if (flags & 0x0F) == 0 and nref >= 3:
                    kept.append(block)
            out.append(f"numsurf {len(kept)}")
            for b in kept:
                out.extend(b)
            continue
        out.append(line)
        i += 1
    return "\n".join(out) + "\n"


def load_ac(path: str | os.PathLike, texture_colors: bool = True) -> trimesh.Trimesh:
    """Load an AC3D file as one triangle mesh in the file's frame (node transforms
    applied), with per-face colours from the material's texture at the face's UV
    centroid (when the texture file is readable) or else its diffuse colour."""
    try:
        import assimp_py
    except ImportError as exc:
        raise RuntimeError(f"loading .ac files needs assimp: {INSTALL_HINT}") from exc
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise MeshError(f"{path}: cannot read: {exc}") from exc
    if not text.startswith("AC3D"):
        raise MeshError(f"{path}: not an AC3D file (no AC3D header)")
    clean = strip_line_surfaces(text, str(path))
    # assimp resolves nothing relative to the file for geometry, so a temp copy is fine
    with tempfile.NamedTemporaryFile("w", suffix=".ac", delete=False) as tmp:
        tmp.write(clean)
        tmp_name = tmp.name
    try:
        flags = (assimp_py.Process_Triangulate | assimp_py.Process_PreTransformVertices
                 | assimp_py.Process_SortByPType)
        scene = assimp_py.import_file(tmp_name, flags)
    except Exception as exc:  # assimp raises RuntimeError with its message
        raise MeshError(f"{path}: assimp failed to load it: {exc}") from exc
    finally:
        os.unlink(tmp_name)
    verts, faces, colors = [], [], []
    offset = 0
    tex_cache: dict[str, np.ndarray | None] = {}
    for m in scene.meshes:
        v = np.asarray(m.vertices, np.float64).reshape(-1, 3)
        f = np.asarray(m.indices, np.int64).reshape(-1, 3)
        if len(f) == 0:
            continue
        mat = scene.materials[m.material_index] if m.material_index < len(scene.materials) else {}
        diffuse = np.asarray(mat.get("COLOR_DIFFUSE", [0.7, 0.7, 0.7])[:3], np.float64)
        col = np.tile(diffuse, (len(f), 1))
        tex = mat.get("TEXTURE_BASE")
        if texture_colors and tex and m.num_uv_components and len(m.texcoords) > 0:
            img = tex_cache.get(tex)
            if tex not in tex_cache:
                img = tex_cache[tex] = _read_texture(path.parent, tex)
            if img is not None:
                uv = np.asarray(m.texcoords[0], np.float64).reshape(len(v), -1)[:, :2]
                c = uv[f].mean(1) % 1.0
                H, W = img.shape[:2]
                px = np.clip((c[:, 0] * W).astype(int), 0, W - 1)
                py = np.clip(((1 - c[:, 1]) * H).astype(int), 0, H - 1)
                col = img[py, px] * diffuse
        verts.append(v)
        faces.append(f + offset)
        colors.append(col)
        offset += len(v)
    if not faces:
        raise MeshError(f"{path}: no triangles (empty mesh)")
    mesh = trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)
    rgba = np.concatenate((np.clip(np.concatenate(colors), 0, 1) * 255,
                           np.full((len(mesh.faces), 1), 255)), 1).astype(np.uint8)
    mesh.visual.face_colors = rgba
    return mesh


def _read_texture(folder: Path, name: str) -> np.ndarray | None:
    """RGB texture in [0, 1] ``[H, W, 3]`` looked up next to the model and in
    ``../Textures`` (FlightGear's layout); None when absent or unreadable (.rgb SGI
    images included, which Pillow reads)."""
    from PIL import Image

    for cand in (folder / name, folder.parent / "Textures" / name, folder / "Textures" / name):
        if cand.is_file():
            try:
                with Image.open(cand) as im:
                    return np.asarray(im.convert("RGB"), np.float64) / 255.0
            except (OSError, ValueError):
                return None
    return None
