"""Point-cloud decoder and occupancy-scale head (docs/METHOD.md, section 2)."""

from __future__ import annotations

from torch import Tensor, nn


class PointDecoder(nn.Module):
    """Shape code ``[B, F]`` -> points ``[B, N, 3]`` in [-0.5, 0.5]^3 (tanh / 2) and, with
    ``rgb``, per-point colours ``[B, N, 3]`` in (0, 1) (sigmoid). The point layer starts
    with weights of std ``init_std`` (paper: 0.025) so the initial cloud is a small blob."""

    def __init__(self, in_dim: int, num_points: int, rgb: bool = False, init_std: float = 0.025):
        super().__init__()
        self.num_points = num_points
        self.fc_points = nn.Linear(in_dim, num_points * 3)
        nn.init.trunc_normal_(self.fc_points.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        nn.init.zeros_(self.fc_points.bias)
        self.fc_rgb = None
        if rgb:
            self.fc_rgb = nn.Linear(in_dim, num_points * 3)
            nn.init.trunc_normal_(self.fc_rgb.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
            nn.init.zeros_(self.fc_rgb.bias)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        B = z.shape[0]
        points = 0.5 * self.fc_points(z).tanh().view(B, self.num_points, 3)
        colors = None
        if self.fc_rgb is not None:
            colors = self.fc_rgb(z).sigmoid().view(B, self.num_points, 3)
        return points, colors


class ScaleHead(nn.Module):
    """Shape code ``[B, F]`` -> occupancy scale ``[B]`` in (0, max_scale): FC + sigmoid
    (original ``pc_occupancy_scaling_maximum``)."""

    def __init__(self, in_dim: int, max_scale: float = 1.0, init_std: float = 0.025):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)
        nn.init.trunc_normal_(self.fc.weight, std=init_std, a=-2 * init_std, b=2 * init_std)
        nn.init.zeros_(self.fc.bias)
        self.max_scale = max_scale

    def forward(self, z: Tensor) -> Tensor:
        return self.max_scale * self.fc(z).sigmoid()[:, 0]
