"""Run a trained model over every view of a split: point clouds and poses per view.

Each view's image is fed on its own (single-view reconstruction), as the paper
evaluates: ``points [n_obj, V, N, 3]`` in the model's frame, and for runs that predict
poses, ``quat [n_obj, V, 4]`` (the student head, or the only candidate; with several
candidates and no student, the candidate whose silhouette best matches the input view's
mask) and all ``candidates [n_obj, V, M, 4]`` (the model's candidates, as training chose
among: with ``model.pose_flip_candidates`` the 2M (``twin_flip``: 4M) of
:func:`dpc.camera.with_flipped_candidates`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpc.data import prepare_images, prepare_masks


@dataclass
class Predictions:
    """Predictions over a split (numpy, float32); ``object_ids`` from the reader."""

    points: np.ndarray  # [n_obj, V, N, 3] model frame
    scale: np.ndarray  # [n_obj, V]
    quat: np.ndarray | None  # [n_obj, V, 4] chosen pose (None for camera-supervised runs)
    candidates: np.ndarray | None  # [n_obj, V, M, 4] (2M with flip_candidates, 4M twin_flip)
    object_ids: list[str]
    split: str

    @property
    def predicts_pose(self) -> bool:
        return self.quat is not None

    def save_npz(self, path: str | Path) -> Path:
        """One compact file: float16 points (the metric is computed from float32 before
        saving; float16 keeps 3-4 significant digits, ~1e-4 in [-0.5, 0.5])."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "points": self.points.astype(np.float16),
            "scale": self.scale,
            "object_ids": np.array(self.object_ids),
        }
        if self.quat is not None:
            arrays["quat"] = self.quat
            arrays["candidates"] = self.candidates
        np.savez_compressed(path, **arrays)
        return path


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY of ``points [N, 3]`` (optional ``colors [N, 3]`` in [0, 1]);
    open3d, MeshLab, CloudCompare and Blender read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pts = np.asarray(points, dtype="<f4").reshape(-1, 3)
    header = [
        "ply",
        "format binary_little_endian 1.0",
        f"element vertex {len(pts)}",
        "property float x",
        "property float y",
        "property float z",
    ]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        c = (np.clip(np.asarray(colors).reshape(-1, 3), 0, 1) * 255).round().astype(np.uint8)
        rec = np.empty(len(pts), dtype=[("p", "<f4", 3), ("c", "u1", 3)])
        rec["p"], rec["c"] = pts, c
        body = rec.tobytes()
    else:
        body = pts.tobytes()
    path.write_bytes(("\n".join(header + ["end_header"]) + "\n").encode() + body)
    return path


# dpc.evaluate's pose_from: the student (the paper) or the candidate chosen by silhouette
POSE_FROM = ("student", "silhouette")


def check_pose_from(pose_from: str) -> None:
    """A clear error for a ``pose_from`` that is not one of :data:`POSE_FROM`."""
    if pose_from not in POSE_FROM:
        raise ValueError(f"pose_from must be one of {', '.join(POSE_FROM)}, got {pose_from!r}")


def silhouette_errors(pts, scale, cands, masks, renderer, sigma) -> torch.Tensor:
    """``[B, M]``: the L2 distance between the render of each view's cloud ``pts [B, N,
    3]`` (occupancy ``scale [B]``) at each candidate of ``cands [B, M, 4]`` and the view's
    mask ``masks [B, G, G]`` (float in [0, 1], at the renderer's grid size G)."""
    B, M = cands.shape[:2]
    G = renderer.settings.vox_size
    sil = renderer(
        pts.repeat_interleave(M, 0),
        cands.reshape(B * M, 4),
        sigma=sigma,
        scale=scale.repeat_interleave(M, 0),
    ).silhouette.view(B, M, G, G)
    return (sil - masks.to(sil)[:, None]).pow(2).flatten(2).sum(-1)


def selector_with_silhouette(logits, errors, weight: float) -> torch.Tensor:
    """``model.pose_silhouette_weight`` (not in the paper): per view ``[B]``, the candidate
    k maximising ``log softmax(logits)_k - weight * (E_k / min_j E_j - 1)``.

    The selector (``logits [B, M]``) reads the image; the silhouette errors ``errors [B,
    M]`` (:func:`silhouette_errors`) read how well each candidate's render fits the
    input's mask. Each alone mistakes about a fifth of the car views for their front/back
    flip, not always the same ones, and the sum gets more right (RESULTS.md "Round 6").
    Dividing by the view's own best error makes the weight independent of the mask's size
    and of the data set; a single image decides, as for the selector."""
    return selector_silhouette_scores(logits, errors, weight).argmax(1)


