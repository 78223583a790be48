"""The full DPC network: encoder + point decoder + occupancy scale + pose heads."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from dpc.camera import flip_factor, with_flipped_candidates
from dpc.models.decoder import PointDecoder, ScaleHead
from dpc.models.encoder import ImageEncoder, init_he
from dpc.models.pose import PoseHeads, _mlp


class ModelOutput(NamedTuple):
    """What :class:`DPCModel` predicts for a batch of B images (docs/CONTRACTS.md)."""

    points: Tensor  # [B, N, 3] object frame, in [-0.5, 0.5]^3
    scale: Tensor  # [B] occupancy scale in (0, max]
    colors: Tensor | None  # [B, N, 3] in (0, 1), with pc_rgb
    # [B, M, 4] normalised camera quaternions, with predict_pose: the candidates training
    # chooses among, each head's and, with flip_candidates, then each flipped (M = 2 heads)
    pose_candidates: Tensor | None
    pose_student: Tensor | None  # [B, 4] normalised, with predict_pose and a student
    # [B, 4] the candidate the fitted selector picks (model.pose_selector, after
    # trainer.student_refit_steps), else None
    pose_selected: Tensor | None = None
    # [B, M] the fitted selector's logits over the candidates, else None (they weigh the
    # candidates against their silhouettes with model.pose_silhouette_weight:
    # dpc.eval.predictions.selector_with_silhouette)
    selector_logits: Tensor | None = None

    @property
    def pose(self) -> Tensor | None:
        """``[B, 4]`` the model's one pose per image at test time: the selector's pick
        when fitted, else the student's (None without either)."""
        return self.pose_selected if self.pose_selected is not None else self.pose_student


