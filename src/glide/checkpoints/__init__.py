"""Checkpoints: the official registry, safe loading, conversion, configs stored in every file,
the run-folder layout, and the model-spec grammar.

* ``registry``: official names, URLs, aliases, the cache, downloads (``official_status``);
* ``files``: ``.safetensors`` with the config in its metadata, safe ``.pt`` reading, and the
  only run-folder layout (step folders, EMA file names, complete steps, the latest step);
* ``fit``: meta-device builds, fit checks, the "looks like preset X" diagnosis;
* ``load``: ``load_model`` (names, files, folders, runs, ``bundled:NAME``, ``random:PRESET``), ``load_clip``,
  ``convert_checkpoint``;
* ``specs``: one spec grammar (``openai``, NAME, PATH, ``bundled:NAME``, ``random:PRESET``) with role checks before
  loading, used by the CLI and ``from_pretrained``.
"""

from __future__ import annotations

from ..errors import CheckpointError, SpecError
from .files import (
    CONFIG_KEY,
    latest_step_dir,
    list_step_dirs,
    read_checkpoint,
    save_model,
    save_state_dict,
)
from .fit import describe_mismatch, load_weights
from .load import (
    bundled_names,
    bundled_path,
    checkpoint_config,
    checkpoint_sampling,
    convert_checkpoint,
    is_random,
    load_clip,
    load_model,
    resolve_weights_file,
    to_precision,
)
from .registry import (
    OFFICIAL_CHECKPOINTS,
    OfficialCheckpoint,
    checkpoint_dir,
    download_official,
    official_checkpoint,
    official_path,
    official_status,
)
from .specs import ModelSpec, load_for_role, load_pipeline_models, parse_spec, plan_models, resolve_pair

__all__ = [
    "CONFIG_KEY", "OFFICIAL_CHECKPOINTS", "CheckpointError", "ModelSpec", "OfficialCheckpoint", "SpecError",
    "bundled_names", "bundled_path",
    "checkpoint_config", "checkpoint_dir", "checkpoint_sampling", "convert_checkpoint", "describe_mismatch",
    "download_official", "is_random", "latest_step_dir", "list_step_dirs", "load_clip", "load_for_role", "load_model",
    "load_pipeline_models", "load_weights", "official_checkpoint", "official_path",
    "official_status", "parse_spec", "plan_models", "read_checkpoint", "resolve_pair", "resolve_weights_file",
    "save_model", "save_state_dict", "to_precision",
]