def relative_errors(errors) -> torch.Tensor:
    """``[B, M]``: silhouette errors ``[B, M]`` over each view's best, ``E_k / min_j E_j``."""
    return errors / errors.min(1, keepdim=True).values.clamp_min(1e-12)


def selector_silhouette_scores(logits, errors, weight: float) -> torch.Tensor:
    """``[B, M]``: the scores :func:`selector_with_silhouette` maximises."""
    rel = relative_errors(errors)
    return torch.log_softmax(logits.to(errors), 1) - float(weight) * (rel - 1.0)


def mirror_match(cands, mirrored_cands) -> torch.Tensor:
    """``[B, M]``: for each candidate of ``cands [B, M, 4]``, the index of the candidate of
    the mirrored input (``mirrored_cands [B, M, 4]``) nearest its mirror ``(-az, el)``
    (:func:`dpc.camera.mirror_camera`)."""
    from dpc.camera import mirror_camera, quat_angle

    want = mirror_camera(cands.double())
    return quat_angle(mirrored_cands.double()[:, None], want[:, :, None]).argmin(-1)


def read_pose_with_silhouette(out, masks, renderer, sigma, weight: float, mirrored=None):
    """The pose a model with ``model.pose_silhouette_weight`` reads, from its output ``out``
    (:class:`dpc.models.ModelOutput` with fitted selector logits) and the views' masks
    ``masks [B, G, G]`` (float, at the renderer's grid): ``(quat [B, 4], index [B])``.

    ``mirrored`` (``model.pose_mirror_readout``): the model's output on the images
    mirrored left to right. The mirrored image of a left-right symmetric object seen from
    ``(az, el)`` is the view from ``(-az, el)``, so each candidate's score adds the
    mirrored input's score (against the mirrored masks) of its candidate nearest that
    mirror (:func:`mirror_match`)."""
    cands = out.pose_candidates
    err = silhouette_errors(out.points, out.scale, cands, masks, renderer, sigma)
    score = selector_silhouette_scores(out.selector_logits, err, weight)
    if mirrored is not None:
        mc = mirrored.pose_candidates
        err = silhouette_errors(mirrored.points, mirrored.scale, mc, masks.flip(-1), renderer,
                                sigma)  # fmt: skip
        mscore = selector_silhouette_scores(mirrored.selector_logits, err, weight)
        score = score + mscore.gather(1, mirror_match(cands, mc))
    k = score.argmax(1)
    return cands[torch.arange(len(k), device=k.device), k], k


def reads_pose_with_masks(model) -> bool:
    """Whether a model with a fitted selector reads its pose with :func:`read_pose` (from the
    input's mask too): ``model.pose_silhouette_weight`` > 0 or ``model.pose_mirror_readout``."""
    return float(getattr(model, "pose_silhouette_weight", 0.0)) > 0 or bool(
        getattr(model, "pose_mirror_readout", False)
    )


def read_pose(model, x, out, masks, renderer, sigma):
    """:func:`read_pose_with_silhouette` with the model's own read-out settings, for its
    output ``out`` on images ``x [B, 3, S, S]``: ``model.pose_silhouette_weight``, and with
    ``model.pose_mirror_readout`` the model run again on ``x`` mirrored left to right."""
    mirrored = model(x.flip(-1)) if getattr(model, "pose_mirror_readout", False) else None
    w = float(getattr(model, "pose_silhouette_weight", 0.0))
    return read_pose_with_silhouette(out, masks, renderer, sigma, w, mirrored)


def _best_candidate(pts, scale, cands, masks_u8, renderer, sigma) -> torch.Tensor:
    """Per view, the candidate pose of ``cands [B, M, 4]`` whose render of the view's
    cloud ``pts [B, N, 3]`` (occupancy ``scale [B]``) is closest (L2) to the view's own
    mask ``masks_u8``. Returns ``[B, 4]``."""
    m = prepare_masks(masks_u8, renderer.settings.vox_size).to(pts.device)
    err = silhouette_errors(pts, scale, cands, m, renderer, sigma)
    return cands[torch.arange(cands.shape[0]), err.argmin(1)]


@torch.no_grad()
def choose_by_silhouette(
    preds: Predictions, masks_u8, renderer, sigma: float, device="cpu", batch_size: int = 32
) -> np.ndarray:
    """``[n_obj, V, 4]``: per view, the candidate of ``preds`` (``pose_from="silhouette"``)
    chosen from the clouds and candidates already predicted, without running the network
    again; ``masks_u8 [n_obj, V, H, W]`` the views' own masks."""
    n, V, M = preds.candidates.shape[:3]
    pts = torch.from_numpy(preds.points).flatten(0, 1)
    scale = torch.from_numpy(preds.scale).flatten()
    cands = torch.from_numpy(preds.candidates).flatten(0, 1)
    masks = np.asarray(masks_u8)[:n].reshape(n * V, *np.shape(masks_u8)[2:])
    out = []
    for s in range(0, n * V, batch_size):
        sl = slice(s, s + batch_size)
        q = _best_candidate(pts[sl].to(device), scale[sl].to(device), cands[sl].to(device),
                            masks[sl], renderer, sigma)  # fmt: skip
        out.append(q.float().cpu())
    return torch.cat(out).view(n, V, 4).numpy()


