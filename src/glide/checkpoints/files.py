"""Checkpoint files and the one run-folder layout.

A glide checkpoint is a ``.safetensors`` file whose metadata holds the model config as JSON
(``glide_config``, with its ``model_type``), so a file always says how to rebuild its model.
Official ``.pt`` files are read only with ``torch.load(weights_only=True)``: a pickle that would
run code is refused, never executed. Every file written here appears atomically (temporary file,
fsync, ``os.replace``) with the usual umask-based permissions.

The layout of a training run, used by both the trainer (writing, resuming) and the loaders::

    RUN/checkpoints/step-00001000/
        model.safetensors          raw weights; its metadata lists the EMA files of the step
        ema-0.9999.safetensors     one file per EMA rate
        trainer_state.pt           optimizer, scaler, step, data position, RNG states

A step folder is *complete* when all of these are present; only complete steps are listed,
resumed or loaded. Folders on their way in or out carry a hidden prefix (``.tmp-``, ``.old-``,
``.trash-``) and are removed by ``clean_stale_dirs``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.config import ModelConfig

CONFIG_KEY = "glide_config"
SAMPLING_KEY = "glide_sampling"  # optional: the sampler, steps and guidance scale the model is best used with
FORMAT_KEY = "glide_format"
FORMAT_VERSION = "1"
EMA_FILES_KEY = "glide_ema_files"  # in model.safetensors of a step: the EMA files written beside it

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"step-(\d+)")
STALE_PREFIXES = (".tmp-", ".old-", ".trash-")  # step folders being written, replaced or pruned


# --------------------------------------------------------------------------------------------
# The run-folder layout
# --------------------------------------------------------------------------------------------
def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def ema_name(rate: float) -> str:
    """The file stem of an EMA rate: 0.9999 -> 'ema-0.9999'."""
    return f"ema-{rate:g}"


def ema_file_name(rate: float) -> str:
    return f"{ema_name(rate)}.safetensors"


def ema_rate_of(path: Path) -> float | None:
    """The rate of an ``ema-<rate>.safetensors`` file, None for any other name."""
    try:
        return float(path.stem.split("-", 1)[1]) if path.stem.startswith("ema-") else None
    except ValueError:
        return None


def step_of(folder: Path) -> int | None:
    """N of a ``step-N`` folder name, None for any other name."""
    m = _STEP_DIR.fullmatch(folder.name)
    return int(m.group(1)) if m else None


def is_complete_step(folder: Path) -> bool:
    """True when ``folder`` is a ``step-N`` folder holding the model, the trainer state and every
    EMA file its model file lists (a folder left half-deleted by a kill is not complete)."""
    if step_of(folder) is None or not (folder / MODEL_FILE).is_file() or not (folder / STATE_FILE).is_file():
        return False
    try:
        listed = json.loads(read_metadata(folder / MODEL_FILE).get(EMA_FILES_KEY, "[]"))
    except (CheckpointError, json.JSONDecodeError):
        return False
    return all((folder / name).is_file() for name in listed)


def steps_root(run_dir: str | Path) -> Path:
    """The folder holding the ``step-N`` folders: ``RUN/checkpoints``, or the folder itself
    when it has no ``checkpoints`` subfolder (e.g. it *is* ``RUN/checkpoints``)."""
    run_dir = Path(run_dir)
    return run_dir / CHECKPOINTS if (run_dir / CHECKPOINTS).is_dir() else run_dir


def list_step_dirs(run_dir: str | Path) -> list[Path]:
    """The complete step folders of a run (or of its ``checkpoints`` folder), oldest first."""
    root = steps_root(run_dir)
    if not root.is_dir():
        return []
    steps = [(n, p) for p in root.iterdir() if (n := step_of(p)) is not None and p.is_dir() and is_complete_step(p)]
    return [p for _, p in sorted(steps)]


def latest_step_dir(run_dir: str | Path) -> Path | None:
    """The newest complete step folder of a run, None if it has none."""
    found = list_step_dirs(run_dir)
    return found[-1] if found else None


def holds_run(run_dir: str | Path) -> bool:
    """True if ``run_dir`` holds a training run (its config, checkpoints or metrics)."""
    return any((Path(run_dir) / name).exists() for name in ("config.yaml", CHECKPOINTS, "metrics.jsonl"))


def remove_step_dir(folder: Path) -> None:
    """Delete a step folder so that a kill at any moment leaves no half-deleted ``step-*`` folder:
    first renamed to a hidden ``.trash-`` name (atomic), then removed."""
    trash = folder.with_name(f".trash-{folder.name}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_stale_dirs(run_dir: str | Path) -> None:
    """Remove step folders a killed process left half-written, half-replaced or half-pruned."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(STALE_PREFIXES):
                shutil.rmtree(path, ignore_errors=True)


