"""Predictions on your own images:
``python -m dpc.predict run_dir=<run> images=<file, folder or glob> out=<folder>``.

Per image ``<name>`` it writes ``<name>.ply`` (the predicted cloud, with colours if the
model predicts them), ``<name>.json`` (the predicted camera pose: quaternion, azimuth,
elevation and roll in degrees, and the frame they are in) and ``<name>.png`` (input |
predicted silhouette | the cloud from four viewpoints), plus ``summary.json``. A file that
cannot be used is reported by name and skipped; the others are still predicted, and the
exit status is 1 if any failed. Options: ``configs/predict.yaml`` (``--help``).
The same from Python: ``dpc.load_run(run_dir).predict(images)`` (:mod:`dpc.eval.loaded_run`).
"""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, ListConfig

from dpc.camera import CAMERA_DISTANCE, camera_position
from dpc.cli import run_command
from dpc.eval.loaded_run import IMAGE_SUFFIXES, ImageError, LoadedRun, load_image, pose_angles
from dpc.eval.pictures import VIEWPOINTS, render_cloud_views, titled_columns
from dpc.eval.predictions import write_ply


def find_images(spec) -> tuple[list[Path], list[str]]:
    """Image files named by ``spec``: a file, a folder (its files with an image suffix,
    sorted; other files are listed as ignored), a glob, or a list of those.
    Returns ``(files, notes)``; raises FileNotFoundError when nothing matches."""
    specs = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    files: list[Path] = []
    notes: list[str] = []
    for s in specs:
        p = Path(str(s)).expanduser()
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            for f in sorted(p.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f)
                elif f.is_file() and not f.name.startswith("."):
                    notes.append(f"ignored {f} (not an image suffix: {', '.join(IMAGE_SUFFIXES)})")
        else:
            hits = sorted(Path(h) for h in glob.glob(str(p), recursive=True))
            hits = [h for h in hits if h.is_file()]
            if not hits:
                raise FileNotFoundError(f"images={s}: no such file or folder, and no file matches")
            files += hits
    seen, unique = set(), []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    if not unique:
        raise FileNotFoundError(f"images={spec}: no image files found")
    return unique, notes


def output_names(files: list[Path]) -> list[str]:
    """Output stems: the file name without suffix, disambiguated when two files share it."""
    stems = [f.stem for f in files]
    names = []
    for f, s in zip(files, stems):
        n = s if stems.count(s) == 1 else f"{s}_{f.suffix.lstrip('.').lower()}"
        while n in names:
            n += "_"
        names.append(n)
    return names


def pose_record(q: torch.Tensor | None, q_model, cands, fitted=None) -> dict:
    """The JSON pose of one image (``q [4]`` in the run's output frame; ``fitted [4]``: the
    best-fit view of a camera-supervised run)."""
    if q is None:
        rec = {"predicted": False, "note": "camera-supervised run: it does not predict poses"}
        if fitted is not None:
            a = pose_angles(fitted[None])
            rec["fitted_view"] = {
                "azimuth_deg": round(float(a["azimuth_deg"][0]), 2),
                "elevation_deg": round(float(a["elevation_deg"][0]), 2),
                "quaternion_wxyz": [round(float(x), 6) for x in fitted],
                "note": "not predicted: the upright view (15 degree azimuth steps, elevation "
                "0/15/30) whose silhouette of the predicted cloud best matches the input",
            }
        return rec
    a = pose_angles(q[None])
    pos = camera_position(q[None].double(), CAMERA_DISTANCE)[0]
    return {
        "predicted": True,
        "quaternion_wxyz": [round(float(x), 6) for x in q],
        "azimuth_deg": round(float(a["azimuth_deg"][0]), 2),
        "elevation_deg": round(float(a["elevation_deg"][0]), 2),
        "roll_deg": round(float(a["roll_deg"][0]), 2),
        "camera_position": [round(float(x), 4) for x in pos],
        "quaternion_model_frame_wxyz": [round(float(x), 6) for x in q_model],
        "candidates_wxyz": None if cands is None else np.round(cands.numpy(), 6).tolist(),
    }


CONVENTION = (
    "quaternion (w, x, y, z) maps object-frame points to the camera frame (axes depth, up, "
    "right); the camera sits at camera_position = distance 2 x (cos el cos az, sin el, "
    "cos el sin az), y up, looking at the origin (dpc.camera.view_quat); roll = in-image "
    "rotation left over (0 for the data sets' cameras)"
)


def panel_image(name: str, pred, i: int, run: LoadedRun, cell: int, q_rec: dict):
    """PNG panel of image ``i``: input | predicted silhouette | cloud from 4 viewpoints."""
    pts = pred.points[i].numpy()
    color = (60, 100, 200)
    if pred.colors is not None:  # the cloud's mean colour, darkened to stay visible on white
        color = tuple(int(c) for c in np.clip(pred.colors[i].mean(0).numpy() * 200, 0, 200))
    views = render_cloud_views(pts, size=min(cell, 128), color=color)
    if q_rec["predicted"]:
        sil = 1.0 - pred.silhouette[i].clamp(0, 1).numpy()
        sil_title = "predicted silhouette"
        cap = f"az {q_rec['azimuth_deg']:.0f} el {q_rec['elevation_deg']:.0f}"
    else:  # camera-supervised: no predicted pose; the best-fitting upright view
        sil = 1.0 - pred.silhouette[i].clamp(0, 1).numpy()
        sil_title = "silhouette, best-fit view"
        fit = q_rec.get("fitted_view", {})
        cap = f"az {fit.get('azimuth_deg', 0):.0f} el {fit.get('elevation_deg', 0):.0f} (fit)"
    frame = run.frame.split(" (")[0]
    titles = ["input (as fed)", sil_title] + [f"cloud az {a:.0f} el {e:.0f}" for a, e in VIEWPOINTS]
    rows = [[pred.images[i], sil] + views]
    caps = [["", cap] + [f"{frame} frame"] * len(views)]
    head = f"{name}  |  run {run.run_dir.name} step {run.step}  |  {pred.points.shape[1]} points"
    return titled_columns(rows, titles, cell, caps, heading=head)


