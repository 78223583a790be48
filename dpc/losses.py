"""Training losses (docs/METHOD.md, section 4).

Dimension letters: B objects, K views per object, M pose candidates, G renderer grid.
All per-view losses follow the original's ``tf.nn.l2_loss`` convention: half the sum of
squared differences over the pixels of a view.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from dpc.camera import quat_conj, quat_mul, quat_normalize, quat_rotate


def per_view_l2(pred: Tensor, target: Tensor, image_dims: int = 2) -> Tensor:
    """``0.5 * sum((pred - target)^2)`` over the last ``image_dims`` dims (2 for masks and
    depths ``[..., H, W]``, 3 for colour images ``[..., C, H, W]``); returns the leading
    dims. ``target`` broadcasts to ``pred``."""
    return 0.5 * (pred - target).square().sum(dim=tuple(range(-image_dims, 0)))


def silhouette_distance(grid_points: Tensor, distance: Tensor) -> Tensor:
    """Sum over points of the distance (in pixels) from each projected point to the
    silhouette.

    Not in the paper: the projection loss has no gradient that moves a point lying far
    outside every silhouette (moving it through empty space leaves the image's error the
    same), and near the silhouette's edge it even pushes such a point away (the blurred
    edge already overshoots). This term pulls every point outside with the same force
    per pixel of distance, whatever the distance and the number of points (with a mean
    of squared distances the pull vanishes near the edge and the edge's push wins: in
    the cube-and-strays setting of ``tests/training/test_models_losses.py`` two of four
    strays stayed about 2 px outside).

    Args:
        grid_points: ``[..., N, 3]`` grid coordinates (depth, row, col) from
            :func:`dpc.camera.world_to_grid`; row/col in ``[-0.5, 0.5]`` span the image.
        distance: ``[..., G, G]`` distance maps of the target silhouettes, in pixels
            (:func:`dpc.data.images.mask_distance_maps`), same leading dims.
    Returns:
        ``[...]``: sum over points of the bilinearly interpolated distance; points outside
        the image add their distance to the image border.
    """
    return point_silhouette_distances(grid_points, distance).sum(-1)


def sample_at_points(maps: Tensor, rc: Tensor, mode: str) -> Tensor:
    """Maps ``[R, C, H, W]`` sampled at projected points ``rc [R, N, (row, col)]`` (grid
    coordinates, clamped to the image) -> ``[R, C, N]``; ``mode``: grid_sample's
    ``bilinear`` or ``nearest``. Pixel centres as in the renderer (corners aligned)."""
    # grid_sample wants (x, y) = (col, row) in [-1, 1].
    grid = (2.0 * rc.clamp(-0.5, 0.5).flip(-1))[:, None]
    return torch.nn.functional.grid_sample(maps, grid, mode=mode, align_corners=True)[:, :, 0]


def point_silhouette_distances(grid_points: Tensor, distance: Tensor) -> Tensor:
    """Distance in pixels ``[..., N]`` of each projected point to the silhouette: the
    distance map ``[..., G, G]`` sampled bilinearly at the point's (row, col), plus the
    distance past the image border for points off the image (see
    :func:`silhouette_distance`)."""
    lead = distance.shape[:-2]
    H, W = distance.shape[-2:]
    N = grid_points.shape[-2]
    rc = grid_points[..., 1:].reshape(-1, N, 2)  # [R, N, (row, col)]
    inside = rc.clamp(-0.5, 0.5)
    d = sample_at_points(distance.reshape(-1, 1, H, W).to(rc.dtype), rc, "bilinear")[:, 0]
    beyond = (rc - inside) * rc.new_tensor([H - 1, W - 1])  # pixels past the border
    return (d + beyond.norm(dim=-1)).view(*lead, N)


def surface_depth_residuals(
    grid_points: Tensor,  # [..., N, 3] (depth, row, col) from dpc.camera.world_to_grid
    depth: Tensor,  # [..., G, G] optical-axis depth maps of the target views
    mask: Tensor,  # [..., G, G] target silhouettes in [0, 1]
    camera_distance: float,
) -> tuple[Tensor, Tensor]:
    """Signed distance along the optical axis ``[..., N]`` from each point to the target's
    visible surface at the pixel it projects to (positive: behind the surface), and
    ``valid [..., N]``: the point projects inside the image onto a pixel that is fully
    inside the silhouette (so the resized depth there mixes no background depth).

    Nearest-pixel lookup: the gradient moves points along the ray only."""
    lead = depth.shape[:-2]
    H, W = depth.shape[-2:]
    N = grid_points.shape[-2]
    gp = grid_points.reshape(-1, N, 3)
    rc = gp[..., 1:].detach()
    on_image = (rc >= -0.5).all(-1) & (rc <= 0.5).all(-1)
    both = torch.stack((depth.reshape(-1, H, W), mask.reshape(-1, H, W)), 1).to(gp.dtype)
    d, m = sample_at_points(both, rc, "nearest").unbind(1)  # [R, N] each
    r = gp[..., 0] + camera_distance - d
    return r.view(*lead, N), (on_image & (m > 0.99)).view(*lead, N)


def surface_depth_loss(residual: Tensor, valid: Tensor, cells: int) -> Tensor:
    """Not in the paper: pulls each point onto the visible surface of the target.

    Silhouettes (and the expected-depth loss, since an opaque filled volume renders the
    same depth as its surface) leave points free anywhere inside the object; the ground
    truth of the Chamfer metric is a surface sample. A point on the surface lies at the
    depth map's depth in at least one view that sees it, so the loss is, per cloud, the
    mean over points of ``min over the K views`` of ``|residual|`` in grid cells (views in
    which the point falls outside the silhouette do not count; a point valid in no view
    adds 0).

    Args: ``residual``/``valid`` ``[..., K, N]`` from :func:`surface_depth_residuals` with
    the K views of one cloud on the second-to-last dim; ``cells``: grid cells per unit.
    Returns ``[...]``.
    """
    big = torch.finfo(residual.dtype).max
    a = torch.where(valid, residual.abs() * cells, residual.new_full((), big))
    best = a.min(dim=-2).values  # [..., N]
    best = torch.where(best < big, best, torch.zeros_like(best))
    return best.mean(-1)


def depth_surface_samples(
    depth: Tensor,  # [R, G, G] optical-axis depth maps of the target views
    mask: Tensor,  # [R, G, G] target silhouettes in [0, 1]
    camera_distance: float,
    num: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Up to ``num`` random pixels per view that lie fully inside the silhouette, lifted to
    the grid coordinates (depth, row, col) of :func:`dpc.camera.world_to_grid` in that
    view: ``q [R, num, 3]`` and ``valid [R, num]`` (False where a view has fewer such
    pixels). Pixel centres as in the renderer (corners aligned)."""
    R, H, W = depth.shape
    inside = (mask > 0.99).reshape(R, H * W)
    # valid pixels first, in random order (a random subset without replacement)
    score = torch.rand(R, H * W, generator=generator).to(depth.device) + inside.to(depth.dtype)
    idx = score.topk(min(num, H * W), dim=1).indices  # [R, S]
    valid = inside.gather(1, idx)
    d = depth.reshape(R, H * W).gather(1, idx)
    row = (idx // W).to(depth.dtype) / max(H - 1, 1) - 0.5
    col = (idx % W).to(depth.dtype) / max(W - 1, 1) - 0.5
    return torch.stack((d - camera_distance, row, col), -1), valid


def nearest_index(q: Tensor, p: Tensor) -> Tensor:
    """Index ``[R, S]`` of the nearest point of ``p [R, N, 3]`` to each of ``q [R, S, 3]``:
    a fused numba pass on CPU tensors (no ``[R, S, N]`` matrix), ``cdist`` + ``argmin``
    elsewhere."""
    if q.device.type == "cpu":
        from kernels.cpu import nearest_index_cpu

        return nearest_index_cpu(q, p)
    return torch.cdist(q, p).argmin(-1)


def depth_coverage(grid_points: Tensor, q: Tensor, valid: Tensor, cells: int) -> Tensor:
    """Not in the paper: pulls the nearest point to every sampled surface pixel of the
    target (the coverage half of a Chamfer distance against the depth maps' surface).

    The surface-depth term puts points on the visible surface but cannot spread them over
    it; the metric's coverage (ground truth -> prediction) then suffers from gaps. Here
    each sampled pixel's lifted surface point ``q`` attracts its nearest predicted point.

    Args: ``grid_points [R, N, 3]`` (world_to_grid of the cloud in each view), ``q`` /
    ``valid`` ``[R, S, 3]`` / ``[R, S]`` from :func:`depth_surface_samples`; ``cells``:
    grid cells per unit. Returns ``[R]``: mean over valid samples of the distance in cells
    to the nearest point (0 for a view with none).
    """
    q = q.to(grid_points.dtype)
    with torch.no_grad():  # only the nearest point gets gradient: pick it without a graph
        nearest = nearest_index(q, grid_points.detach())  # [R, S]
    p = grid_points.gather(1, nearest[..., None].expand(-1, -1, 3))
    dist = ((p - q).square().sum(-1) + 1e-12).sqrt() * cells  # [R, S]
    w = valid.to(dist.dtype)
    return (dist * w).sum(-1) / w.sum(-1).clamp_min(1.0)


def point_repulsion(points: Tensor, queries: Tensor, neighbors: int, radius: float) -> Tensor:
    """Not in the paper: spreads points apart, so that a cloud pulled onto a surface covers
    it instead of bunching (the hull-surface term alone leaves clumps: RESULTS.md "Round 5").

    For each query point, its ``neighbors`` nearest other points of the same cloud; each
    closer than ``radius`` costs ``((radius - d) / radius)^2``. The neighbours are found
    without a graph; the distances to them carry the gradient (to both points of a pair).

    Args: ``points [B, N, 3]``, ``queries [B, S]`` indices into N (a random subset keeps
    the cost at ``B x S x N``), ``radius`` in the points' units. Returns ``[B]``: the mean
    over queries and neighbours.
    """
    B, N, _ = points.shape
    k = min(int(neighbors), N - 1)
    q = points.gather(1, queries[..., None].expand(-1, -1, 3))  # [B, S, 3]
    with torch.no_grad():
        p, qd = points.detach(), q.detach()
        d2 = (qd * qd).sum(-1)[..., None] + (p * p).sum(-1)[:, None] - 2 * qd @ p.transpose(1, 2)
        d2.scatter_(2, queries[..., None], float("inf"))  # not the query itself
        nbr = d2.topk(k, dim=-1, largest=False).indices  # [B, S, k]
    S = queries.shape[1]
    near = points.gather(1, nbr.reshape(B, S * k, 1).expand(-1, -1, 3)).view(B, S, k, 3)
    d = ((q[:, :, None] - near).square().sum(-1) + 1e-12).sqrt()  # [B, S, k]
    return ((radius - d).clamp_min(0.0) / radius).square().mean((-2, -1))


def hull_surface_loss(grid_points: Tensor, inner: Tensor, cells_per_pixel: float = 1.0) -> Tensor:
    """Not in the paper, silhouettes only: pulls each point onto the visual hull's surface.

    A point on the surface of the visual hull of K views projects onto the contour of at
    least one view's silhouette; a point inside the hull projects strictly inside every
    silhouette. So per cloud: mean over points of ``min over views`` of the inner distance
    map (pixels from the point's projection to the nearest background pixel; bilinear, 0
    outside the silhouette, where the silhouette-distance term applies instead).

    Args: ``grid_points [..., K, N, 3]``, ``inner [..., K, G, G]``
    (:func:`dpc.data.images.mask_distance_maps` with ``inside=True``). Returns ``[...]``.
    """
    d = point_silhouette_distances(grid_points, inner)  # [..., K, N]; border term is 0 inside
    rc = grid_points[..., 1:]
    on_image = ((rc >= -0.5) & (rc <= 0.5)).all(-1)
    d = torch.where(on_image, d, torch.zeros_like(d))
    return d.min(dim=-2).values.mean(-1) * cells_per_pixel


class WTAResult(NamedTuple):
    loss: Tensor  # scalar: sum over views of the winner's loss / number of views
    winner: Tensor  # [B, K] int64 index of the winning candidate per view
    per_candidate: Tensor  # [B, K, M] per-view loss of every candidate (not detached)


def winner_takes_all(per_candidate: Tensor) -> WTAResult:
    """Winner-takes-all over pose candidates.

    Args:
        per_candidate: ``[B, K, M]`` loss of each view under each candidate.
    Returns:
        the mean over views of the lowest candidate loss (only the winner gets gradient),
        the winner indices ``[B, K]`` and the input.
    """
    winner = per_candidate.detach().argmin(dim=-1)  # [B, K]
    best = per_candidate.gather(-1, winner[..., None])[..., 0]  # [B, K]
    return WTAResult(best.mean(), winner, per_candidate)


def student_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Pull student quaternions ``[..., 4]`` towards teacher ones ``[..., 4]`` (held
    constant): mean of ``1 - w^2``, w the scalar part of ``normalise(q_t) * conj(normalise(q_s))``
    (zero when they are the same rotation, q and -q alike)."""
    q = quat_mul(quat_normalize(teacher.detach()), quat_conj(quat_normalize(student)))
    return (1.0 - q[..., 0].square()).mean()


ALIGN_REFERENCE_POINTS = 2000  # the original's setup_misc: 2000 points, N(0, 1) clipped to 3


def align_reference_points(
    num_points: int = ALIGN_REFERENCE_POINTS, seed: int = 0, dtype=torch.float32, device=None
) -> Tensor:
    """The fixed reference cloud ``[P, 3]`` of :func:`student_align_loss`: standard normal
    coordinates clipped to ``[-3, 3]``, as the original draws them. The original makes it
    a ``tf.Variable`` (trainable by default, no fixed seed); here it is drawn from ``seed``
    and held fixed."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(num_points, 3, generator=g, dtype=torch.float64).clamp(-3.0, 3.0)
    return pts.to(dtype=dtype, device=device)


def student_align_loss(student: Tensor, teacher: Tensor, ref_points: Tensor) -> Tensor:
    """The original's other student loss (``loss.pose_student_align_loss: true``): the
    reference cloud ``ref_points [P, 3]`` rotated by the teacher and by the student
    quaternions ``[..., 4]`` (normalised here; the teacher held constant) should coincide.
    Returns the mean over quaternions of ``0.5 * sum_p |R_t p - R_s p|^2 / P`` (its
    ``tf.nn.l2_loss(pc_1 - pc_2) / num_ref_points`` divided by the number of views)."""
    t = quat_normalize(teacher.detach()).reshape(-1, 4)
    s = quat_normalize(student).reshape(-1, 4)
    ref = ref_points.to(s.dtype)[None].expand(s.shape[0], -1, -1)
    diff = quat_rotate(t, ref) - quat_rotate(s, ref)  # [Q, P, 3]
    return 0.5 * diff.square().sum((1, 2)).mean() / ref_points.shape[0]


