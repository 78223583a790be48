"""Markdown table rows for RESULTS.md, read from the evaluation's own files in results/.

    python results/tables.py [--shape-only] results/r2_car_camsup_paper_s0 \
        "results/r2_car_camsup_best_s0::recommended" ...

An optional ``::label`` after a folder names the row (default: the run's experiment name).
``--shape-only`` leaves out the pose columns (camera-supervised tables).

Per run folder (made from a run directory: ``eval/test/metrics_test.json`` and the run's
``config.yaml`` / ``summary.json``): experiment name, seed, steps, training wall time,
test precision / coverage / Chamfer (x100), and for pose-predicting runs the accuracy at
30 degrees and median error under the paper's and the flip-robust alignment, and the
accuracy up to a front/back flip (``dpc.eval.pose_report``).
"""

import json
import sys
from pathlib import Path

import yaml


def row(arg: str) -> str:
    path, _, label = arg.partition("::")
    folder = Path(path)
    m = json.loads((folder / "metrics_test.json").read_text())
    s = json.loads((folder / "summary.json").read_text())
    c = yaml.safe_load((folder / "config.yaml").read_text())
    wall = s.get("wall_time_s")
    cells = [
        label or str(c.get("name")),
        f"[`{folder.name}`]({folder.as_posix()})",
        str(c.get("seed")),
        str(s.get("step")),
        "—" if wall is None else f"{wall / 60:.1f} min",
        f"{m['precision']:.2f}",
        f"{m['coverage']:.2f}",
        f"**{m['chamfer']:.2f}**",
    ]
    pr = m.get("pose_report")
    if pr:
        p, r = pr.get("paper", {}), pr["robust"]
        cells += [
            f"{p.get('accuracy', float('nan')):.3f} / {p.get('median_deg', float('nan')):.0f}",
            f"{r['accuracy']:.3f} / {r['median_deg']:.0f}",
            f"{r['accuracy_up_to_flip']:.3f}",
        ]
    else:
        cells += ["—", "—", "—"]
    return "| " + " | ".join(cells) + " |"


def baseline_lines(folder: Path) -> list[str]:
    """The evaluation's trivial answers for the run's test split: the category-mean
    shape, and for pose-predicting runs the mean training view."""
    bs = json.loads((folder / "metrics_test.json").read_text())["baselines"]
    b = bs["mean_shape"]
    p, c, ch = b["precision"], b["coverage"], b["chamfer"]
    out = [f"mean shape: precision {p:.2f}, coverage {c:.2f}, Chamfer {ch:.2f}"]
    if "mean_view" in bs:
        v = bs["mean_view"]
        out.append(f"mean view: accuracy {v['accuracy']:.3f}, median {v['median_deg']:.1f} deg")
    return out


if __name__ == "__main__":
    # --shape-only: no pose columns (camera-supervised tables)
    shape_only = "--shape-only" in sys.argv
    folders = [a for a in sys.argv[1:] if a != "--shape-only"]
    head = "| run | files | seed | steps | wall | precision | coverage | Chamfer |"
    if not shape_only:
        head += " pose acc@30 / median, paper alignment | same, flip-robust | acc up to flip |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for f in folders:
        r = row(f)
        print(r.rsplit(" | ", 3)[0] + " |" if shape_only else r)
    if folders:
        print()
        for f in folders:
            print(f.partition("::")[0], "--", "; ".join(baseline_lines(Path(f.partition("::")[0]))))
