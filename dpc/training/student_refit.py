"""``trainer.student_refit_steps`` (not in the paper): after training, refit the student
pose head (and fit ``model.pose_selector``) to the candidates the trained network's own
renders pick.

During training the student chases candidate heads that are still moving; at the end its
poses lag the candidates it was taught from (RESULTS.md "Round 3, part 2": median 16 deg
against 6 deg for the best-matching candidate on cars). The refit freezes everything else,
takes per training view the candidate whose render of that view's predicted cloud best
matches the view's mask (the choice of ``dpc.evaluate pose_from=silhouette``, here on the
TRAINING split only) and fits, on the frozen pose codes:

- a freshly initialised student head to those candidates (student loss ``1 - w^2``);
- with ``model.pose_selector``, a freshly initialised selector head to their indices
  (cross-entropy over the candidates); once fitted, the model's pose is the candidate the
  selector picks (``ModelOutput.pose``), which keeps the candidate's precision and only
  has to tell which head is right.

Test time reads the image alone, as in the paper. The fresh starts make the refit
idempotent: a run resumed after (or during) the refit gets the same heads again.
"""

from __future__ import annotations

import torch

from dpc.data import prepare_images
from dpc.eval.predictions import predict_split
from dpc.losses import student_loss
from dpc.models.encoder import init_he
from dpc.models.pose import mirror_pair

REFIT_LR = 1e-3  # Adam; the heads are tiny (FC 32 -> 32 -> 4 or M) and the targets fixed
REFIT_BATCH = 256  # views per step, drawn with replacement


def check_refit(cfg) -> int:
    """``trainer.student_refit_steps`` as an int, with a clear error when it cannot apply."""
    steps = int(cfg.trainer.get("student_refit_steps", 0) or 0)
    if steps < 0:
        raise ValueError(f"trainer.student_refit_steps must be >= 0, got {steps}")
    if steps and not (cfg.model.predict_pose and cfg.model.pose_predictor_student):
        raise ValueError(
            "trainer.student_refit_steps > 0 needs a student pose head "
            "(model.predict_pose=true, model.pose_predictor_student=true)"
        )
    if cfg.model.get("pose_selector", False) and not steps:
        raise ValueError(
            "model.pose_selector=true needs trainer.student_refit_steps > 0 (the selector "
            "is fitted there, after training)"
        )
    return steps


@torch.no_grad()
def pose_codes(model, images, image_size: int, device, batch_size: int = 64) -> torch.Tensor:
    """Pose codes ``[n, F]`` of images ``[n, H, W, 3]`` (uint8) from the frozen encoder;
    with ``model.pose_mirror_equivariant`` ``[n, 2F]``, each image's then its mirror's."""
    out = []
    for s in range(0, len(images), batch_size):
        x = prepare_images(images[s : s + batch_size], image_size).to(device)
        _, code, mirrored = model.encode(x)
        out.append(code.float() if mirrored is None else torch.cat((code, mirrored), 1).float())
    return torch.cat(out)


class MirrorStudent(torch.nn.Module):
    """The student head on ``[n, 2F]`` codes (:func:`pose_codes`) as the model reads it
    with ``model.pose_mirror_equivariant`` (:func:`dpc.models.pose.mirror_pair`); its only
    parameters are the student's, so the refit re-initialises and fits just those."""

    def __init__(self, student: torch.nn.Sequential):
        super().__init__()
        self.student = student

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        code, mirrored = codes.chunk(2, dim=1)
        return mirror_pair(self.student, self.student, code, mirrored)


def _fit(head, codes, loss_fn, target, steps: int, seed: int) -> tuple[float, float]:
    """Re-initialise ``head`` (seeded) and fit ``loss_fn(head(codes), target)`` with Adam;
    returns the loss on all views before and after."""
    with torch.no_grad():
        start = float(loss_fn(head(codes), target))
    g = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        init_he(head)
    opt = torch.optim.Adam(head.parameters(), REFIT_LR)
    head.train()
    for _ in range(steps):
        i = torch.randint(0, len(codes), (REFIT_BATCH,), generator=g).to(codes.device)
        loss = loss_fn(head(codes[i]), target[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return start, float(loss_fn(head(codes), target))


def silhouette_choice(model, reader, renderer, sigma: float, image_size: int, device="cpu",
                      progress: bool = True):  # fmt: skip
    """Per training view, the candidate whose render of the view's predicted cloud best
    matches the view's mask: :class:`dpc.eval.predictions.Predictions` of the train split,
    ``quat [n_obj, V, 4]`` the choice (the refits' targets)."""
    return predict_split(model, reader, "train", image_size, device=device, renderer=renderer,
                         sigma=sigma, progress=progress, pose_from="silhouette")  # fmt: skip


def refit_student(
    model,
    reader,
    renderer,
    sigma: float,
    image_size: int,
    steps: int,
    seed: int,
    device="cpu",
    progress: bool = True,
) -> dict:
    """Refit ``model.pose_heads.student`` (and fit ``model.pose_selector``) in place (see
    the module docstring); returns ``{"views", "loss_start", "loss_end"}`` (the student
    loss on all training views before and after), with a selector also
    ``"selector_loss_end"`` and ``"selector_agreement"`` (the share of training views
    whose chosen candidate it picks)."""
    was_training = model.training
    model.eval()
    selector = getattr(model, "pose_selector", None)
    if selector is not None:
        model.selector_fitted.fill_(False)  # the student's poses, not a stale selector's
    pred = silhouette_choice(model, reader, renderer, sigma, image_size, device, progress)
    target = torch.from_numpy(pred.quat).reshape(-1, 4).to(device)
    images = reader.images("train")
    codes = pose_codes(model, images.reshape(-1, *images.shape[2:]), image_size, device)
    mirror = bool(getattr(model, "mirror_equivariant", False))
    student = MirrorStudent(model.pose_heads.student) if mirror else model.pose_heads.student
    start, end = _fit(student, codes, student_loss, target, steps, seed)
    if mirror:
        codes = codes.chunk(2, dim=1)[0]  # the selector reads the image's own code
    out = {"views": len(codes), "loss_start": start, "loss_end": end}
    if selector is not None:
        cands = torch.from_numpy(pred.candidates).reshape(len(codes), -1, 4).to(device)
        index = (cands - target[:, None]).abs().sum(-1).argmin(1)  # the chosen candidate
        ce = torch.nn.functional.cross_entropy
        _, out["selector_loss_end"] = _fit(selector, codes, ce, index, steps, seed + 1)
        with torch.no_grad():
            agree = (selector(codes).argmax(1) == index).float().mean()
        out["selector_agreement"] = float(agree)
        model.selector_fitted.fill_(True)
    model.train(was_training)
    return out
