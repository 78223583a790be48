"""Is the student head the bottleneck of an unsupervised run's poses? (RESULTS.md "Round 3,
part 2", docs/training.md "What stays wrong with ring-started heads").

    python results/diagnose_student.py <run dir> [max_objects]

On the train and test splits (the first ``max_objects`` objects, default 400): the median
angle between the trained student's pose and the candidate whose render best matches the
view's own mask (the choice of ``dpc.evaluate pose_from=silhouette``); then a fresh
student head of the same size (FC 32 -> 32 -> 4), fitted for 3000 Adam steps (lr 1e-3,
batch 256, the student loss ``1 - w^2``) to those choices on the frozen pose codes of the
training views, and its median angle to them on train and test. A refitted student that
matches on train but not on test generalises less well than the candidate heads.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(run_dir: str, max_objects: int = 400) -> None:
    from dpc.camera import quat_angle, quat_normalize
    from dpc.data import open_run_data
    from dpc.eval.loaded_run import load_run
    from dpc.eval.predictions import predict_split
    from dpc.losses import student_loss
    from dpc.models.pose import _mlp
    from dpc.training.student_refit import pose_codes

    torch.manual_seed(0)
    run = load_run(run_dir)
    model = run.model
    reader = open_run_data(run.cfg, None, run.run_dir)
    student = model.pose_heads.student
    data = {}
    for split in ("train", "test"):
        pred = predict_split(model, reader, split, run.image_size, renderer=run.renderer,
                             sigma=run.sigma, progress=False, max_objects=max_objects,
                             pose_from="silhouette")  # fmt: skip
        chosen = torch.from_numpy(pred.quat).view(-1, 4)
        images = reader.images(split)[:max_objects]
        codes = pose_codes(model, images.reshape(-1, *images.shape[2:]), run.image_size, "cpu")
        with torch.no_grad():
            trained = quat_normalize(student(codes))
        err = torch.rad2deg(quat_angle(trained, chosen)).median().item()
        print(f"{split}: {len(chosen)} views; trained student vs chosen candidate: "
              f"median {err:.1f} deg")
        data[split] = (codes, chosen)
    codes, chosen = data["train"]
    net = _mlp(codes.shape[1], (32, 32), 4)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(3000):
        i = torch.randint(0, len(codes), (256,))
        loss = student_loss(net(codes[i]), chosen[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for split, (c, q) in data.items():
            err = torch.rad2deg(quat_angle(quat_normalize(net(c)), q)).median().item()
            print(f"refitted student vs chosen candidate, {split}: median {err:.1f} deg")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
