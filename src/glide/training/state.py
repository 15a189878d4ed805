"""The run folder on disk: checkpoints, trainer state, RNG capture/restore, resume lookup.

Layout of a run folder::

    RUN/config.yaml                      the resolved TrainConfig (+ the model config, for people)
    RUN/metrics.jsonl, RUN/metrics.csv   one row per --log-every steps
    RUN/samples/step-00001000.png        sample grids
    RUN/checkpoints/step-00001000/
        model.safetensors                raw weights, config in the metadata (glide.checkpoints)
        ema-0.9999.safetensors           one file per EMA rate
        trainer_state.pt                 optimizer, scaler, step, data position, RNG states

The layout itself (names, what a complete step is, the latest step) lives in
``glide.checkpoints.files``, shared with the loaders. A checkpoint is written into
``checkpoints/.tmp-step-XXXXXXXX-<pid>/`` and renamed into place; pruned ones are renamed to
``.trash-...`` before they are deleted; so a folder named ``step-*`` is always complete, even if
the process was killed mid-write or mid-prune.
``trainer_state.pt`` holds only tensors and plain Python values: it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoints import save_model
from ..checkpoints.files import (
    CHECKPOINTS,
    EMA_FILES_KEY,
    MODEL_FILE,
    STATE_FILE,
    clean_stale_dirs,
    ema_file_name,
    holds_run,
    is_complete_step,
    list_step_dirs,
    remove_step_dir,
    step_dir_name,
    step_of,
)
from ..errors import ResumeError
from .ema import EMA

STATE_FORMAT = 1
# What a run writes into its folder; --overwrite removes exactly these.
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "metrics.csv", CHECKPOINTS, "samples", "tensorboard", "train.log")
__all__ = [  # the layout names are re-exported for the trainer and the training CLI
    "CHECKPOINTS", "MODEL_FILE", "STATE_FILE", "ResumeError", "clean_stale_dirs", "ema_file_name", "holds_run",
    "list_step_dirs", "step_dir_name",
]


# --------------------------------------------------------------------------------------------
# RNG states


def capture_rng() -> dict[str, Any]:
    """This process's global RNG states (python, numpy, torch CPU and CUDA) as plain values/tensors."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Writing checkpoints


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    ema: EMA,
    trainer_state: dict[str, Any],
    keep: int = 0,
) -> Path:
    """Write ``RUN/checkpoints/step-XXXXXXXX/`` atomically and keep only the last ``keep`` (0 = all).

    ``model`` is the bare model (not a DDP wrapper): its ``config`` goes into every file.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    metadata = {"glide_step": str(step), "glide_stage": str(trainer_state.get("stage", ""))}
    ema_files = [ema_file_name(rate) for rate in ema.rates]
    save_model(model, tmp / MODEL_FILE, metadata={**metadata, EMA_FILES_KEY: json.dumps(ema_files)})
    for rate, name in zip(ema.rates, ema_files, strict=True):
        save_model(model, tmp / name, state_dict=ema.state_dict(rate),
                   metadata={**metadata, "glide_ema_rate": f"{rate:g}"})
    torch.save(trainer_state, tmp / STATE_FILE)
    _fsync_dir_files(tmp)
    if final.exists():  # re-saving a step (e.g. interrupted right after a save): replace it
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    if keep > 0:
        for old in list_step_dirs(run_dir)[:-keep]:
            remove_step_dir(old)
    return final


def _fsync_dir_files(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# Finding and reading checkpoints


def find_step_to_resume(path: str | Path) -> Path:
    """The step folder ``--resume PATH`` names: a step folder itself, or a run folder (or its
    ``checkpoints``) -> its latest complete step."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        if step_of(path) is not None and not is_complete_step(path):
            raise ResumeError(f"cannot resume from {path}: the step folder is incomplete (a file is missing); "
                              f"resume from the run folder to use its latest complete step")
        return path
    if path.is_dir():
        found = list_step_dirs(path)
        if found:
            return found[-1]
        raise ResumeError(
            f"cannot resume from {path}: it holds no complete checkpoint (checkpoints/step-*/{STATE_FILE})")
    raise ResumeError(f"cannot resume from {path}: no such checkpoint or run folder")


def load_trainer_state(checkpoint: Path) -> dict[str, Any]:
    try:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ResumeError(f"cannot read {checkpoint / STATE_FILE}: {str(exc).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{checkpoint / STATE_FILE} is not a glide trainer state (format {STATE_FORMAT})")
    return state


# --------------------------------------------------------------------------------------------
# The run folder


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Create the run folder; refuse to mix with an existing run unless resuming or overwriting."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file, not a folder")
    if holds_run(run_dir) and not resume:
        if not overwrite:
            found = list_step_dirs(run_dir)
            what = f"a run with {len(found)} checkpoint(s), the latest {found[-1].name}" if found else "a run"
            raise FileExistsError(
                f"--out {run_dir} already holds {what}. Pass --resume to continue it, --overwrite to replace "
                f"it, or choose another --out folder."
            )
        for name in RUN_ENTRIES:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
