"""Pose heads (docs/METHOD.md, section 2): M candidate quaternion heads and a student head."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dpc.camera import azel_quat, quat_normalize, view_quat
from dpc.models.encoder import LEAKY_SLOPE, init_he


def _mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.LeakyReLU(LEAKY_SLOPE)]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class AzElQuat(nn.Module):
    """``model.pose_parametrization=view`` (not in the paper): a head's raw output
    ``[..., 3]`` ``(a, b, e)`` -> the camera quaternion ``[..., 4]`` at azimuth
    ``atan2(b, a)`` and elevation ``lo + (hi - lo) sigmoid(e)`` (degrees in, radians used),
    image up kept on the model's y axis: no roll, and elevations only inside the range."""

    def __init__(self, elevation_range: tuple[float, float]):
        super().__init__()
        r = [float(x) for x in elevation_range]
        lo, hi = (r + [math.nan, math.nan])[:2]
        if len(r) != 2 or not -90.0 < lo < hi < 90.0:
            raise ValueError(
                "model.pose_elevation_range must be [low, high] degrees with -90 < low < high "
                f"< 90, got {list(elevation_range)}"
            )
        self.lo, self.hi = math.radians(lo), math.radians(hi)

    def raw_elevation(self, elevation: float) -> float:
        """The raw ``e`` whose elevation is ``elevation`` (radians, clamped into the range)."""
        t = (elevation - self.lo) / (self.hi - self.lo)
        t = min(max(t, 0.01), 0.99)
        return math.log(t / (1 - t))

    def forward(self, raw: Tensor) -> Tensor:
        a, b, e = raw.unbind(-1)
        el = self.lo + (self.hi - self.lo) * torch.sigmoid(e)
        return azel_quat(torch.atan2(b, a), el)


