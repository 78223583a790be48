"""Quaternions, camera poses and the perspective transform (docs/METHOD.md, section 3).

Conventions (stated once, used everywhere in the project):

* Quaternions are ``(w, x, y, z)`` with the scalar first, shape ``[..., 4]``. ``q`` and
  ``-q`` are the same rotation. Rotating a point is ``p' = q p q^-1``.
* A camera quaternion ``q`` maps object-frame points to the camera frame. In the camera
  frame, axis 0 is depth (away from the camera), axis 1 is image "up" and axis 2 is image
  "right". The camera sits at ``(-d, 0, 0)`` in its own frame, i.e. at ``q^-1 (-d,0,0) q``
  in the object frame, looks at the origin, and the image is not mirrored.
* The perspective transform returns *grid coordinates* ``(depth, row, col)``, each meant
  to lie in ``[-0.5, 0.5]``: depth is metric, ``row = -f*up/(depth + d)`` (row grows
  downwards, so images come out top row first, like PNGs) and ``col = f*right/(depth+d)``.
* A grid of size G samples the image plane at ``c_k = k/(G-1) - 0.5``: the first and last
  pixel centres sit on the edges of ``[-0.5, 0.5]`` (``align_corners=True``). Masks are
  resized to G with ``F.interpolate(..., mode="bilinear", align_corners=True)``
  (:func:`resize_masks`).
* Object frame: y up (ShapeNet convention), objects normalised to ``[-0.5, 0.5]^3``.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

CAMERA_DISTANCE = 2.0
FOCAL_LENGTH = 1.875


def quat_mul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of quaternions ``[..., 4]`` (broadcasts)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )


def quat_conj(q: Tensor) -> Tensor:
    """Conjugate ``[..., 4]``; the inverse of a unit quaternion."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def quat_normalize(q: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit quaternion ``[..., 4]``; ``eps`` keeps the gradient finite at q = 0."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_rotate(q: Tensor, points: Tensor) -> Tensor:
    """Rotate ``points`` ``[B, N, 3]`` by unit quaternions ``q`` ``[B, 4]``: q p q^-1.

    Uses ``p + 2w (v x p) + 2 v x (v x p)``, which equals the sandwich product for unit q.
    """
    w = q[..., None, :1]  # [B, 1, 1]
    v = q[..., None, 1:]  # [B, 1, 3]
    t = 2.0 * torch.cross(v.expand_as(points), points, dim=-1)
    return points + w * t + torch.cross(v.expand_as(points), t, dim=-1)