class DPCModel(nn.Module):
    """Single image ``[B, 3, S, S]`` in [0, 1] -> point cloud, occupancy scale, poses.

    The training loop calls the parts separately (``encoder``, :meth:`shape`,
    :meth:`pose`) so that, in the unsupervised setting, the shape is decoded from one
    view per object while poses are predicted for every view.
    """

    def __init__(
        self,
        image_size: int = 128,
        num_points: int = 8000,
        base_channels: int = 16,
        fc_dim: int = 1024,
        rgb: bool = False,
        max_scale: float = 1.0,
        predict_pose: bool = True,
        num_candidates: int = 4,
        student: bool = True,
        points_init_std: float = 0.025,
        learn_scale: bool = True,
        pose_code_activation: str = "leaky_relu",
        flip_candidates: bool = False,
        flip_axis: str = "camera",
        candidates_init: str = "random",
        selector: bool = False,
        silhouette_weight: float = 0.0,
        pose_parametrization: str = "quaternion",
        elevation_range: tuple[float, float] = (-80.0, 80.0),
        mirror_symmetric: bool = False,
        mirror_equivariant: bool = False,
        mirror_readout: bool = False,
    ):
        super().__init__()
        # model.pc_mirror_symmetric (not in the paper): the decoder predicts half the points
        # and the cloud is those and their mirror across the model's z = 0 plane (the
        # built-in categories are all left-right symmetric, length along x, y up)
        if mirror_symmetric and num_points % 2:
            raise ValueError(
                f"model.pc_mirror_symmetric needs an even model.pc_num_points, got {num_points}"
            )
        self.mirror_symmetric = mirror_symmetric
        # no pose heads -> no pose-code layer (it would get no gradient)
        self.encoder = ImageEncoder(
            image_size, base_channels, fc_dim, predict_pose, pose_code_activation
        )
        decoded = num_points // 2 if mirror_symmetric else num_points
        self.decoder = PointDecoder(fc_dim, decoded, rgb, points_init_std)
        # learn_scale=False: a constant occupancy scale of max_scale (no head)
        self.scale_head = ScaleHead(fc_dim, max_scale) if learn_scale else None
        self.max_scale = max_scale
        # with flips, M heads around half the circle: the flips cover the other half; with
        # twins (azimuth a -> pi - a), M heads on the front half (-90, 90) degrees, midway
        # between its edges, and their twins on the back half; with twins and flips, M heads
        # on the quarter (0, 90) degrees, the three others covering the rest
        twins = flip_candidates and flip_axis in ("twin", "twin_flip")
        if flip_candidates and flip_axis == "twin_flip":
            span, start = math.pi / 2, math.pi / (4 * num_candidates)
        elif twins:
            span, start = math.pi, -math.pi / 2 + math.pi / (2 * num_candidates)
        else:
            span, start = (math.pi if flip_candidates else 2 * math.pi), 0.0
        self.pose_heads = (
            PoseHeads(
                fc_dim,
                num_candidates,
                student,
                init=candidates_init,
                ring_span=span,
                ring_start=start,
                parametrization=pose_parametrization,
                elevation_range=tuple(elevation_range),
            )  # fmt: skip
            if predict_pose
            else None
        )
        if flip_candidates and not predict_pose:
            raise ValueError("flip_candidates needs predict_pose (it flips the pose candidates)")
        # model.pose_flip_candidates (not in the paper; docs/training.md): every candidate
        # also flipped about the camera's image-up axis, [q_1..q_M, F q_1..F q_M]
        self.flip_candidates = flip_candidates
        flip_factor(flip_axis)  # a clear error for an unknown axis
        if twins and not (pose_parametrization == "view" and mirror_symmetric):
            # the twin is the mirror across the model's z = 0 of an upright camera: it is the
            # silhouette's twin only for upright heads and a cloud symmetric across that plane
            raise ValueError(
                f"model.pose_flip_axis={flip_axis} needs model.pose_parametrization=view and "
                "model.pc_mirror_symmetric=true"
            )
        self.flip_axis = flip_axis  # model.pose_flip_axis (dpc.camera.with_flipped_candidates)
        # model.pose_mirror_equivariant (not in the paper): the pose of the left-right
        # mirrored image is the mirrored pose, by construction (PoseHeads.mirror_pair); the
        # mirror is across the model's z = 0, so the cloud must be symmetric across it
        if mirror_equivariant:
            if not (predict_pose and pose_parametrization == "view" and mirror_symmetric):
                raise ValueError(
                    "model.pose_mirror_equivariant needs model.predict_pose=true, "
                    "model.pose_parametrization=view and model.pc_mirror_symmetric=true"
                )
            self.pose_heads.mirror_partner()  # raises now if the heads cannot be paired
        self.mirror_equivariant = mirror_equivariant
        self.elevation_range = tuple(float(x) for x in elevation_range)
        # model.pose_selector (not in the paper; dpc/training/student_refit.py): a head that
        # picks one of the candidates, fitted after training; until then the student
        # gives the pose. Built from its own generator so that the other weights, and
        # so training, stay the same as without it.
        self.pose_selector = None
        if selector:
            if not predict_pose:
                raise ValueError("model.pose_selector needs model.predict_pose=true")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.pose_selector = _mlp(fc_dim, (32, 32), self.num_candidates)
                init_he(self.pose_selector)
            self.register_buffer("selector_fitted", torch.zeros((), dtype=torch.bool))
        # model.pose_silhouette_weight (not in the paper): how the pose is read at test time
        # (dpc.eval.predictions.selector_with_silhouette); the network does not use it
        w = float(silhouette_weight)
        if not (w >= 0.0 and math.isfinite(w)):
            raise ValueError(f"model.pose_silhouette_weight must be finite and >= 0, got {w}")
        if w > 0 and not selector:
            raise ValueError(
                "model.pose_silhouette_weight > 0 needs model.pose_selector=true (it weighs "
                "the selector's choice against the candidates' silhouettes)"
            )
        self.pose_silhouette_weight = w
        # model.pose_mirror_readout (not in the paper): the pose is read from the image and
        # its left-right mirror together (dpc.eval.predictions.read_pose); the mirror of an
        # upright camera across the model's z = 0 needs the view heads and the symmetric cloud
        if mirror_readout and not (selector and pose_parametrization == "view"
                                   and mirror_symmetric):  # fmt: skip
            raise ValueError(
                "model.pose_mirror_readout needs model.pose_selector=true, "
                "model.pose_parametrization=view and model.pc_mirror_symmetric=true"
            )
        self.pose_mirror_readout = bool(mirror_readout)

    @property
    def predict_pose(self) -> bool:
        return self.pose_heads is not None

    @property
    def num_candidates(self) -> int:
        """How many pose candidates :meth:`forward` returns per image (the heads' count,
        times :data:`dpc.camera.FLIP_FACTOR` with ``flip_candidates``; 1 without pose
        prediction, the given pose)."""
        if self.pose_heads is None:
            return 1
        return len(self.pose_heads.candidates) * (
            flip_factor(self.flip_axis) if self.flip_candidates else 1
        )

    def shape(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Shape code ``[B, F]`` -> ``(points [B, N, 3], scale [B], colors [B, N, 3] | None)``."""
        points, colors = self.decoder(z)
        if self.mirror_symmetric:
            points = torch.cat((points, points * points.new_tensor((1.0, 1.0, -1.0))), dim=1)
            colors = None if colors is None else torch.cat((colors, colors), dim=1)
        if self.scale_head is None:
            return points, z.new_full((z.shape[0],), self.max_scale), colors
        return points, self.scale_head(z), colors

    def pose(self, pose_code: Tensor, mirrored_code: Tensor | None = None
             ) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
        """Pose code ``[B, F]`` (and, with ``mirror_equivariant``, the mirrored images'
        ``mirrored_code [B, F]``) -> ``(candidates [B, M, 4], student [B, 4] | None)``, the
        candidates flipped too with ``flip_candidates``."""
        if self.pose_heads is None:
            return None, None
        if self.mirror_equivariant and mirrored_code is None:
            raise ValueError("model.pose_mirror_equivariant: pose() needs the mirrored codes")
        cands, student = self.pose_heads(pose_code, mirrored_code)
        if self.flip_candidates:
            # At zero elevation F q is exactly the object's front/back flip (q composed with
            # a half turn about the object's vertical); at elevation e the two differ by
            # 2|e|, close enough to land a candidate in the flipped basin. It needs no
            # knowledge of the model's own frame (arbitrary in the unsupervised setting),
            # only the camera's.
            # With model.pose_flip_axis=object the flip is the exact front/back turn about
            # the model's vertical, estimated from this batch's cameras.
            # With model.pose_flip_axis=twin, each candidate's silhouette twin (its elevation
            # kept inside model.pose_elevation_range): winner-takes-all then picks, view by
            # view, whichever of the two the perspective renders closer to the mask.
            cands = with_flipped_candidates(cands, self.flip_axis, self.elevation_range)
        return cands, student

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Images ``[B, 3, S, S]`` -> ``(z [B, F], pose_code [B, F] | None, mirrored [B, F]
        | None)``: the shape and pose codes, and with ``mirror_equivariant`` the pose codes
        of the left-right mirrored images (one encoder pass over both)."""
        if not self.mirror_equivariant:
            z, pose_code = self.encoder(images)
            return z, pose_code, None
        z, codes = self.encoder(torch.cat((images, images.flip(-1))))  # W flipped
        pose_code, mirrored = codes.chunk(2)
        return z[: len(images)], pose_code, mirrored

    def forward(self, images: Tensor, shape_index: Tensor | None = None) -> ModelOutput:
        """Args:
            images: ``[B, 3, S, S]`` in [0, 1].
            shape_index: optional ``[B']`` rows of ``images`` to decode shapes from (the
                training loop passes the first view of each object); default all B.
        Returns:
            :class:`ModelOutput`; points/scale/colors have ``B'`` rows, poses ``B``.
        """
        z, pose_code, mirrored = self.encode(images)
        points, scale, colors = self.shape(z if shape_index is None else z[shape_index])
        cands, student = self.pose(pose_code, mirrored)
        selected, logits = None, None
        if self.pose_selector is not None and bool(self.selector_fitted):
            logits = self.pose_selector(pose_code)
            k = logits.argmax(1)
            selected = cands[torch.arange(len(k), device=k.device), k]
        return ModelOutput(points, scale, colors, cands, student, selected, logits)


# The networks' defaults: the config group's file, the one place they are written (also
# for older runs' saved configs that lack a newer key).
DEFAULTS = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs/model/dpc.yaml")


def model_group(cfg):
    """The full config's ``model`` group over :data:`DEFAULTS` (every key present)."""
    return OmegaConf.merge(DEFAULTS, cfg.model)


# DPCModel argument -> its key in the config's model group
CONFIG_KEYS = {
    "num_points": "pc_num_points",
    "base_channels": "encoder_base_channels",
    "fc_dim": "fc_dim",
    "rgb": "pc_rgb",
    "max_scale": "pc_occupancy_scaling_maximum",
    "predict_pose": "predict_pose",
    "num_candidates": "pose_predict_num_candidates",
    "student": "pose_predictor_student",
    "points_init_std": "pc_decoder_init_stddev",
    "learn_scale": "pc_learn_occupancy_scaling",
    "pose_code_activation": "pose_code_activation",
    "flip_candidates": "pose_flip_candidates",
    "flip_axis": "pose_flip_axis",
    "candidates_init": "pose_candidates_init",
    "selector": "pose_selector",
    "silhouette_weight": "pose_silhouette_weight",
    "mirror_equivariant": "pose_mirror_equivariant",
    "mirror_readout": "pose_mirror_readout",
    "pose_parametrization": "pose_parametrization",
    "elevation_range": "pose_elevation_range",
    "mirror_symmetric": "pc_mirror_symmetric",
}


def build_model(cfg) -> DPCModel:
    """Build the network from the full training config (``cfg.model``, ``cfg.data``)."""
    m = model_group(cfg)
    args = {arg: m[key] for arg, key in CONFIG_KEYS.items()}
    return DPCModel(image_size=int(cfg.data.image_size), **args)


def candidate_count(cfg) -> int:
    """How many candidate poses training chooses among for a config, the
    :attr:`DPCModel.num_candidates` of :func:`build_model`'s model (the range of the
    winner index): 1 under camera supervision, else the heads' M, times
    :data:`dpc.camera.FLIP_FACTOR` of ``model.pose_flip_axis`` with
    ``model.pose_flip_candidates``."""
    m = model_group(cfg)
    flip = bool(m.pose_flip_candidates)
    if flip and not m.predict_pose:
        raise ValueError(
            "model.pose_flip_candidates=true needs model.predict_pose=true (it flips the "
            "predicted pose candidates; camera supervision has none)"
        )
    if not m.predict_pose:
        return 1
    return int(m.pose_predict_num_candidates) * (flip_factor(m.pose_flip_axis) if flip else 1)


def upgrade_legacy_checkpoint(ckpt: dict, model: DPCModel) -> dict:
    """Make a checkpoint written before camera-supervised models dropped their unused
    pose-code layer (``encoder.fc_pose``) loadable into ``model``, optimiser state included,
    so such a run can be resumed. Returns ``ckpt`` unchanged when there is nothing to do.

    The model weights alone load without this (:class:`ImageEncoder` ignores the layer);
    the optimiser state is per parameter *index* (Adam over ``model.parameters()``), so
    the two entries of the dropped layer are removed and the later ones renumbered.
    """
    state = ckpt.get("model", {})
    legacy = [f"encoder.{k}" for k in ("fc_pose.weight", "fc_pose.bias")]
    if model.encoder.fc_pose is not None or not all(k in state for k in legacy):
        return ckpt
    names = list(state)  # parameter order of the old model (it has no buffers)
    current = [n for n, _ in model.named_parameters()]
    if [n for n in names if n not in legacy] != current:
        raise ValueError(
            "checkpoint does not match this model beyond the dropped pose-code layer; "
            "was it written with another model config?"
        )
    drop = {names.index(k) for k in legacy}
    new = {k: v for k, v in state.items() if k not in legacy}
    out = {**ckpt, "model": new}
    opt = ckpt.get("optimizer")
    if opt is not None:
        groups = opt.get("param_groups", [])
        if len(groups) != 1 or len(groups[0]["params"]) != len(names):
            raise ValueError(
                "cannot convert the optimiser state of this older checkpoint (expected one "
                f"parameter group of {len(names)} parameters); start a new run instead"
            )
        old_ids = [i for pos, i in enumerate(groups[0]["params"]) if pos not in drop]
        remap = {old: j for j, old in enumerate(old_ids)}
        out["optimizer"] = {
            "state": {remap[i]: v for i, v in opt["state"].items() if i in remap},
            "param_groups": [{**groups[0], "params": list(range(len(old_ids)))}],
        }
    return out