class PoseHeads(nn.Module):
    """Pose code ``[B, F]`` -> ``M`` candidate quaternions ``[B, M, 4]`` (normalised) and,
    with ``student``, a student quaternion ``[B, 4]`` (normalised). Each head is FC 32 ->
    FC 32 -> FC 4 (original ``pose_candidates_num`` heads and ``pose_predictor_student``).
    With ``parametrization="view"`` each head ends FC 3 -> :class:`AzElQuat` instead.
    """

    def __init__(
        self,
        in_dim: int,
        num_candidates: int = 4,
        student: bool = True,
        hidden: tuple[int, ...] = (32, 32),
        init: str = "random",
        ring_span: float = 2 * math.pi,
        ring_start: float = 0.0,
        parametrization: str = "quaternion",
        elevation_range: tuple[float, float] = (-80.0, 80.0),
    ):
        super().__init__()
        if num_candidates < 1:
            raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
        if parametrization not in ("quaternion", "view"):
            raise ValueError(
                "model.pose_parametrization must be 'quaternion' or 'view', got "
                f"{parametrization!r}"
            )
        self.view = AzElQuat(elevation_range) if parametrization == "view" else None

        def head() -> nn.Sequential:
            if self.view is None:
                return _mlp(in_dim, hidden, 4)
            return nn.Sequential(*_mlp(in_dim, hidden, 3), self.view)  # no state: shared

        self.candidates = nn.ModuleList(head() for _ in range(num_candidates))
        self.ring_azimuths: Tensor | None = None  # [M] the heads' ring starts (radians)
        self._partners: list[int] | None = None  # mirror_partner(), worked out once
        self.student = head() if student else None
        init_he(self)
        if init == "ring":
            self._init_ring(ring_span, ring_start)
        elif init != "random":
            raise ValueError(f"model.pose_candidates_init must be 'random' or 'ring', got {init!r}")

    @torch.no_grad()
    def _init_ring(self, span: float, offset: float = 0.0, spread: float = 0.02) -> None:
        """``model.pose_candidates_init=ring`` (not in the paper): head h starts near the
        camera at azimuth ``offset + span * h / M`` (``span`` 2 pi, or pi when each candidate
        also comes flipped or twinned), elevation 0, about the model's y axis (its last
        layer's bias; its weights scaled by ``spread`` keep a small dependence on the image).
        With random heads every image starts near the same few cameras, often all on one
        side of the object, and training settles in the one-sided solution (RESULTS.md,
        "Round 3"); a ring shows the shape from all around from the first step."""
        M = len(self.candidates)
        az = offset + torch.arange(M, dtype=torch.float32) * (span / M)
        self.ring_azimuths = az
        if self.view is None:
            start = view_quat(az, torch.zeros(M))
        else:  # the raw (a, b, e) of the same cameras (elevation 0, or the range's nearest)
            e = torch.full((M,), self.view.raw_elevation(0.0))
            start = torch.stack((torch.cos(az), torch.sin(az), e), -1)
        for h, head in enumerate(self.candidates):
            last = [m for m in head if isinstance(m, nn.Linear)][-1]
            last.weight.mul_(spread)
            last.bias.copy_(start[h])

    def forward(self, pose_code: Tensor, mirrored_code: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """``pose_code [B, F]`` -> ``(candidates [B, M, 4], student [B, 4] | None)``; with
        ``mirrored_code`` (the codes of the left-right mirrored images), the mirror-equivariant
        heads of :meth:`mirror_pair`."""
        if mirrored_code is not None:
            return self.mirror_pair(pose_code, mirrored_code)
        cands = torch.stack([h(pose_code) for h in self.candidates], dim=1)  # [B, M, 4]
        student = quat_normalize(self.student(pose_code)) if self.student is not None else None
        return quat_normalize(cands), student

    def mirror_partner(self) -> list[int]:
        """Head ``h``'s partner under the mirror ``az -> -az``: the head whose ring start
        is nearest ``-az_h`` (``model.pose_mirror_equivariant``). Raises unless the pairing
        is an involution (ring-started heads placed symmetrically about azimuth 0). The ring
        starts are fixed once built, so the pairing is worked out on the first call."""
        if self._partners is None:
            self._partners = self._pair_ring()
        return self._partners

    def _pair_ring(self) -> list[int]:
        M = len(self.candidates)
        if self.ring_azimuths is None:
            if M == 1:
                return [0]
            raise ValueError("model.pose_mirror_equivariant needs model.pose_candidates_init=ring "
                             "with more than one candidate head (it pairs each head with the "
                             "one starting at the mirrored azimuth)")  # fmt: skip
        az = self.ring_azimuths
        d = torch.remainder(-az[:, None] - az[None, :] + math.pi, 2 * math.pi) - math.pi
        part = d.abs().argmin(1).tolist()
        if any(part[p] != h for h, p in enumerate(part)):
            raise ValueError(f"the heads' ring starts (degrees {torch.rad2deg(az).tolist()}) "
                             "are not symmetric about azimuth 0: no mirror pairing")  # fmt: skip
        return part

    def mirror_pair(self, code: Tensor, mirrored: Tensor) -> tuple[Tensor, Tensor | None]:
        """``model.pose_mirror_equivariant`` (not in the paper; view heads only): head ``h``'s
        raw ``(a, b, e)`` on the image plus the mirror ``(a, -b, e)`` of its partner's on the
        mirrored image (:meth:`mirror_partner`), elevations averaged. A mirror-symmetric
        object's mirrored image is the view from ``(-az, el)``; with these heads the
        candidates of the mirrored image are the candidates' mirrors by construction."""
        if self.view is None:
            raise ValueError("model.pose_mirror_equivariant needs model.pose_parametrization=view")
        part = self.mirror_partner()
        cands = torch.stack([mirror_pair(h, self.candidates[p], code, mirrored)
                             for h, p in zip(self.candidates, part)], dim=1)  # fmt: skip
        student = None
        if self.student is not None:
            student = mirror_pair(self.student, self.student, code, mirrored)
        return quat_normalize(cands), None if student is None else quat_normalize(student)


def mirror_pair(head: nn.Sequential, partner: nn.Sequential, code: Tensor, mirrored: Tensor
                ) -> Tensor:  # fmt: skip
    """``[B, 4]``: the camera of view head ``head`` (its MLP then :class:`AzElQuat`) made
    mirror-equivariant with ``partner`` (:meth:`PoseHeads.mirror_pair`): raw ``(a, b, e)``
    of ``head`` on ``code [B, F]`` plus ``(a, -b, e)`` of ``partner`` on the mirrored
    images' ``mirrored [B, F]``, the elevations averaged."""
    keep, flip = code.new_tensor((1.0, 1.0, 0.5)), code.new_tensor((1.0, -1.0, 0.5))
    return head[-1](head[:-1](code) * keep + partner[:-1](mirrored) * flip)
