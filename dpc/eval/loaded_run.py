"""A trained run, loaded for predictions on any images: ``dpc.load_run(run_dir)``.

    run = dpc.load_run("outputs/car_quick/2026-01-01_12-00-00")
    points, quats = run.predict(["my_car.png", "other.jpg"])  # [B, N, 3], [B, 4]

Images are prepared as the data sets are (:func:`load_image`): alpha composited over
white, greyscale to RGB, a non-square image padded with white to a square (centred), then
resized to the network's input size exactly as in training
(:func:`dpc.eval.predictions.prepare_images`: antialiased bilinear).

Frames: for runs that predict poses the network's cloud and poses live in a frame of its
own choosing; when ``<run_dir>/eval/alignment.json`` exists (written by
``python -m dpc.evaluate``) predictions are rotated into the data set's canonical frame
(y up, front along -x), with the flip-robust (majority) alignment when the file holds the
fit poses, else the paper's. ``LoadedRun.frame`` says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MIN_SIDE = 8  # pixels: anything smaller cannot show an object
# the views tried for camera-supervised runs' best-fit silhouette (degrees)
FIT_AZIMUTHS = [float(a) for a in range(0, 360, 15)]
FIT_ELEVATIONS = [0.0, 15.0, 30.0]


class ImageError(ValueError):
    """An input image that cannot be used; the message names the file."""


def load_image(src, name: str | None = None) -> np.ndarray:
    """An image file (path) or array as uint8 ``[S, S, 3]`` RGB on white, square.

    Accepts PNG/JPEG/... files of any mode and size (RGBA/LA/palette with transparency are
    composited over white, like the data sets; greyscale is repeated to RGB; EXIF
    orientation is applied), or arrays
    ``[H, W]``, ``[H, W, 1 | 3 | 4]`` (uint8, or floats in [0, 1]). A non-square image is
    padded with white to a square, centred. Raises :class:`ImageError` naming the file for
    unreadable, empty or wrongly shaped input.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (str(src) if isinstance(src, (str, Path)) else "array input")
    if isinstance(src, (str, Path)):
        p = Path(src)
        if not p.is_file():
            raise ImageError(f"{label}: no such file")
        if p.stat().st_size == 0:
            raise ImageError(f"{label}: empty file (0 bytes)")
        try:
            with Image.open(p) as im:
                im.load()
                # phone photos store their rotation in EXIF: show them upright
                arr = _pil_to_rgba(ImageOps.exif_transpose(im))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{label}: not a readable image ({type(e).__name__}: {e})") from e
    elif isinstance(src, Image.Image):
        arr = _pil_to_rgba(src)
    else:
        arr = _array_to_rgba(np.asarray(src), label)
    h, w = arr.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{label}: image is {w}x{h} pixels, smaller than {MIN_SIDE} on a side")
    rgb = _over_white(arr)
    if h != w:  # pad to a square with white, the object stays centred
        s = max(h, w)
        out = np.full((s, s, 3), 255, np.uint8)
        out[(s - h) // 2 : (s - h) // 2 + h, (s - w) // 2 : (s - w) // 2 + w] = rgb
        rgb = out
    return rgb


def _pil_to_rgba(im) -> np.ndarray:
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated: first frame
    if im.mode in ("I;16", "I;16B", "I", "F"):  # 16-bit / float greyscale
        a = np.asarray(im, np.float64)
        a = a / max(a.max(), 1.0) if a.max() > 255 else a / 255.0
        g = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        return np.dstack([g, g, g, np.full_like(g, 255)])
    return np.asarray(im.convert("RGBA"))


def _array_to_rgba(a: np.ndarray, label: str) -> np.ndarray:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)) or a.size == 0:
        raise ImageError(
            f"{label}: expected an image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
            f"got shape {tuple(a.shape)}"
        )
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ImageError(f"{label}: image contains NaN or inf")
        if a.max() > 1.0 + 1e-6:
            raise ImageError(f"{label}: float images must be in [0, 1] (max {a.max():.3g})")
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.shape[-1] == 3:
        a = np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], -1)
    return a


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """Composite ``[H, W, 4]`` uint8 over white (as the data sets are rendered)."""
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return rgb.round().astype(np.uint8)


def foreground_mask(rgb: torch.Tensor, threshold: float = 0.04) -> torch.Tensor:
    """Object mask ``[B, S, S]`` of images ``[B, 3, S, S]`` on white: pixels darker than white
    by more than ``threshold`` in some channel (the data sets render objects on white)."""
    return ((1.0 - rgb).amax(1) > threshold).float()


