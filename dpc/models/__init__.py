"""Networks: image encoder, point decoder, occupancy scale, pose heads (docs/METHOD.md,
section 2)."""

from dpc.models.decoder import PointDecoder, ScaleHead
from dpc.models.encoder import ImageEncoder
from dpc.models.model import (
    DPCModel,
    ModelOutput,
    build_model,
    candidate_count,
    upgrade_legacy_checkpoint,
)
from dpc.models.pose import PoseHeads

__all__ = [
    "DPCModel",
    "ImageEncoder",
    "ModelOutput",
    "PointDecoder",
    "PoseHeads",
    "ScaleHead",
    "build_model",
    "candidate_count",
    "upgrade_legacy_checkpoint",
]
