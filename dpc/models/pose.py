"""Pose heads (docs/METHOD.md, section 2): M candidate quaternion heads and a student head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dpc.camera import quat_normalize
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
    ):
        super().__init__()
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        self.candidates = nn.ModuleList(_mlp(in_dim, hidden, 4) for _ in range(num_candidates))
        self.student = _mlp(in_dim, hidden, 4) if student else None
        init_he(self)

    def forward(self, pose_code: Tensor) -> tuple[Tensor, Tensor | None]:
        cands = torch.stack([h(pose_code) for h in self.candidates], dim=1)  # [B, M, 4]
        student = quat_normalize(self.student(pose_code)) if self.student is not None else None
        return quat_normalize(cands), student
