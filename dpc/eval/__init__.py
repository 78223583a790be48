"""Evaluation (docs/METHOD.md, section 6): shape and pose metrics, global alignment, baselines,
prediction over a split, and the validation hook for training.

See ``docs/eval.md`` for the command line tools (``python -m dpc.evaluate``,
``python -m dpc.visualize``).
"""

from dpc.eval.alignment import (
    AlignmentResult,
    estimate_global_alignment,
    icp_rotation,
    markley_average,
)
from dpc.eval.metrics import pose_errors_deg, pose_summary, shape_metrics

__all__ = [
    "AlignmentResult",
    "estimate_global_alignment",
    "icp_rotation",
    "markley_average",
    "pose_errors_deg",
    "pose_summary",
    "shape_metrics",
]