def pose_angles(q: torch.Tensor) -> dict:
    """Azimuth, elevation and roll (degrees) of camera quaternions ``[..., 4]`` in the
    convention of :func:`dpc.camera.view_quat` (camera at ``(cos el cos az, sin el,
    cos el sin az)``, y up, looking at the origin); roll is the in-image rotation left over
    (0 for the data sets' upright cameras)."""
    from dpc.camera import camera_position, quat_conj, quat_mul, view_quat

    q = q.double()
    pos = camera_position(q, 1.0)
    el = torch.asin(pos[..., 1].clamp(-1, 1))
    az = torch.atan2(pos[..., 2], pos[..., 0]) % (2 * math.pi)
    r = quat_mul(q, quat_conj(view_quat(az, el.clamp(-1.5707, 1.5707))))  # about the depth axis
    roll = 2 * torch.atan2(r[..., 1], r[..., 0])
    roll = (roll + math.pi) % (2 * math.pi) - math.pi
    return {
        "azimuth_deg": torch.rad2deg(az),
        "elevation_deg": torch.rad2deg(el),
        "roll_deg": torch.rad2deg(roll),
    }


@dataclass
class Prediction:
    """Predictions for a batch of B images (CPU tensors)."""

    points: torch.Tensor  # [B, N, 3] in the frame named by LoadedRun.frame
    quat: torch.Tensor | None  # [B, 4] camera pose (None: the run does not predict poses)
    colors: torch.Tensor | None  # [B, N, 3] in [0, 1] if the model predicts colours
    scale: torch.Tensor  # [B] occupancy scale
    candidates: torch.Tensor | None  # [B, M, 4] all pose candidates (same frame as quat;
    # 2M with model.pose_flip_candidates, 4M with pose_flip_axis=twin_flip)
    images: torch.Tensor  # [B, 3, S, S] the network inputs
    silhouette: torch.Tensor | None  # [B, G, G] predicted silhouette under quat
    points_model: torch.Tensor  # [B, N, 3] in the network's own frame
    quat_model: torch.Tensor | None  # [B, 4] in the network's own frame
    # camera-supervised runs: the upright view (FIT_AZIMUTHS x FIT_ELEVATIONS) whose
    # silhouette of the predicted cloud best matches the input's foreground; not a prediction
    fitted_quat: torch.Tensor | None = None  # [B, 4]


