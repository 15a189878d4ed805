"""A failing training run ends at once: one ``Error:`` line, a non-zero exit, no worker left.

Every run here goes through a subprocess with a timeout, because the failure being guarded
against is a hang at interpreter exit (data-loader workers that ignore SIGTERM, kept alive by a
traceback), which an in-process test cannot see.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = ["--stage", "base", "--model", "tiny-base", "--image-size", "16", "--data", "shapes:16",
            "--batch-size", "4", "--steps", "3", "--save-every", "0", "--sample-every", "0", "--no-progress",
            "--no-tensorboard", "--num-workers", "2"]
# Fails the run inside its second training step, when the data-loader workers are running.
FAIL_IN_STEP = """
import sys
from glide.training.cli import train_command
from glide.training.stages import Text2ImStage

real_loss, calls = Text2ImStage.loss, []

def failing(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        raise {error}
    return real_loss(self, *args, **kwargs)

Text2ImStage.loss = failing
train_command(sys.argv[1:])
"""


def run(command: list[str], tmp_path: Path, offline_vocab: bool = False, timeout: float = 120):
    """(CompletedProcess, seconds); with ``offline_vocab`` no GPT-2 vocabulary can be found or fetched."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "GLIDE_OFFLINE": "1"}
    if offline_vocab:
        env.pop("GLIDE_VOCAB_DIR", None)
        env["GLIDE_CACHE"] = str(tmp_path / "empty-cache")
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    return result, time.monotonic() - started


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode not in (0, None), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0]


def test_missing_vocabulary_offline_fails_in_seconds(tmp_path):
    command = [sys.executable, "-m", "glide", "train", *TINY_RUN, "--tokenizer", "glide-bpe", "--out", "run"]
    result, seconds = run(command, tmp_path, offline_vocab=True)
    assert_one_error_line(result, "encoder.json", "GLIDE_OFFLINE")
    assert seconds < 60
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


@pytest.mark.parametrize("error, one_line", [("OSError('No space left on device')", True),
                                              ("RuntimeError('an unexpected bug')", False)])
def test_a_failure_while_workers_run_ends_the_run(tmp_path, error, one_line):
    script = tmp_path / "fail_in_step.py"
    script.write_text(FAIL_IN_STEP.format(error=error))
    command = [sys.executable, str(script), *TINY_RUN, "--tokenizer", "train:300", "--out", "run"]
    result, seconds = run(command, tmp_path)
    if one_line:
        assert_one_error_line(result, "No space left on device")
    else:  # a bug keeps its traceback, but the run still ends
        assert result.returncode != 0 and "an unexpected bug" in result.stderr
    assert "Exception ignored in atexit" not in result.stderr
    assert seconds < 60


@pytest.mark.torchrun
def test_missing_vocabulary_under_torchrun_ends_every_rank(tmp_path):
    if importlib.util.find_spec("torch.distributed.run") is None or not torch.distributed.is_available():
        pytest.skip("torch.distributed.run is not available in this torch build")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "glide.training.cli", *TINY_RUN, "--tokenizer", "glide-bpe", "--out", "run"]
    result, seconds = run(command, tmp_path, offline_vocab=True, timeout=180)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "Error: tokenizer vocabulary file" in line]
    assert len(errors) == 2, result.stderr[-3000:]  # one line per rank
    assert seconds < 120