@torch.no_grad()
def predict_split(
    model,
    reader,
    split: str,
    image_size: int,
    device="cpu",
    batch_size: int = 32,
    max_objects: int | None = None,
    objects: list[int] | None = None,
    renderer=None,
    sigma: float = 1.0,
    progress: bool = True,
    pose_from: str = "student",
) -> Predictions:
    """Predict a cloud (and pose) from every view of the split's objects.

    Args:
        model: a ``DPCModel`` (eval mode is set and restored).
        reader: dataset reader (docs/CONTRACTS.md).
        image_size: network input size (``cfg.data.image_size``).
        batch_size: images per forward pass.
        max_objects / objects: the first ``max_objects`` objects, or these indices.
        renderer, sigma: used to pick among several candidates without a student (or
            with ``pose_from="silhouette"``).
        pose_from: ``"student"`` (the paper: the student head, or the only candidate;
            with a fitted ``model.pose_selector`` the candidate it picks, from the image
            alone, or with ``model.pose_silhouette_weight`` > 0 the candidate of
            :func:`selector_with_silhouette`; without a student the candidate chosen as
            below) or ``"silhouette"`` (not in
            the paper: per view the candidate whose render of the predicted cloud best
            matches the input view's own mask, a test-time choice that reads the input's
            silhouette; docs/eval.md).
    """
    check_pose_from(pose_from)
    if split not in reader.splits:
        raise ValueError(f"split must be one of {sorted(reader.splits)}, got {split!r}")
    images = reader.images(split)
    masks = reader.masks(split)
    n_all = int(images.shape[0])
    idx = list(range(n_all)) if objects is None else [int(o) for o in objects]
    if objects is not None and any(not 0 <= o < n_all for o in idx):
        raise ValueError(f"objects must be indices in [0, {n_all}), got {objects}")
    if max_objects is not None:
        idx = idx[: int(max_objects)]
    if not idx:
        raise ValueError(f"split {split!r} has no objects to predict")
    V = int(images.shape[1])
    flat = [(o, v) for o in idx for v in range(V)]
    was_training = model.training
    model.eval()
    pts, scale, quat, cands = [], [], [], []
    it = range(0, len(flat), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"predict {split}", unit="batch", disable=None)  # off when not a tty
    warned = False
    for s in it:
        ov = flat[s : s + batch_size]
        o = np.array([a for a, _ in ov])
        v = np.array([b for _, b in ov])
        x = prepare_images(images[o, v], image_size).to(device)
        out = model(x)
        pts.append(out.points.float().cpu())
        scale.append(out.scale.float().cpu())
        if out.pose_candidates is not None:
            cand = out.pose_candidates  # flips included (model.pose_flip_candidates)
            cands.append(cand.float().cpu())
            with_masks = reads_pose_with_masks(model)
            if out.selector_logits is not None and with_masks and pose_from == "student":
                if renderer is None:
                    raise ValueError("model.pose_silhouette_weight > 0 or "
                                     "model.pose_mirror_readout: pass a renderer")  # fmt: skip
                m = prepare_masks(masks[o, v], renderer.settings.vox_size).to(device)
                q, _ = read_pose(model, x, out, m, renderer, sigma)
            elif out.pose is not None and pose_from == "student":
                q = out.pose  # the fitted selector's pick (model.pose_selector), or the student
            elif cand.shape[1] == 1:
                q = cand[:, 0]
            else:
                if renderer is None:
                    raise ValueError("several pose candidates and no student: pass a renderer")
                if not warned and pose_from == "student":
                    warnings.warn(
                        "no student pose head: choosing, per view, the candidate "
                        "that best reprojects onto the input mask",
                        stacklevel=2,
                    )
                    warned = True
                q = _best_candidate(out.points, out.scale, cand, masks[o, v], renderer, sigma)
            quat.append(q.float().cpu())
    if was_training:
        model.train()
    n = len(idx)
    P = torch.cat(pts).view(n, V, -1, 3).numpy()
    ids = [reader.splits[split][i] for i in idx]
    q = torch.cat(quat).view(n, V, 4).numpy() if quat else None
    c = torch.cat(cands).view(n, V, -1, 4).numpy() if cands else None
    return Predictions(P, torch.cat(scale).view(n, V).numpy(), q, c, ids, split)
