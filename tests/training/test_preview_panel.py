"""The training preview has titled columns: input | GT mask | each candidate's silhouette
with its loss | the predicted cloud from two viewpoints."""

from types import SimpleNamespace

import numpy as np
import torch

from dpc.training.preview import PREVIEW_VIEWPOINTS, preview_panel, training_preview


def _fake(b=3, M=4, G=16, S=32, N=200):
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 2, 3, S, S, generator=g), "mask": torch.zeros(b, 2, G, G)}
    batch["mask"][:, :, 4:12, 3:13] = 1
    sil = torch.zeros(b, 2, M, G, G)
    sil[:, :, 1, 4:12, 3:13] = 1  # candidate 1 matches the mask exactly
    out = SimpleNamespace(
        silhouette=sil,
        points=torch.rand(b, N, 3, generator=g) - 0.5,
        winner=torch.zeros(b, 2, dtype=torch.long),
    )
    return batch, out


def test_training_preview_layout_and_titles():
    batch, out = _fake()
    img = training_preview(batch, out, step=9, cell=100)
    cols = 2 + 4 + len(PREVIEW_VIEWPOINTS)
    assert img.dtype == np.uint8 and img.shape[1] == cols * 100
    assert img.shape[0] > 3 * 100 + 40  # rows + title band + captions
    # every column has a title: dark text pixels in the band above the first row
    band = img[22:50]
    for j in range(cols):
        assert (band[:, j * 100 + 5 : (j + 1) * 100 - 5] < 100).any(), f"column {j} untitled"


def test_preview_panel_losses_and_camera_supervised_layout():
    batch, out = _fake(b=1)
    m = batch["mask"][:, 0]
    a = np.asarray(
        preview_panel(batch["image"][:, 0], m, out.silhouette[:, 0], out.points, cell=100)
    )
    # the captioned losses: the candidate matching the mask has loss 0
    from dpc.losses import per_view_l2

    loss = per_view_l2(out.silhouette[:, 0], m[:, None])[0]
    assert float(loss[1]) == 0 and float(loss[0]) > 0
    cs = preview_panel(
        batch["image"][:, 0], m, out.silhouette[:, 0, :1], out.points, camera_supervised=True
    )
    assert cs.size[0] == (2 + 1 + 2) * 128 and a.shape[1] == 8 * 100