class LoadedRun:
    """A trained run ready for predictions (see the module docstring)."""

    def __init__(self, run_dir: str | Path, device: str | torch.device = "cpu"):
        from dpc.eval.alignment import AlignmentResult
        from dpc.render import PointCloudRenderer
        from dpc.runs import open_run

        self.device = torch.device(device)
        run = open_run(run_dir, self.device)
        self.run_dir, self.step, self.cfg, self.model = run.run_dir, run.step, run.cfg, run.model
        self.image_size = run.settings.image_size
        # the run's renderer as trained (fidelity switches included)
        self.renderer = PointCloudRenderer(run.settings.render)
        self.sigma = run.settings.final_sigma
        self.alignment: torch.Tensor | None = None  # [4] model frame -> canonical frame
        self.frame = "canonical (camera-supervised: the data set's frame)"
        if self.model.predict_pose:
            self.frame = "model (no eval/alignment.json: run dpc.evaluate to align)"
            path = run.alignment_path
            if path.exists():
                al = AlignmentResult.load(path)
                if al.fit_q_pred is not None:
                    from dpc.eval.pose_report import robust_alignment

                    q = robust_alignment(al.fit_q_pred, al.fit_q_gt)["quat"]
                    how = "flip-robust alignment"
                else:
                    q, how = al.quat, "paper alignment"
                self.alignment = torch.tensor(q, dtype=torch.float64)
                self.frame = f"canonical ({how} from {path}, step {al.step})"
                if al.step != self.step:
                    self.frame += f" [computed for step {al.step}, checkpoint is {self.step}]"

    @property
    def predicts_pose(self) -> bool:
        return self.model.predict_pose

    def prepare(self, images) -> torch.Tensor:
        """Network inputs ``[B, 3, S, S]`` in [0, 1] from a list of files / PIL images /
        arrays (:func:`load_image`), one path, or a float tensor ``[B, 3, H, W]``."""
        from dpc.data import prepare_images

        if isinstance(images, torch.Tensor) and images.ndim == 4:
            if images.shape[1] != 3:
                raise ImageError(f"image tensor must be [B, 3, H, W], got {tuple(images.shape)}")
            x = images.float()
            if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
                x = torch.nn.functional.interpolate(
                    x, size=(self.image_size,) * 2, mode="bilinear", antialias=True
                )
            return x
        if isinstance(images, (str, Path)) or (
            isinstance(images, np.ndarray) and images.ndim in (2, 3)
        ):
            images = [images]
        xs = [prepare_images(load_image(im)[None], self.image_size) for im in images]
        if not xs:
            raise ImageError("no images given")
        return torch.cat(xs)

    @torch.no_grad()
    def predict_full(self, images) -> Prediction:
        """Everything predicted for ``images`` (see :class:`Prediction`)."""
        from dpc.camera import quat_conj, quat_mul, quat_rotate
        from dpc.data.images import resize_masks
        from dpc.eval.predictions import read_pose, reads_pose_with_masks, silhouette_errors

        x = self.prepare(images).to(self.device)
        out = self.model(x)
        B = x.shape[0]
        q_model, cands = None, out.pose_candidates  # [B, M, 4] as training chose among
        if cands is not None:
            if out.selector_logits is not None and reads_pose_with_masks(self.model):
                m = resize_masks(foreground_mask(x), self.renderer.settings.vox_size)
                q_model, _ = read_pose(self.model, x, out, m, self.renderer, self.sigma)
            elif out.pose is not None:  # the selector's pick, or the student
                q_model = out.pose
            elif cands.shape[1] == 1:
                q_model = cands[:, 0]
            else:  # the candidate whose silhouette best matches the input's foreground
                m = resize_masks(foreground_mask(x), self.renderer.settings.vox_size)
                err = silhouette_errors(out.points, out.scale, cands, m, self.renderer, self.sigma)
                q_model = cands[torch.arange(B), err.argmin(1)]
        sil, fitted = None, None
        if q_model is not None:
            sil = self.renderer(out.points, q_model, sigma=self.sigma, scale=out.scale).silhouette
        else:
            fitted = self.fit_view(out.points, out.scale, foreground_mask(x))
            sil = self.renderer(out.points, fitted, sigma=self.sigma, scale=out.scale).silhouette
        pts, q, c = out.points, q_model, cands
        if self.alignment is not None:
            qa = self.alignment.to(pts.device)
            pts = quat_rotate(qa.expand(B, 4), pts.double()).float()  # model -> canonical
            qa_inv = quat_conj(qa)
            q = quat_mul(q_model.double(), qa_inv.expand(B, 4)).float()
            c = quat_mul(cands.double(), qa_inv.expand(*cands.shape)).float()

        def cpu(t):
            return None if t is None else t.detach().float().cpu()

        return Prediction(
            points=cpu(pts),
            quat=cpu(q),
            colors=cpu(out.colors),
            scale=cpu(out.scale),
            candidates=cpu(c),
            images=cpu(x),
            silhouette=cpu(sil),
            points_model=cpu(out.points),
            quat_model=cpu(q_model),
            fitted_quat=cpu(fitted),
        )

    @torch.no_grad()
    def fit_view(self, points, scale, fg) -> torch.Tensor:
        """Per cloud ``[B, N, 3]``, the upright camera (:data:`FIT_AZIMUTHS` x
        :data:`FIT_ELEVATIONS`, :func:`dpc.camera.view_quat`) whose rendered silhouette is
        closest (L2) to the foreground mask ``fg [B, S, S]``. Returns ``[B, 4]``."""
        from dpc.camera import view_quat
        from dpc.data.images import resize_masks

        az, el = torch.meshgrid(
            torch.deg2rad(torch.tensor(FIT_AZIMUTHS)),
            torch.deg2rad(torch.tensor(FIT_ELEVATIONS)),
            indexing="ij",
        )
        qs = view_quat(az.flatten(), el.flatten()).float().to(points.device)  # [K, 4]
        K, G = qs.shape[0], self.renderer.settings.vox_size
        m = resize_masks(fg, G)
        best = []
        for b in range(points.shape[0]):
            sil = self.renderer(
                points[b : b + 1].expand(K, -1, -1).contiguous(),
                qs,
                sigma=self.sigma,
                scale=scale[b : b + 1].expand(K),
            ).silhouette
            best.append(qs[(sil - m[b]).pow(2).flatten(1).sum(1).argmin()])
        return torch.stack(best)

    def predict(self, images) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(points [B, N, 3], quaternions [B, 4])`` for ``images`` (files, arrays or a
        tensor; :meth:`prepare`); quaternions are None for camera-supervised runs. Both in
        the frame named by :attr:`frame`."""
        p = self.predict_full(images)
        return p.points, p.quat


def load_run(run_dir: str | Path, device: str | torch.device | None = None) -> LoadedRun:
    """Load a trained run for predictions (``device`` default: CUDA if available)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return LoadedRun(run_dir, device)