def predict_images(
    run: LoadedRun,
    images,
    out: str | Path,
    batch_size: int = 16,
    cell: int = 160,
    panel: bool = True,
    ply: bool = True,
) -> dict:
    """Predict every image named by ``images`` (:func:`find_images`) and write the outputs
    into ``out``. Returns the summary (also ``out/summary.json``): ``predicted`` (names),
    ``failed`` ({file: error}), ``notes``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files, notes = find_images(images)
    names = output_names(files)
    failed: dict[str, str] = {}
    ok: list[tuple[Path, str, np.ndarray]] = []
    for f, n in zip(files, names):
        try:
            ok.append((f, n, load_image(f)))
        except ImageError as e:
            failed[str(f)] = str(e)
            print(f"[dpc.predict] ERROR {e}", file=sys.stderr)
    done = []
    for s in range(0, len(ok), batch_size):
        chunk = ok[s : s + batch_size]
        try:
            pred = run.predict_full([a for _, _, a in chunk])
        except Exception as e:  # keep the other batches
            for f, _, _ in chunk:
                failed[str(f)] = f"{f}: prediction failed ({type(e).__name__}: {e})"
                print(f"[dpc.predict] ERROR {failed[str(f)]}", file=sys.stderr)
            continue
        for i, (f, n, rgb) in enumerate(chunk):
            try:
                rec = _write_one(run, pred, i, f, n, rgb, out, cell, panel, ply)
                done.append(rec)
                print(f"[dpc.predict] {f} -> {out / n}.*  {_pose_text(rec['pose'])}")
            except Exception as e:
                failed[str(f)] = f"{f}: writing outputs failed ({type(e).__name__}: {e})"
                print(f"[dpc.predict] ERROR {failed[str(f)]}", file=sys.stderr)
    summary = {
        "run_dir": str(run.run_dir),
        "checkpoint_step": run.step,
        "frame": run.frame,
        "predicted": done,
        "failed": failed,
        "notes": notes,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    for note in notes:
        print(f"[dpc.predict] {note}", file=sys.stderr)
    msg = f"[dpc.predict] predicted {len(done)} of {len(files)} image(s) -> {out}"
    if failed:
        msg += f"; {len(failed)} FAILED:\n" + "\n".join(f"  {e}" for e in failed.values())
    print(msg, file=sys.stderr if failed else sys.stdout)
    return summary


def _pose_text(p: dict) -> str:
    if not p["predicted"]:
        f = p.get("fitted_view")
        fit = f" best-fit view az {f['azimuth_deg']:.0f} el {f['elevation_deg']:.0f}" if f else ""
        return "(no pose: camera-supervised run)" + fit
    return f"azimuth {p['azimuth_deg']:.1f} elevation {p['elevation_deg']:.1f} deg"


def _write_one(run, pred, i, f: Path, n: str, rgb, out: Path, cell, panel, ply) -> dict:
    q = None if pred.quat is None else pred.quat[i]
    qm = None if pred.quat_model is None else pred.quat_model[i]
    cands = None if pred.candidates is None else pred.candidates[i]
    fitted = None if pred.fitted_quat is None else pred.fitted_quat[i]
    pose = pose_record(q, qm, cands, fitted)
    rec = {
        "image": str(f),
        "input_size": list(rgb.shape[:2]),
        "run_dir": str(run.run_dir),
        "checkpoint_step": run.step,
        "frame": run.frame,
        "pose": pose,
        "convention": CONVENTION,
        "num_points": int(pred.points.shape[1]),
        "occupancy_scale": float(pred.scale[i]),
        "has_colors": pred.colors is not None,
    }
    if ply:
        cols = None if pred.colors is None else pred.colors[i].numpy()
        write_ply(out / f"{n}.ply", pred.points[i].numpy(), cols)
        rec["ply"] = f"{n}.ply"
    if panel:
        panel_image(f.name, pred, i, run, cell, pose).save(out / f"{n}.png")
        rec["panel"] = f"{n}.png"
    (out / f"{n}.json").write_text(json.dumps(rec, indent=1))
    return rec


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_predict(cfg: DictConfig) -> int:
    """The command's body; returns the exit status (0 all predicted, 1 some failed)."""
    run = LoadedRun(str(cfg.run_dir), resolve_device(str(cfg.device)))
    summary = predict_images(
        run,
        cfg.images,
        str(cfg.out),
        int(cfg.batch_size),
        int(cfg.cell),
        bool(cfg.panel),
        bool(cfg.ply),
    )
    return 1 if summary["failed"] else 0


def main(argv: list[str] | None = None) -> None:
    """``python -m dpc.predict run_dir=<run> images=<...> [key=value ...]``: exit status 0
    (all predicted), 1 (some images failed), 2 (an error, e.g. no such run)."""
    run_command("predict", run_predict, argv)


if __name__ == "__main__":
    main()
