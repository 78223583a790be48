"""Where the unsupervised model's cameras sit: the ``pose_spread`` diagnostic (not in the
paper; docs/training.md, "The one-sided solution").

The unsupervised paper method at CPU size often settles with every predicted camera on
one side of the object: the shape is then right only from that side, and the views
taken from the other side are explained from the opposite direction (front/back flips
that no candidate can undo, since the shape's far side was never seen). The length of
the winners' mean camera direction shows it: near 0.2 for views all around the object
(the CPU sets' elevations of -20..40 degrees), 0.64 for one half of the circle, 1 for a
single direction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpc.camera import camera_position, quat_normalize


def camera_directions(quats: Tensor) -> Tensor:
    """Unit object-frame directions towards the camera ``[..., 3]`` of camera quaternions
    ``[..., 4]`` (any norm)."""
    return camera_position(quat_normalize(quats), 1.0)


def winner_spread(quats: Tensor, winner: Tensor) -> Tensor:
    """``|mean camera direction|`` (scalar, detached) of the winning candidates ``quats
    [b, K, M, 4]`` at ``winner [b, K]``."""
    with torch.no_grad():
        d = camera_directions(quats.float())
        dw = d.gather(2, winner[..., None, None].expand(*winner.shape, 1, 3))[:, :, 0]
        return dw.reshape(-1, 3).mean(0).norm()
