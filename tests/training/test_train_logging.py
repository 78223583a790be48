"""wandb mode resolution, progress line, the CPU-time notice, the closing message, device
selection, preview drawing and the preview CLI."""

import numpy as np
import pytest
from train_testutils import TINY, compose_cfg

from dpc.train import train
from dpc.training.logging import ProgressLine, format_eta, wandb_mode
from dpc.training.loop import cpu_time_notice
from dpc.training.preview import panel, preview_run


def test_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert wandb_mode("auto") == "offline"
    assert wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment wins
    assert wandb_mode("online") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    with pytest.raises(ValueError, match="logger.mode"):
        wandb_mode("sometimes")


def test_progress_line_and_eta():
    assert format_eta(75) == "1m15s" and format_eta(3700) == "1h01m"
    line = ProgressLine(0, 100).line(9, 1.5)
    assert line.startswith("step 10/100 | loss 1.5 |") and "it/s" in line and "ETA" in line


def test_panel_tiles_labelled_cells():
    img = np.full((9, 9, 3), 255, np.uint8)
    out = panel([[img, img]], cell=16, labels=["a", "b"])
    assert out.size == (32, 16 + 14)


def test_cpu_time_notice_names_the_cpu_sized_experiment():
    car = compose_cfg(["+experiment=car_camera_supervision"])
    msg = cpu_time_notice(car, 2.5, 600000)
    assert "2.50 s/step" in msg
    assert format_eta(2.5 * 600000) in msg
    assert "+experiment=car_quick_camera_supervision" in msg
    assert "+experiment=airplane_quick" in cpu_time_notice(
        compose_cfg(["+experiment=airplane"]), 1, 10**5
    )
    chair = compose_cfg(["+experiment=chair"])
    assert "+experiment=chair_quick" in cpu_time_notice(chair, 1, 10**5)
    # a category without a CPU-sized experiment falls back to the car one
    chair.name = "sofa"
    assert "+experiment=car_quick" in cpu_time_notice(chair, 1, 10**5)
    assert cpu_time_notice(car, 0.2, 2500) == ""  # 8 minutes: nothing to say


def test_cuda_index_becomes_the_current_device(monkeypatch):
    import torch

    from dpc.training.distributed import resolve_device

    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]  # Triton launches on the current device
    assert resolve_device("cpu") == torch.device("cpu") and len(current) == 1
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")


def test_preview_cli_writes_png(tmp_path, capsys):
    run = tmp_path / "run"
    train(
        compose_cfg(
            ["+experiment=car_quick_camera_supervision"] + TINY + ["trainer.max_steps=1"], run
        )
    )
    printed = capsys.readouterr().out  # the run ends by saying where it is and what next
    assert f"run directory: {run}" in printed
    assert f"python -m dpc.evaluate run_dir={run} split=test" in printed
    assert f"python -m dpc.visualize run_dir={run}" in printed
    out = preview_run(run, n=2)
    assert out.exists() and out.stat().st_size > 1000
