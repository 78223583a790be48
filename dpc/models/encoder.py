"""Image encoder (docs/METHOD.md, section 2): conv stack -> FC 1024 x 3 (shape code) + pose code."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

LEAKY_SLOPE = 0.2  # tf.nn.leaky_relu default, as in the original
# model.pose_code_activation: dpc's leaky_relu, or the original's relu
POSE_CODE_ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE), "relu": nn.ReLU}


def init_he(module: nn.Module) -> None:
    """He (variance-scaling, fan-in) init of conv / linear weights, zero biases: the
    original's ``variance_scaling_initializer`` for the encoder and pose layers."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ImageEncoder(nn.Module):
    """Images ``[B, 3, S, S]`` in [0, 1] -> shape code ``[B, F]`` and pose code ``[B, F]``.

    conv 5x5 stride 2 (``base_channels``), then ``log2(S/4) - 1`` blocks of
    [conv 3x3 stride 2, conv 3x3 stride 1] doubling channels down to 4x4, flatten,
    FC F -> FC F -> FC F (shape code z). The pose code is one more FC F from the second
    FC layer, built only with ``pose_code`` (a camera-supervised model has no pose heads,
    so the layer would get no gradient and only add to the weight-decay term). Leaky ReLU
    (0.2) everywhere, except the pose code with ``pose_code_activation="relu"`` (the
    original's).
    """

    def __init__(
        self,
        image_size: int = 128,
        base_channels: int = 16,
        fc_dim: int = 1024,
        pose_code: bool = True,
        pose_code_activation: str = "leaky_relu",
    ):
        super().__init__()
        if pose_code_activation not in POSE_CODE_ACTIVATIONS:
            raise ValueError(
                f"model.pose_code_activation must be one of {sorted(POSE_CODE_ACTIVATIONS)}, "
                f"got {pose_code_activation!r}"
            )
        if image_size < 8 or image_size & (image_size - 1):
            raise ValueError(f"image_size must be a power of two >= 8, got {image_size}")
        act = lambda: nn.LeakyReLU(LEAKY_SLOPE)
        layers: list[nn.Module] = [nn.Conv2d(3, base_channels, 5, stride=2, padding=2), act()]
        c = base_channels
        for _ in range(int(math.log2(image_size // 4)) - 1):
            layers += [
                nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
                act(),
                nn.Conv2d(2 * c, 2 * c, 3, stride=1, padding=1),
                act(),
            ]
            c *= 2
        self.convs = nn.Sequential(*layers)
        self.fc1 = nn.Linear(c * 16, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.fc3 = nn.Linear(fc_dim, fc_dim)
        self.fc_pose = nn.Linear(fc_dim, fc_dim) if pose_code else None
        self.act = act()
        # the original's pose layer is slim's fully_connected with its default ReLU
        self.pose_act = POSE_CODE_ACTIVATIONS[pose_code_activation]()
        self.image_size = image_size
        self.out_dim = fc_dim
        init_he(self)
        # checkpoints written before the layer became optional hold it even without pose heads
        self._register_load_state_dict_pre_hook(_drop_unused_pose_code, with_module=True)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Returns ``(z [B, F], pose_code [B, F] or None without the pose layer)``."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            raise ValueError(
                f"images must be [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(images.shape)}"
            )
        x = self.convs(images * 2.0 - 1.0)  # the paper scales inputs to [-1, 1]
        x = self.act(self.fc1(torch.flatten(x, 1)))
        h = self.act(self.fc2(x))
        z = self.act(self.fc3(h))
        pose_code = self.pose_act(self.fc_pose(h)) if self.fc_pose is not None else None
        return z, pose_code


LEGACY_POSE_CODE_KEYS = ("fc_pose.weight", "fc_pose.bias")


def _drop_unused_pose_code(module: ImageEncoder, state_dict, prefix: str, *args) -> None:
    """Load-state pre-hook: an encoder without the pose layer ignores that layer's weights
    in an older checkpoint (they never received a gradient in a camera-supervised run)."""
    if module.fc_pose is None:
        for k in LEGACY_POSE_CODE_KEYS:
            state_dict.pop(prefix + k, None)