def quat_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` of unit quaternions ``[..., 4]`` (R p = q p q^-1)."""
    w, x, y, z = quat_normalize(q).unbind(-1)
    return torch.stack(
        (
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ),
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def matrix_to_quat(R: Tensor) -> Tensor:
    """Unit quaternions ``[..., 4]`` (w >= 0) of rotation matrices ``[..., 3, 3]``.

    Picks, per matrix, the numerically best of the four standard formulas (Shepperd).
    """
    m = R
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack(
        (
            torch.stack(
                (
                    1 + trace,
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ),
                -1,
            ),
            torch.stack(
                (
                    m[..., 2, 1] - m[..., 1, 2],
                    1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                    m[..., 0, 1] + m[..., 1, 0],
                    m[..., 0, 2] + m[..., 2, 0],
                ),
                -1,
            ),
            torch.stack(
                (
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 0, 1] + m[..., 1, 0],
                    1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                    m[..., 1, 2] + m[..., 2, 1],
                ),
                -1,
            ),
            torch.stack(
                (
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 1, 2] + m[..., 2, 1],
                    1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2],
                ),
                -1,
            ),
        ),
        dim=-2,
    )  # [..., 4 candidates, 4]
    diag = torch.stack((trace, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]), -1)
    best = diag.argmax(-1, keepdim=True)[..., None].expand(*diag.shape[:-1], 1, 4)
    q = quat_normalize(torch.gather(cands, -2, best).squeeze(-2))
    return torch.where(q[..., :1] < 0, -q, q)


def quat_from_axis_angle(axis: Tensor, angle: Tensor) -> Tensor:
    """Quaternion ``[..., 4]`` rotating by ``angle`` (radians) about ``axis`` ``[..., 3]``."""
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    half = 0.5 * angle
    return torch.cat((torch.cos(half)[..., None], torch.sin(half)[..., None] * axis), -1)


def quat_angle(q1: Tensor, q2: Tensor) -> Tensor:
    """Angle in radians ``[...]`` of the rotation ``q1^-1 q2`` (0..pi; q and -q equal)."""
    w = (quat_normalize(q1) * quat_normalize(q2)).sum(-1).abs()  # scalar part of q1^-1 q2
    return 2.0 * torch.acos(w.clamp(max=1.0))


# The 180-degree rotation about the camera frame's image-up axis (axis 1, see the module
# docstring), through the origin: the object stays centred on the optical axis.
IMAGE_UP_FLIP = (0.0, 0.0, 1.0, 0.0)


def flip_about_image_up(q: Tensor) -> Tensor:
    """``F q`` for camera quaternions ``q [..., 4]`` (any norm; the norm is kept), with
    ``F`` the 180-degree rotation about the camera frame's image-up axis: the camera moves
    to the antipodal point of its sphere (same distance, the object stays centred) and
    keeps its image-up direction. At zero elevation this is the view from azimuth + 180
    degrees (:func:`view_quat`), i.e. the object turned front to back about its vertical;
    it is its own inverse up to sign (``F F = -1``)."""
    return quat_mul(q.new_tensor(IMAGE_UP_FLIP), q)


def mean_image_up(q: Tensor) -> Tensor:
    """Unit object-frame direction ``[3]`` (detached) of the mean image-up axis of the
    cameras ``q [..., 4]``: the object's vertical as the cameras see it (data sets are
    rendered without camera roll, so every view's image-up lies near the vertical)."""
    with torch.no_grad():
        u = quat_to_matrix(q.detach().reshape(-1, 4))[:, 1, :].mean(0)  # rows: camera axes
        return u / u.norm().clamp_min(1e-12)


def flip_about_object_up(q: Tensor, up: Tensor | None = None) -> Tensor:
    """``q H`` for camera quaternions ``q [..., 4]`` (any norm; the norm is kept), with
    ``H`` the half turn about the object-frame axis ``up [3]`` (default
    :func:`mean_image_up` of ``q``): the object turned front to back about its vertical,
    the camera at the same elevation on the other side, at any elevation (unlike
    :func:`flip_about_image_up`, off by twice the elevation)."""
    u = mean_image_up(q) if up is None else up / up.norm().clamp_min(1e-12)
    h = torch.cat((u.new_zeros(1), u)).to(q.dtype)  # (cos 90, sin 90 * u)
    return quat_mul(q, h.expand_as(q))


# Half turns (w, x, y, z): about the camera frame's optical (depth) axis, and about the
# object frame's z axis (the built-in data sets' left-right axis: y up, front along -x)
OPTICAL_AXIS_ROLL = (0.0, 1.0, 0.0, 0.0)
OBJECT_Z_TURN = (0.0, 0.0, 0.0, 1.0)


def silhouette_twin(q: Tensor) -> Tensor:
    """``R q Z`` for camera quaternions ``q [..., 4]`` (any norm; the norm is kept): ``Z`` the
    half turn about the object frame's z axis, ``R`` the half turn about the optical axis
    that puts image up back up. For ``view_quat(az, el)`` it is ``view_quat(pi - az,
    -el)``. An object mirror-symmetric across z = 0 has the same silhouette from ``q`` and
    from its twin under an orthographic camera: only perspective tells them apart
    (:mod:`dpc.eval.pose_ambiguity`)."""
    r, z = q.new_tensor(OPTICAL_AXIS_ROLL), q.new_tensor(OBJECT_Z_TURN)
    return quat_mul(r.expand_as(q), quat_mul(q, z.expand_as(q)))


def camera_azel(q: Tensor) -> tuple[Tensor, Tensor]:
    """Azimuth and elevation ``[...]`` (radians) of the cameras ``q [..., 4]`` in
    :func:`view_quat`'s convention (the camera's roll is ignored)."""
    p = camera_position(q, 1.0)
    return torch.atan2(p[..., 2], p[..., 0]), torch.atan2(p[..., 1], p[..., 0::2].norm(dim=-1))


def twin_in_range(q: Tensor, elevation_range: tuple[float, float]) -> Tensor:
    """The :func:`silhouette_twin` ``[..., 4]`` (unit norm) of upright cameras ``q [..., 4]``,
    ``azel_quat(pi - az, -el)``, with the twin's elevation clamped into ``elevation_range``
    (degrees, ``model.pose_elevation_range``): a view whose twin the camera prior rules
    out gets a camera on the range's edge instead, which no longer has its silhouette, so
    winner-takes-all keeps the view itself."""
    az, el = camera_azel(q)
    lo, hi = (math.radians(float(x)) for x in elevation_range)
    return azel_quat(math.pi - az, (-el).clamp(lo, hi))


# how many cameras each head gives with model.pose_flip_candidates, per model.pose_flip_axis
FLIP_FACTOR = {"camera": 2, "object": 2, "twin": 2, "twin_flip": 4}
FLIP_AXES = tuple(FLIP_FACTOR)


def flip_factor(axis: str) -> int:
    """:data:`FLIP_FACTOR` of ``axis`` (``model.pose_flip_axis``), with a clear error for an
    unknown one."""
    if axis not in FLIP_FACTOR:
        raise ValueError(f"model.pose_flip_axis must be one of {FLIP_AXES}, got {axis!r}")
    return FLIP_FACTOR[axis]


def flip_upright(q: Tensor) -> Tensor:
    """``[..., 4]``: upright cameras ``q [..., 4]`` (image up on the object's y, as
    :func:`azel_quat` makes them) turned half a turn about the object's y,
    ``azel_quat(az + pi, el)``: the exact front/back flip."""
    az, el = camera_azel(q)
    return azel_quat(az + math.pi, el)


# reflections: the object frame's z (the built-in data sets' left-right axis) and the
# camera frame's right axis (rows of quat_to_matrix: depth, up, right)
_MIRROR_Z = (1.0, 1.0, -1.0)


def mirror_camera(q: Tensor) -> Tensor:
    """``[..., 4]`` (unit norm): cameras ``q [..., 4]`` (any roll) reflected across the
    object frame's z = 0 plane, image right reversed so the frame stays a rotation,
    ``D R(q) D`` with ``D = diag(1, 1, -1)``. An object mirror-symmetric across z = 0 seen
    from the result looks like the image from ``q`` mirrored left to right (the image's
    last axis); for upright cameras ``azel_quat(az, el)`` it is ``azel_quat(-az, el)``."""
    d = q.new_tensor(_MIRROR_Z)
    R = quat_to_matrix(quat_normalize(q)) * d[:, None] * d  # D R D
    return matrix_to_quat(R).to(q.dtype)


def with_flipped_candidates(
    q: Tensor, axis: str = "camera", elevation_range: tuple[float, float] = (-80.0, 80.0)
) -> Tensor:
    """Pose candidates ``[..., M, 4]`` -> ``[..., F M, 4]`` (``F`` = :data:`FLIP_FACTOR`),
    the candidate set of ``model.pose_flip_candidates``; ``axis`` (``model.pose_flip_axis``):

    * ``camera``: ``[q, F q]``, ``F`` = :func:`flip_about_image_up`;
    * ``object``: ``[q, F q]``, :func:`flip_about_object_up` about the mean image-up of all
      of ``q`` (the model's vertical, estimated per batch);
    * ``twin``: ``[q, T q]``, ``T`` = :func:`twin_in_range` (upright cameras, an object
      mirror-symmetric across the model's z = 0);
    * ``twin_flip``: ``[q, T q, P q, T P q]`` with ``P`` = :func:`flip_upright`: each
      camera ``(az, el)`` also as ``(180 - az, -el)``, ``(az + 180, el)`` and ``(-az, -el)``
      (twins' elevations clamped into ``elevation_range``).
    """
    flip_factor(axis)  # a clear error for an unknown axis
    if axis == "camera":
        return torch.cat((q, flip_about_image_up(q)), dim=-2)
    if axis == "object":
        return torch.cat((q, flip_about_object_up(q)), dim=-2)
    if axis == "twin":
        return torch.cat((q, twin_in_range(q, elevation_range)), dim=-2)
    f = flip_upright(q)  # twin_flip
    return torch.cat(
        (q, twin_in_range(q, elevation_range), f, twin_in_range(f, elevation_range)), dim=-2
    )


def random_quat(n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> Tensor:
    """``n`` uniformly distributed random unit quaternions ``[n, 4]`` (w >= 0)."""
    q = quat_normalize(torch.randn(n, 4, generator=generator, dtype=dtype))
    return torch.where(q[:, :1] < 0, -q, q)


def look_at_quat(position: Tensor, up: Tensor | None = None) -> Tensor:
    """Camera quaternions ``[..., 4]`` for cameras at ``position`` ``[..., 3]`` looking at 0.

    ``up`` (default +y) is the object-frame direction shown as image up; it must not be
    parallel to the viewing direction.
    """
    f = -position / position.norm(dim=-1, keepdim=True)  # viewing direction
    if up is None:
        up = torch.zeros_like(position)
        up[..., 1] = 1.0
    u = up - (up * f).sum(-1, keepdim=True) * f
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = torch.cross(f, u, dim=-1)
    R = torch.stack((f, u, r), dim=-2)  # rows: camera axes (depth, up, right) in object frame
    return matrix_to_quat(R)


def view_quat(azimuth: Tensor, elevation: Tensor) -> Tensor:
    """Camera quaternions ``[..., 4]`` for a camera on a sphere around the object.

    The camera is at ``(cos(el) cos(az), sin(el), cos(el) sin(az))`` (y up), angles in
    radians, looking at the origin with +y as image up. Elevation must be in (-pi/2, pi/2).
    """
    pos = torch.stack(
        (
            torch.cos(elevation) * torch.cos(azimuth),
            torch.sin(elevation),
            torch.cos(elevation) * torch.sin(azimuth),
        ),
        dim=-1,
    )
    return look_at_quat(pos)


def azel_quat(azimuth: Tensor, elevation: Tensor) -> Tensor:
    """:func:`view_quat` in closed form, ``[..., 4]``: smooth in both angles (no matrix
    round trip), for pose heads that predict azimuth and elevation: the turn by ``el``
    about the camera's right axis after the turn by ``az`` about the object's y,
    ``(-c_e s_a, -s_e c_a, c_e c_a, -s_e s_a)`` with ``c_e = cos(el/2)``, ``s_a = sin(az/2)``."""
    ce, se = torch.cos(elevation / 2), torch.sin(elevation / 2)
    ca, sa = torch.cos(azimuth / 2), torch.sin(azimuth / 2)
    return torch.stack((-ce * sa, -se * ca, ce * ca, -se * sa), dim=-1)


def camera_position(q: Tensor, distance: float = CAMERA_DISTANCE) -> Tensor:
    """Object-frame camera positions ``[..., 3]`` of camera quaternions ``[..., 4]``."""
    R = quat_to_matrix(q)
    return -distance * R[..., 0, :]  # R^T (-d, 0, 0)


def perspective_transform(
    points_cam: Tensor,
    camera_distance: float = CAMERA_DISTANCE,
    focal_length: float = FOCAL_LENGTH,
) -> Tensor:
    """Camera-frame points ``[B, N, 3]`` (depth, up, right) -> grid coordinates.

    Returns ``[B, N, 3]`` as ``(depth, row, col)``: depth unchanged (metric), and
    ``row = -f * up / (depth + d)``, ``col = f * right / (depth + d)``. Points behind the
    camera (depth <= -d) are not meaningful; the grid drops anything outside [-0.5, 0.5].
    """
    depth, up, right = points_cam.unbind(-1)
    inv = focal_length / (depth + camera_distance)
    return torch.stack((depth, -up * inv, right * inv), dim=-1)


def _fast_cpu(points: Tensor, translation: Tensor | None) -> bool:
    """Whether :func:`world_to_grid` can take the numba CPU path: CPU float32/float64
    tensors of one dtype, numba installed, not under torch.compile tracing."""
    ok = points.device.type == "cpu" and points.dtype in (torch.float32, torch.float64)
    if translation is not None:
        ok = ok and translation.device.type == "cpu" and translation.dtype == points.dtype
    return ok and _have_numba() and not torch.compiler.is_compiling()


@functools.cache
def _have_numba() -> bool:
    """Whether numba imports (kernels.cpu's numba path; without it that path would run as
    plain Python)."""
    try:
        import numba  # noqa: F401
    except Exception:  # ImportError, or a numba that does not match the installed numpy
        return False
    return True


def world_to_grid(
    points: Tensor,
    q: Tensor,
    translation: Tensor | None = None,
    camera_distance: float = CAMERA_DISTANCE,
    focal_length: float = FOCAL_LENGTH,
) -> Tensor:
    """Rotate object-frame ``points`` ``[B, N, 3]`` by camera ``q`` ``[B, 4]`` (normalised
    here; same result as :func:`quat_rotate` up to rounding), add an optional camera-frame
    ``translation`` ``[B, 3]``, and project.

    Returns grid coordinates ``[B, N, 3]`` (depth, row, col) as in
    :func:`perspective_transform`.
    """
    R = quat_to_matrix(q).to(points.dtype)  # normalises q
    if _fast_cpu(points, translation):
        # Rotation, translation and perspective in one numba pass each way
        # (kernels/cpu/transform.py): 5-10x cheaper than the torch ops below on a CPU.
        from kernels.cpu import rotate_project_cpu

        return rotate_project_cpu(points, R, translation, camera_distance, focal_length)
    # One bmm with 3x3 matrices: cheaper than the two cross products of quat_rotate
    # (forward and backward) over all B * N points; the same rotation for unit q.
    p = torch.bmm(points, R.transpose(1, 2))
    if translation is not None:
        p = p + translation[:, None, :]
    return perspective_transform(p, camera_distance, focal_length)


def deg(x: Tensor | float) -> Tensor | float:
    """Radians to degrees."""
    return x * (180.0 / math.pi)