def pick_weights_file(folder: Path, weights: str = "ema") -> Path:
    """The weights file of a checkpoint folder.

    ``weights``: ``ema`` (the slowest EMA, else the raw weights), ``model``, ``ema-0.999`` or ``0.999``.
    """
    emas = sorted((r, p) for p in folder.glob("ema-*.safetensors") if (r := ema_rate_of(p)) is not None)
    files = sorted(folder.glob("*.safetensors"))
    if weights == "ema" and emas:
        target = emas[-1][1]  # the slowest-moving average
    elif weights in ("ema", "model"):
        target = folder / MODEL_FILE
        if not target.exists() and len(files) == 1:  # a folder holding a single checkpoint
            target = files[0]
    else:
        stem = weights.removesuffix(".safetensors")
        target = folder / f"{stem}.safetensors"
        if not target.exists() and ema_rate_of(Path(f"ema-{stem}")) is not None:
            target = folder / f"ema-{stem}.safetensors"
    if not target.is_file():
        options = [p.stem for p in files]
        raise CheckpointError(
            f"{folder} has no {target.name} (weights={weights!r}); it holds: {options or 'no .safetensors files'}"
        )
    return target


def checkpoint_folder(folder: Path) -> Path:
    """The folder holding the weights: a run (or its ``checkpoints``) -> its latest complete step;
    any other folder is a checkpoint folder itself."""
    root = steps_root(folder)
    if root == folder and not any(step_of(p) is not None for p in folder.iterdir()):
        return folder  # no step folders: a plain checkpoint folder
    latest = latest_step_dir(folder)
    if latest is None:
        raise CheckpointError(f"training run {folder} has no saved checkpoints yet (no complete step-* folder "
                              f"in {root}: each needs {MODEL_FILE}, {STATE_FILE} and its EMA files)")
    return latest


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The glide model inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_model(
    model: nn.Module,
    path: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``model``'s weights (or ``state_dict``, e.g. EMA weights) and config to ``path``.

    ``path`` must end in ``.safetensors``; it is written atomically (an existing file stays
    intact if anything fails). ``metadata``: extra string entries for the file header.
    """
    model = unwrap(model)
    if not isinstance(getattr(model, "config", None), ModelConfig):
        raise CheckpointError(f"{type(model).__name__} is not a glide model (no ModelConfig); cannot store its config")
    state = state_dict if state_dict is not None else model.state_dict()
    return save_state_dict(state, model.config.to_dict(), path, metadata=metadata)


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0o644 under umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_state_dict(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write tensors plus a config dict (with ``model_type``) as a glide ``.safetensors``, atomically."""
    from safetensors.torch import save_file

    from .. import __version__

    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"glide writes .safetensors checkpoints; got {path}")
    if "model_type" not in config:
        raise CheckpointError("the config to store has no 'model_type'")
    tensors, seen = {}, set()
    for k, v in state.items():
        v = v.detach().cpu().contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        if ptr in seen:  # safetensors refuses tensors that share memory (tied weights)
            v = v.clone()
        seen.add(ptr)
        tensors[k] = v
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({CONFIG_KEY: json.dumps(config), FORMAT_KEY: FORMAT_VERSION, "glide_version": __version__})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), _umask_mode())  # mkstemp gives 0600; use the umask like open()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:  # 8-byte little-endian header size, then a JSON header
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file, read from its header only (no tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"cannot read {path} as safetensors: {e}") from e


def read_file_config(path: Path) -> dict[str, Any] | None:
    """The config dict stored in a checkpoint file's header; None for a bare ``.pt`` or no config."""
    return parse_config(read_metadata(path).get(CONFIG_KEY), path) if is_safetensors(path) else None


def read_sampling(path: Path) -> dict[str, Any] | None:
    """The recommended sampling (``{"sampler", "timesteps", "guidance_scale"}``) a file's header
    records, or None (a ``.pt``, or a file written without one)."""
    if not is_safetensors(path):
        return None
    text = read_metadata(path).get(SAMPLING_KEY)
    return None if text is None else _json_object(text, SAMPLING_KEY, path)


def _json_object(raw: str, key: str, path: Path) -> dict[str, Any]:
    """A header entry that holds a JSON object, or a ``CheckpointError`` naming the file and key."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the {key} metadata is not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: the {key} metadata must be a JSON object, got {raw[:80]!r}")
    return value


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read ``(state_dict, config dict or None)`` from a ``.safetensors`` or ``.pt`` file, safely.

    Tensors keep their stored dtype. ``.pt`` files go through ``torch.load(weights_only=True)``
    and must hold a flat ``{name: tensor}`` dict; anything that would need code to unpickle
    raises ``CheckpointError``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f"cannot read {path} as safetensors: {e}") from e
        return state, parse_config(meta.get(CONFIG_KEY), path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # something beyond tensors and plain containers
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint, and unpickling it could run code. "
            f"glide reads .pt files only with torch.load(weights_only=True), which stopped at: {_unpickle_reason(e)}"
        ) from None
    except Exception as e:  # truncated or not a torch file at all
        raise CheckpointError(f"cannot read {path} as a torch checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = f"a dict with keys {list(state)[:5]}" if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors (found {found})")
    return state, None


def _unpickle_reason(e: Exception) -> str:
    """The specific line of torch's weights_only error (e.g. the blocked ``GLOBAL posix.system``)."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(boilerplate)), type(e).__name__)


def parse_config(raw: str | None, path: Path) -> dict[str, Any] | None:
    if raw is None:
        return None
    config = _json_object(raw, CONFIG_KEY, path)
    if "model_type" not in config:
        raise CheckpointError(f"{path}: the {CONFIG_KEY} metadata has no 'model_type'")
    return config
