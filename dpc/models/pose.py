"""Pose heads (docs/METHOD.md, section 2): M candidate quaternion heads and a student head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dpc.camera import quat_normalize, view_quat
from dpc.models.encoder import LEAKY_SLOPE, init_he


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.LeakyReLU(LEAKY_SLOPE)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class PoseHeads(nn.Module):
    """Pose code ``[B, F]`` -> ``M`` candidate quaternions ``[B, M, 4]`` (normalised) and,
    with ``student``, a student quaternion ``[B, 4]`` (normalised). Each head is FC 32 ->
    FC 32 -> FC 4 (original ``pose_candidates_num`` heads and ``pose_predictor_student``).
    """

    def __init__(
        self,
        in_dim: int,
        num_candidates: int = 4,
        student: bool = True,
        hidden: tuple[int, ...] = (32, 32),
        init: str = "random",
        ring_span: float = 2 * math.pi,
    ):
        super().__init__()
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.candidates = nn.ModuleList(_mlp(in_dim, hidden, 4) for _ in range(num_candidates))
        self.student = _mlp(in_dim, hidden, 4) if student else None
        init_he(self)
        if init == "ring":
            self._init_ring(ring_span)
        elif init != "random":
            raise ValueError(f"model.pose_candidates_init must be 'random' or 'ring', got {init!r}")

    @torch.no_grad()
    def _init_ring(self, span: float, spread: float = 0.02) -> None:
        """``model.pose_candidates_init=ring`` (not in the paper): head h starts near the
        camera at azimuth ``span * h / M`` (``span`` 2 pi, or pi when each candidate also
        comes flipped), elevation 0, about the model's y axis (its last
        layer's bias; its weights scaled by ``spread`` keep a small dependence on the image).
        With random heads every image starts near the same few cameras, often all on one
        side of the object, and training settles in the one-sided solution (RESULTS.md,
        "Round 3"); a ring shows the shape from all around from the first step."""
        M = len(self.candidates)
        az = torch.arange(M, dtype=torch.float32) * (span / M)
        q = view_quat(az, torch.zeros(M))
        for h, head in enumerate(self.candidates):
            last = head[-1]
            last.weight.mul_(spread)
            last.bias.copy_(q[h])

    def forward(self, pose_code: Tensor) -> tuple[Tensor, Tensor | None]:
        cands = torch.stack([h(pose_code) for h in self.candidates], dim=1)  # [B, M, 4]
        student = quat_normalize(self.student(pose_code)) if self.student is not None else None
        return quat_normalize(cands), student
