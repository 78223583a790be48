"""The picture results/r7_ambiguity/twins.png (RESULTS.md "Round 7"): test views of airplanes
and cars, their mask at grid 32, and their ground-truth cloud rendered at the true pose, at
its silhouette twin, at a 15-degree azimuth error and at the flip.

    python results/r7_ambiguity/twins_picture.py     # from the repository root
"""

import numpy as np
import torch

from dpc.data import open_dataset, prepare_masks
from dpc.eval.pictures import grid_image
from dpc.eval.pose_ambiguity import CONFUSIONS, confusion_quats
from dpc.render import PointCloudRenderer, RenderSettings

NAMES = ["true", *CONFUSIONS]
IDX = [0, NAMES.index("twin_z"), NAMES.index("az+15"), NAMES.index("flip")]
LABELS = ["truth", "twin", "az+15", "flip"]
VIEWS = {"airplane_views20": [(0, 1), (1, 3), (2, 5), (3, 7)], "car_small": [(0, 0), (1, 2)]}


def main() -> None:
    rows = []
    renderer = PointCloudRenderer(RenderSettings(vox_size=32, kernel_size=7))
    for name, views in VIEWS.items():
        d = open_dataset("data/" + name)
        gt, q, m = (np.asarray(a) for a in (d.gt_points("test"), d.quats("test"), d.masks("test")))
        for o, v in views:
            c = confusion_quats(torch.tensor(q[o, v : v + 1]).double())[0]
            pts = torch.tensor(gt[o])[None].expand(4, -1, -1).float()
            with torch.no_grad():
                s = renderer(pts, c[IDX], sigma=0.5, scale=torch.full((4,), 0.2)).silhouette
            s = s.numpy()
            mk = prepare_masks(m[o, v : v + 1], 32)[0].numpy()
            row = [(1 - mk, f"{name.split('_')[0]} {o}/{v} mask")]
            row += [(1 - s[j], f"{LABELS[j]} err {((s[j] - mk) ** 2).sum():.1f}") for j in range(4)]
            rows.append(row)
    title = "GT cloud at the true pose, its twin (180-az, -el), az+15, flip; grid 32; L2 error"
    grid_image(rows, 128, title).save("results/r7_ambiguity/twins.png")


if __name__ == "__main__":
    main()
