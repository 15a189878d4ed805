"""The run folder: --resume of a folder without a run is an error, and pruning old checkpoints
(--keep) is safe against kill -9 (loading and resuming agree on what a complete step is)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from glide.checkpoints import files, latest_step_dir, list_step_dirs, load_model
from glide.training import TrainConfig, train
from glide.training.state import ResumeError


def small(out: Path, **overrides) -> TrainConfig:
    """A seconds-long run: tiny U-Net at 16 px on 4 shapes images, byte-level tokens."""
    options = dict(
        out=str(out), stage="base", model="tiny-base", image_size=16, model_overrides={"text_ctx": 24},
        data="shapes:4", batch_size=4, steps=3, lr=1e-3, num_workers=0, log_every=1, save_every=1,
        sample_every=0, ema=(0.9, 0.99), progress=False, tensorboard=False,
    )
    return TrainConfig(**{**options, **overrides})


@pytest.mark.parametrize("how", ["missing", "empty", "unrelated"])
def test_resume_of_a_folder_without_a_run_is_an_error_naming_it(tmp_path, how):
    out = tmp_path / "typo"
    if how != "missing":
        out.mkdir()
    if how == "unrelated":
        (out / "notes.txt").write_text("not a run")
    with pytest.raises(ResumeError, match=f"{out}.*new run needs no --resume"):
        train(small(out, resume="auto"))
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()
    assert out.exists() == (how != "missing")  # nothing was created


def test_resume_typo_from_the_command_line_is_a_one_line_error(tmp_path):
    from glide.cli.train import train as train_command

    result = CliRunner().invoke(train_command, ["--resume", "--out", str(tmp_path / "nope"), "--no-progress"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert str(tmp_path / "nope") in result.output and "no --resume" in result.output


KILL_DURING_PRUNE = """
import os, shutil, signal
import glide.checkpoints.files as files
from glide.training import TrainConfig, train

real_rmtree = shutil.rmtree
def rmtree_then_die(path, *args, **kwargs):
    if os.path.basename(str(path)).startswith(".trash-step"):  # pruning: delete one file, then die
        first = sorted(os.listdir(path))[0]
        os.unlink(os.path.join(path, first))
        os.kill(os.getpid(), signal.SIGKILL)
    return real_rmtree(path, *args, **kwargs)
files.shutil.rmtree = rmtree_then_die
train(TrainConfig(**{config}))
"""


def test_kill_9_while_pruning_leaves_only_complete_steps(tmp_path):
    out = tmp_path / "run"
    cfg = small(out, keep=1)
    script = KILL_DURING_PRUNE.replace("{config}", repr(cfg.to_dict()))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    root = out / "checkpoints"
    steps = [p for p in root.iterdir() if p.name.startswith("step-")]
    assert steps and all(files.is_complete_step(p) for p in steps)  # no half-deleted step-* folder
    assert any(p.name.startswith(".trash-step-00000001") for p in root.iterdir())
    assert latest_step_dir(out).name == "step-00000002"
    assert load_model(out).config.image_size == 16

    train(cfg.replace(resume="auto"))  # resuming cleans the trash and goes on
    assert not any(p.name.startswith(".") for p in root.iterdir())
    assert [p.name for p in list_step_dirs(out)] == ["step-00000003"]
    state = torch.load(latest_step_dir(out) / files.STATE_FILE, weights_only=True)
    assert state["step"] == 3


def test_trainer_and_loader_agree_on_the_layout(tmp_path):
    out = train(small(tmp_path / "run", steps=1))
    step = latest_step_dir(out)
    assert sorted(p.name for p in step.iterdir()) == sorted(
        [files.MODEL_FILE, files.STATE_FILE, files.ema_file_name(0.9), files.ema_file_name(0.99)])
    assert files.pick_weights_file(step) == step / files.ema_file_name(0.99)  # the slowest EMA
    (step / files.ema_file_name(0.9)).unlink()  # one EMA gone: the step is no longer complete
    assert list_step_dirs(out) == []
    with pytest.raises(ResumeError, match="incomplete"):
        train(small(tmp_path / "other", resume=str(step)))
