"""The one validation function: metric keys, a perfect model scores 0, and the wandb
payload."""

import numpy as np
import torch
from omegaconf import OmegaConf

from dpc.data import synthetic_dataset
from dpc.eval.validate import validate
from dpc.models import DPCModel, ModelOutput
from dpc.training.logging import wandb_payload


def _cfg(num_objects: int, predict_pose: bool, size: int = 16):
    """The parts of a training config validation reads (renderer as the synthetic data's)."""
    return OmegaConf.create(
        {
            "seed": 0,
            "val": {"num_objects": num_objects, "views": 4, "sigma": 0.6, "eval_metrics": True},
            "render": {
                "vox_size": size,
                "pc_gauss_kernel_size": 5,
                "pc_relative_sigma_end": 0.6,
                "projection": "drc",
                "backend": "reference",
            },
            "data": {"image_size": size},
            "model": {"predict_pose": predict_pose},
        }
    )


class OracleModel(torch.nn.Module):
    """Returns object o's GT cloud and GT pose for the image of (o, v) (looked up by pixel
    equality), to give validate() a known answer of 0."""

    def __init__(self, reader, split, with_pose: bool):
        super().__init__()
        self.images = (
            torch.from_numpy(np.asarray(reader.images(split))).float() / 255
        )  # [n,V,S,S,3]
        self.gt = torch.from_numpy(np.asarray(reader.gt_points(split)))
        self.q = torch.from_numpy(np.asarray(reader.quats(split)))
        self.with_pose = with_pose
        self.encoder = type("E", (), {"image_size": self.images.shape[2]})()

    def forward(self, x, shape_index=None):
        flat = self.images.permute(0, 1, 4, 2, 3).flatten(0, 1)  # [n*V, 3, S, S]
        idx = (x[:, None] - flat[None]).abs().flatten(2).amax(-1).argmin(1)  # [B]
        o = idx // self.images.shape[1]
        o = o if shape_index is None else o[shape_index]
        q = self.q.flatten(0, 1)[idx] if self.with_pose else None
        return ModelOutput(
            self.gt[o], torch.ones(len(o)), None, q[:, None] if q is not None else None, q
        )


def test_validate_oracle_scores_zero():
    reader = synthetic_dataset({"train": 2, "val": 3}, num_views=3, image_size=16, num_points=300)
    for with_pose in (False, True):
        model = OracleModel(reader, "val", with_pose)
        res = validate(model, reader, _cfg(3, with_pose), num_clouds=2)
        # the GT cloud seen with the GT pose renders the dataset's own masks (up to uint8)
        assert res["projection_loss"] < 1e-3
        assert res["precision"] < 1e-4 and res["coverage"] < 1e-4
        assert res["num_views"] == 9 and res["clouds"].shape == (2, 300, 3)
        if with_pose:
            assert res["pose_accuracy"] == 1.0 and res["pose_median_deg"] < 0.1
            assert res["alignment_deg"] < 0.5


def test_validate_real_model_and_wandb_payload():
    reader = synthetic_dataset({"train": 2, "val": 2}, num_views=2, image_size=16, num_points=200)
    torch.manual_seed(0)
    model = DPCModel(image_size=16, num_points=100, base_channels=4, fc_dim=32, num_candidates=2)
    model.train()
    res = validate(model, reader, _cfg(2, True))
    assert model.training  # mode restored
    for k in ("projection_loss", "precision", "coverage", "chamfer", "pose_accuracy"):
        assert np.isfinite(res[k]), k
    assert res["projection_loss"] > 1.0  # an untrained network's blob is not the car

    class FakeWandb:
        @staticmethod
        def Object3D(a):
            return ("obj3d", a.shape)

    pay = wandb_payload(res, FakeWandb)
    assert pay["val/cloud_0"] == ("obj3d", (300, 6))  # 100 predicted + 200 GT points, xyz rgb
    assert pay["val/chamfer"] == res["chamfer"]
    assert all(k.startswith("val/") for k in pay)


def test_no_student_picks_candidate_by_reprojection():
    """Several candidates and no student: the chosen pose is the candidate whose silhouette
    best matches the input mask (here, forced: candidate 1 is the GT pose)."""
    import pytest

    from dpc.eval.predictions import predict_split
    from dpc.render import PointCloudRenderer, RenderSettings

    reader = synthetic_dataset({"val": 2}, num_views=2, image_size=16, num_points=300)

    class TwoCands(OracleModel):
        def forward(self, x):
            out = super().forward(x)
            wrong = torch.tensor([0.0, 0.0, 1.0, 0.0]).expand_as(out.pose_student)
            return ModelOutput(
                out.points, out.scale, None, torch.stack([wrong, out.pose_student], 1), None
            )

    r = PointCloudRenderer(RenderSettings(vox_size=16, kernel_size=5, backend="reference"))
    with pytest.warns(UserWarning, match="no student"):
        p = predict_split(
            TwoCands(reader, "val", True), reader, "val", 16, renderer=r, sigma=0.6, progress=False
        )
    np.testing.assert_allclose(p.quat, np.asarray(reader.quats("val")), atol=1e-6)
    assert p.candidates.shape == (2, 2, 2, 4)


