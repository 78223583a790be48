"""How well do a data set's silhouettes pin down the camera pose? Render the ground truth.

A silhouette-only method can only learn a pose that the silhouettes tell apart from
other poses. This renders each view's ground-truth cloud with dpc's renderer at the true
pose and at a few fixed confusions of it, and scores every render against the view's own
mask (the L2 error of :func:`dpc.eval.predictions.silhouette_errors`). No network is
involved: it bounds what any predicted shape can do, and a predicted shape (never exact)
does worse.

The confusions (camera azimuth ``az = atan2(z, x)``, elevation ``el`` above the x-z plane,
as :func:`dpc.camera.view_quat`):

* ``twin_z``: ``(180 - az, -el)``, the camera turned 180 degrees about the z axis. For an
  object mirror-symmetric across ``z = 0`` (the three built-in categories: nose or front
  along x) it renders the *same* silhouette under an orthographic camera; only
  perspective tells the two apart. Seen from near the object's horizontal plane it reads
  as ``180 - az``.
* ``twin_x``: ``(-az, -el)``, the same about x (objects symmetric across ``x = 0``).
* ``flip``: ``(az + 180, el)``, front/back.
* ``az+15``, ``az+30``, ``el+15``: small errors, a yardstick.

    python -m dpc.eval.pose_ambiguity dataset=data/airplane_views20 [split=test vox_size=32]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dpc.camera import camera_azel, silhouette_twin, view_quat
from dpc.cli import print_json, run_command
from dpc.data import prepare_masks
from dpc.data.images import resize_masks
from dpc.eval.metrics import pose_errors_deg
from dpc.eval.predictions import silhouette_errors

_R = math.radians
# name -> (azimuth, elevation) of the confusion, from the true ones (radians)
CONFUSIONS = {
    "twin_z": lambda az, el: (math.pi - az, -el),
    "twin_x": lambda az, el: (-az, -el),
    "flip": lambda az, el: (az + math.pi, el),
    "az+15": lambda az, el: (az + _R(15), el),
    "az+30": lambda az, el: (az + _R(30), el),
    "el+15": lambda az, el: (az, el + _R(15)),
}
# occupancy scales tried for the ground-truth cloud (the one that renders the true poses
# closest to the masks is used; a data set's cloud density is not the model's)
SCALES = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def azimuth_elevation(quat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(az, el)`` in radians ``[...]`` (float64) of camera quaternions ``[..., 4]``
    (inverse of :func:`dpc.camera.view_quat`): :func:`dpc.camera.camera_azel`."""
    return camera_azel(quat.double())


def confusion_quats(quat: torch.Tensor) -> torch.Tensor:
    """``[B, 1 + K, 4]``: the true camera quaternions ``quat [B, 4]`` (re-made by
    :func:`dpc.camera.view_quat`), then each of :data:`CONFUSIONS`. Elevations beyond
    +-89 degrees are clamped (the camera must stay off the vertical)."""
    az, el = azimuth_elevation(quat)
    lim = _R(89.0)
    poses = [(az, el)] + [f(az, el) for f in CONFUSIONS.values()]
    return torch.stack([view_quat(a, e.clamp(-lim, lim)) for a, e in poses], 1).float()


def twin_blind_accuracy(quats, elevation_range=None, threshold_deg: float = 30.0) -> dict:
    """The pose accuracy of a model right on every view up to the twin (``twin_z``) that
    cannot tell a view from its twin, from the true poses alone.

    ``quats [..., 4]`` the true cameras; ``elevation_range`` ``(lo, hi)`` degrees, the
    cameras' known elevation range, or None. Returns ``twin_within`` (share of views
    whose twin lies within ``threshold_deg`` of the truth: right either way),
    ``coin_toss`` (that, plus half of the others: the twin picked at random) and, with a
    range, ``twin_outside_range`` (share of the others whose twin's elevation is outside
    it) and ``knowing_the_range`` (the twin ruled out there, a coin toss elsewhere).
    Perspective and an exact shape can do better (``identified``); a model that also
    errs beyond the twin does worse."""
    q = torch.tensor(np.asarray(quats), dtype=torch.float64).reshape(-1, 4)
    _, el = azimuth_elevation(q)
    near = pose_errors_deg(silhouette_twin(q), q) < float(threshold_deg)
    res = {"threshold_deg": float(threshold_deg), "twin_within": float(near.double().mean()),
           "coin_toss": float((near.double() + 0.5 * (~near).double()).mean())}  # fmt: skip
    if elevation_range is not None:
        lo, hi = (float(x) for x in elevation_range)
        out = ((-torch.rad2deg(el) < lo) | (-torch.rad2deg(el) > hi)) & ~near
        res["elevation_range"] = [lo, hi]
        res["twin_outside_range"] = float(out.double().mean())
        res["knowing_the_range"] = float(
            (near.double() + out.double() + 0.5 * (~near & ~out).double()).mean()
        )
    return res


def _errors(pts, cands, masks, renderer, sigma, scale, batch_size, progress):
    """``[n V, 1 + K]`` silhouette errors of each object's cloud ``pts [n, N, 3]`` at its
    views' confusions ``cands [n V, 1 + K, 4]`` (:func:`confusion_quats`)."""
    n, V = pts.shape[0], cands.shape[0] // pts.shape[0]
    flat_pts = pts[:, None].expand(n, V, *pts.shape[1:]).reshape(n * V, *pts.shape[1:])
    out = []
    it = range(0, n * V, batch_size)
    for s in tqdm(it, desc="pose ambiguity", disable=None if progress else True):
        sl = slice(s, s + batch_size)
        b = flat_pts[sl].shape[0]
        out.append(silhouette_errors(flat_pts[sl], torch.full((b,), float(scale)), cands[sl],
                                     masks[sl], renderer, sigma))  # fmt: skip
    return torch.cat(out)


