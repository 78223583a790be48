"""Biases on winner-takes-all's choice of pose candidate (not in the paper; issue 20).

Winner-takes-all (:func:`dpc.losses.winner_takes_all`) picks, per view, the candidate
pose with the lowest loss. On cars, silhouettes hardly tell a pose from its front/back
flip, and the unsupervised model settles with the views of one end of the car posed
as views of the other end: all predicted cameras sit in one half of the circle around
the object (RESULTS.md, "Round 3"). The two biases here only change *which* candidate
wins (they are added to a detached copy of the per-candidate losses): the loss that is
back-propagated stays the winner's own, so gradients are the paper's.

* :func:`spread_bias` (``loss.pose_spread_weight``): a viewpoint-distribution prior.
  The training views are spread all around the object, so over a batch the mean
  predicted camera direction is short; when it is longer than ``margin``, candidates
  pointing along it pay ``weight * excess * (direction . mean direction)``. Mustikovela
  et al. (CVPR 2020, "Self-supervised viewpoint learning from image collections") match
  the predicted viewpoints to a prior distribution adversarially; this is the first
  moment of that idea, applied where the candidates already offer both modes.
* :func:`student_bias` (``loss.pose_student_select_weight``): candidates far from the
  student's current pose pay ``weight * (1 - <q, q_student>^2)``, so the student, a
  smooth function of the image learnt over the whole data set, arbitrates between
  near-equal candidates, and an object's shape is pushed to follow its views' poses
  rather than the views flipping to follow a flipped shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpc.camera import camera_position, mean_image_up, quat_normalize


def camera_directions(quats: Tensor) -> Tensor:
    """Unit object-frame directions towards the camera ``[..., 3]`` of camera quaternions
    ``[..., 4]`` (any norm)."""
    return camera_position(quat_normalize(quats), 1.0)


def spread_bias(quats: Tensor, per_candidate: Tensor, margin: float) -> tuple[Tensor, Tensor]:
    """Viewpoint-spread bias ``[b, K, M]`` (before the weight) of candidates ``quats
    [b, K, M, 4]`` given their losses ``per_candidate [b, K, M]``, and ``|m|`` (scalar).

    The mean camera direction ``m`` is taken over the batch's current winners (the
    unbiased argmin); ``excess = max(|m| - margin, 0)``; each candidate's bias is
    ``excess * (d . m / |m|)`` (in [-excess, excess]). Zero when the winners are spread.
    """
    with torch.no_grad():
        d = camera_directions(quats.float())  # [b, K, M, 3]
        w = per_candidate.argmin(-1)  # [b, K]
        dw = d.gather(2, w[..., None, None].expand(*w.shape, 1, 3))[:, :, 0]  # [b, K, 3]
        m = dw.reshape(-1, 3).mean(0)
        norm = m.norm()
        excess = (norm - margin).clamp_min(0.0)
        return excess * (d * (m / norm.clamp_min(1e-12))).sum(-1), norm


def winner_spread(quats: Tensor, winner: Tensor) -> Tensor:
    """``|mean camera direction|`` (scalar, detached) of the winning candidates ``quats
    [b, K, M, 4]`` at ``winner [b, K]``: near 0 for views all around the object, ~0.64 for
    views spread evenly over one half of the circle, 1 for a single direction."""
    with torch.no_grad():
        d = camera_directions(quats.float())
        dw = d.gather(2, winner[..., None, None].expand(*winner.shape, 1, 3))[:, :, 0]
        return dw.reshape(-1, 3).mean(0).norm()


def spread_loss(quats: Tensor, winner: Tensor) -> Tensor:
    """Not in the paper (``loss.pose_spread_loss_weight``): ``|m_h|^2``, the squared
    horizontal part of the mean camera direction ``m`` of the winning candidates ``quats
    [b, K, M, 4]`` at ``winner [b, K]`` (differentiable through the winners), horizontal
    meaning perpendicular to the model's vertical (:func:`dpc.camera.mean_image_up` of all
    candidates, held constant). Views taken all around the object have ``m_h`` near 0;
    the one-sided solution (every predicted camera on one side, the shape only right from
    there) has ``|m_h|`` of 0.6-0.9. Its gradient spreads the cameras around the vertical,
    a continuous path out of that solution, where flipping single views is not."""
    up = mean_image_up(quats)
    b, K = winner.shape
    qw = quats.gather(2, winner[..., None, None].expand(b, K, 1, 4))[:, :, 0]  # [b, K, 4]
    m = camera_directions(qw).reshape(-1, 3).mean(0)
    m_h = m - (m * up).sum() * up
    return m_h.square().sum()


def student_bias(quats: Tensor, student: Tensor) -> Tensor:
    """Student-agreement bias ``[b, K, M]``: ``1 - <q, s>^2`` of each candidate ``quats
    [b, K, M, 4]`` against the student ``student [b, K, 4]`` (both normalised here; 0 for
    the same rotation, 1 for a half turn away)."""
    with torch.no_grad():
        q = quat_normalize(quats.float())
        s = quat_normalize(student.float())[:, :, None]
        return 1.0 - (q * s).sum(-1).square()