def test_validate_scores_the_robust_alignment_and_the_mean_shape():
    from dpc.eval.score import baselines, valid_gt_mask

    reader = synthetic_dataset({"train": 3, "val": 3}, num_views=3, image_size=16, num_points=300)
    res = validate(OracleModel(reader, "val", True), reader, _cfg(3, True))
    # the oracle: both alignments put the GT clouds on the GT
    assert res["chamfer"] < 1e-4 and res["chamfer_robust"] < 1e-4
    gt = np.asarray(reader.gt_points("val")).astype(np.float32)
    want = baselines(reader, "val", gt, valid_gt_mask(gt), with_pose=False)["mean_shape"]
    assert abs(res["mean_shape_chamfer"] - want["chamfer"]) < 1e-9
    assert res["mean_shape_chamfer"] > 0.1  # another object's shape is not the oracle's
    # the oracle predicts as many points as the ground truth has: nothing to match
    assert "mean_shape_chamfer_matched" not in res


def test_validate_scores_the_mean_shape_at_the_models_point_count():
    from dpc.eval.score import baselines, valid_gt_mask

    reader = synthetic_dataset({"train": 3, "val": 3}, num_views=3, image_size=16, num_points=300)

    class Sparse(OracleModel):  # every other point of the ground truth
        def forward(self, x, shape_index=None):
            out = super().forward(x, shape_index)
            return out._replace(points=out.points[:, ::2].contiguous())

    res = validate(Sparse(reader, "val", True), reader, _cfg(3, True))
    gt = np.asarray(reader.gt_points("val")).astype(np.float32)
    b = baselines(reader, "val", gt, valid_gt_mask(gt), with_pose=False, num_points=150)
    assert abs(res["mean_shape_chamfer_matched"] - b["mean_shape_matched"]["chamfer"]) < 1e-9
    assert abs(res["mean_shape_chamfer"] - b["mean_shape"]["chamfer"]) < 1e-9


def test_validate_scores_the_candidate_chosen_by_silhouette():
    """Two candidates, the second the GT pose, and a student that is always the same
    wrong camera: the student's figures are poor, the silhouette choice's are perfect."""
    reader = synthetic_dataset({"train": 3, "val": 3}, num_views=3, image_size=16, num_points=300)

    class WrongStudent(OracleModel):
        def forward(self, x, shape_index=None):
            out = super().forward(x, shape_index)
            wrong = torch.tensor([0.0, 0.0, 1.0, 0.0]).expand_as(out.pose_student)
            cands = torch.stack([wrong, out.pose_student], 1)
            return ModelOutput(out.points, out.scale, None, cands, wrong)

    res = validate(WrongStudent(reader, "val", True), reader, _cfg(3, True))
    assert res["pose_accuracy_robust"] < 0.5
    assert res["pose_accuracy_silhouette"] == 1.0
    assert res["pose_median_deg_silhouette"] < 0.1
    assert res["pose_accuracy_silhouette_up_to_flip"] == 1.0
    # one candidate: nothing to choose, no such figure
    assert "pose_accuracy_silhouette" not in validate(
        OracleModel(reader, "val", True), reader, _cfg(3, True)
    )


def test_summary_lines_say_why_a_paper_accuracy_is_low():
    from dpc.eval.validate import summary_lines

    m = {"pose_accuracy": 0.0, "pose_median_deg": 170.0, "pose_accuracy_robust": 0.6,
         "pose_median_deg_robust": 15.0, "pose_accuracy_up_to_flip": 0.9,
         "pose_flipped_share": 0.3, "chamfer": 9.1, "chamfer_robust": 9.0,
         "mean_shape_chamfer": 3.5, "alignment_ambiguous": 1.0, "alignment_weak": 0.0,
         "alignment_mode_ratio": 0.5, "alignment_fit_views": 80.0,
         "alignment_paper_vs_robust_deg": 178.0}  # fmt: skip
    pose, shape, align = summary_lines(m, {"chamfer": 10.4})
    assert "0.00 under the paper's alignment" in pose and "0.60 flip-robust" in pose
    assert "0.90 right up to a front/back flip" in pose
    assert "9.10 under the paper's alignment, 9.00 flip-robust" in shape
    assert "mean shape 3.50, untrained 10.40" in shape
    shape2 = summary_lines({**m, "mean_shape_chamfer_matched": 3.9})[1]
    assert "mean shape 3.50 (3.90 at the model's point count)" in shape2
    assert "AMBIGUOUS" in align and "(the other mode)" in align and "flip-robust" in align
    # one clear mode, paper alignment on it: nothing to explain
    one = summary_lines({**m, "alignment_ambiguous": 0.0, "alignment_paper_vs_robust_deg": 3.0})
    assert one[-1].startswith("align  one clear mode") and "wrong" not in one[-1]
    # with several candidates, a fourth line: the candidate chosen by silhouette
    sil = {"pose_accuracy_silhouette": 0.78, "pose_median_deg_silhouette": 6.0,
           "pose_accuracy_silhouette_up_to_flip": 0.99}  # fmt: skip
    lines = summary_lines({**m, **sil})
    assert len(lines) == 4 and lines[1].startswith("pose*  acc@30 0.78 flip-robust")
    assert "0.99 up to a flip" in lines[1] and "not the paper's" in lines[1]
    # objects seen turned as a whole: a line after the pose, only when there are some
    turned = {"pose_turned_objects": 2.0, "pose_num_objects": 12.0,
              "pose_accuracy_other_objects": 0.71}  # fmt: skip
    lines = summary_lines({**m, **turned})
    assert len(lines) == 4 and lines[1].startswith("turned 2 of 12 objects")
    assert "acc@30 on the other objects 0.71" in lines[1]
    assert len(summary_lines({**m, **turned, "pose_turned_objects": 0.0})) == 3
    # camera supervision: the shape line only, in the ground-truth frame
    assert summary_lines({"chamfer": 4.5}) == ["shape  Chamfer x100 4.50 (ground-truth frame)"]