@torch.no_grad()
def ambiguity_table(points, quats, masks, renderer, sigma: float, scale: float | None = None,
                    batch_size: int = 16, progress: bool = False) -> dict:  # fmt: skip
    """Score the true pose against each confusion, from ground truth only.

    Args:
        points: ``[n, N, 3]`` each object's ground-truth cloud (model frame).
        quats: ``[n, V, 4]`` the views' true camera quaternions.
        masks: ``[n, V, H, W]`` the views' masks (uint8 0/255 or float in [0, 1]).
        renderer, sigma: dpc's renderer and blur (cells) the clouds are drawn with.
        scale: the clouds' occupancy scale; None picks the one of :data:`SCALES` whose
            renders at the true poses are closest to the masks.

    Returns a dict: ``scale``, ``true_error`` (mean error over the mask's area), and per
    confusion ``angle_deg`` (median rotation from the truth), ``error_ratio`` (median of
    its error over the true pose's), ``identified`` (share of views whose true pose
    renders strictly closer to the mask) and ``closer_than_az15`` (share of views whose
    confusion renders closer than a 15-degree azimuth error does).
    """
    pts = torch.tensor(np.asarray(points), dtype=torch.float32)
    q = torch.tensor(np.asarray(quats), dtype=torch.float64)
    if pts.ndim != 3 or q.ndim != 3 or q.shape[0] != pts.shape[0] or q.shape[2] != 4:
        raise ValueError(f"need points [n, N, 3] and quats [n, V, 4], got {tuple(pts.shape)} "
                         f"and {tuple(q.shape)}")  # fmt: skip
    n, V = q.shape[:2]
    m = np.asarray(masks)
    if m.shape[:2] != (n, V):
        raise ValueError(f"masks must be [n, V, H, W] = [{n}, {V}, ...], got {m.shape}")
    G = renderer.settings.vox_size
    m = m.reshape(n * V, *m.shape[2:])
    mk = prepare_masks(m, G) if m.dtype == np.uint8 else resize_masks(torch.as_tensor(m).float(), G)
    cands = confusion_quats(q.reshape(n * V, 4))
    if scale is None:
        k = max(1, 32 // V)  # the first objects, about 32 views, to pick the scale on
        fit = [float(_errors(pts[:k], cands[: k * V], mk[: k * V], renderer, sigma, s,
                             batch_size, False)[:, 0].sum()) for s in SCALES]  # fmt: skip
        scale = SCALES[int(np.argmin(fit))]
    if not float(scale) > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    err = _errors(pts, cands, mk, renderer, sigma, scale, batch_size, progress).double()
    area = mk.flatten(1).sum(1).double().clamp_min(1.0)
    true = err[:, 0]
    cands = cands.double()
    i15 = 1 + list(CONFUSIONS).index("az+15")
    res = {"views": n * V, "grid": G, "sigma": float(sigma), "scale": float(scale),
           "true_error": float((true / area).mean())}  # fmt: skip
    for i, name in enumerate(CONFUSIONS, start=1):
        ang = pose_errors_deg(cands[:, i], cands[:, 0])
        res[name] = {
            "angle_deg": float(ang.median()),
            "error_ratio": float((err[:, i] / true.clamp_min(1e-12)).median()),
            "identified": float((true < err[:, i]).double().mean()),
            "closer_than_az15": float((err[:, i] < err[:, i15]).double().mean()),
        }
    return res


def dataset_ambiguity(dataset: str | Path, split: str = "test", vox_size: int = 32,
                      sigma: float = 0.5, kernel_size: int = 7, scale: float | None = None,
                      max_objects: int | None = None, progress: bool = True) -> dict:  # fmt: skip
    """:func:`ambiguity_table` over a built data set's split (its 8000-point ground truth,
    true poses and masks), rendered at grid ``vox_size`` with blur ``sigma`` cells."""
    from dpc.data import open_dataset
    from dpc.render import PointCloudRenderer, RenderSettings

    ds = open_dataset(dataset)
    if split not in ds.splits:
        raise ValueError(f"split must be one of {sorted(ds.splits)}, got {split!r}")
    if int(vox_size) < 8:
        raise ValueError(f"vox_size must be >= 8, got {vox_size}")
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    k = None if max_objects is None else int(max_objects)
    renderer = PointCloudRenderer(RenderSettings(vox_size=int(vox_size),
                                                 kernel_size=int(kernel_size)))  # fmt: skip
    quats = np.asarray(ds.quats(split))[:k]
    res = ambiguity_table(np.asarray(ds.gt_points(split))[:k], quats,
                          np.asarray(ds.masks(split))[:k], renderer, float(sigma), scale,
                          progress=progress)  # fmt: skip
    st = ds.manifest.get("settings", {})
    rng = (st["elevation_min"], st["elevation_max"]) if "elevation_min" in st else None
    res["twin_blind"] = twin_blind_accuracy(quats, rng)
    return {"dataset": str(dataset), "split": split, **res}


def run(a) -> dict:
    """Score the split and print (and write) the JSON (the command's body)."""
    res = dataset_ambiguity(str(a.dataset), str(a.split), int(a.vox_size), float(a.sigma),
                            int(a.kernel_size), None if a.scale is None else float(a.scale),
                            a.max_objects, bool(a.progress))  # fmt: skip
    print_json(res, a.out)
    return res


def main(argv=None) -> None:
    """``python -m dpc.eval.pose_ambiguity dataset=<folder> [key=value ...]``."""
    run_command("pose_ambiguity", run, argv, prog="dpc.eval.pose_ambiguity")


if __name__ == "__main__":
    main()
