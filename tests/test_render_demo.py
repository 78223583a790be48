"""The render demo writes a PNG grid that shows the shape."""

import numpy as np
from PIL import Image

from dpc.render_demo import main, primitive_points


def test_render_demo_writes_png(tmp_path):
    out = tmp_path / "d.png"
    main(["shape=chair", "views=3", "image_size=32", f"out={out}"])
    img = np.asarray(Image.open(out))
    assert img.shape == (3 * 32 * 2, 3 * 32 * 2, 3)
    sil = img[:64, :, 0]
    assert 0.05 < (sil > 128).mean() < 0.6  # something is drawn, not everything


def test_primitives_inside_unit_cube():
    for s in ("chair", "torus", "box"):
        p = primitive_points(s, 1000)
        assert p.shape == (1000, 3) and p.abs().max() <= 0.5
