"""Checkpoints: the official registry, safe loading, conversion, and configs stored in every file.

A glide checkpoint is a ``.safetensors`` file whose metadata holds the model config as JSON
(``glide_config``, with its ``model_type``), so a file always says how to rebuild its model.
Official ``.pt`` files are read only with ``torch.load(weights_only=True)``: a pickle that would
run code is refused, never executed.

``load_model`` accepts:

* an official name (``base``, ``upsample``, ``base-inpaint``, ``upsample-inpaint``,
  ``clip-image-enc``, ``clip-text-enc``, optionally as ``openai:base``; fetched with
  ``glide download NAME``), or ``clip`` for the noised-CLIP pair (see ``load_clip``);
* a path to a ``.pt`` or ``.safetensors`` file;
* a checkpoint folder (``model.safetensors`` and optional ``ema-<rate>.safetensors``);
* a training run folder (``RUN/checkpoints/step-<N>/``: its latest step).

Models are built on the ``meta`` device (no memory, no random init), checked against the
checkpoint's keys and shapes *before* any weight is allocated, then given the checkpoint's
tensors directly (``load_state_dict(assign=True)``); buffers that no state dict carries (CLIP's
``logit_scale`` and pixel statistics) are rebuilt with ``reset_buffers()``.

Every file this module writes appears atomically (temporary file, fsync, ``os.replace``): an
existing checkpoint is never left half-written.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .models import PRESETS, build_model, config_from_dict, preset_config

if TYPE_CHECKING:
    from .models.clip import NoisedClip

__all__ = [
    "CONFIG_KEY", "OFFICIAL_CHECKPOINTS", "CheckpointError", "OfficialCheckpoint", "checkpoint_config",
    "checkpoint_dir", "convert_checkpoint", "describe_mismatch", "download_official", "list_checkpoints",
    "load_clip", "load_model", "load_weights", "official_checkpoint", "official_path", "read_checkpoint",
    "resolve_checkpoint", "save_model", "save_state_dict",
]

CONFIG_KEY = "glide_config"
FORMAT_KEY = "glide_format"
FORMAT_VERSION = "1"
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One released checkpoint: where it is published and which preset/model type it fills."""

    name: str
    url: str
    preset: str
    model_type: str
    sha256: str | None = None  # OpenAI publishes no checksums; set one to have downloads verified

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_BLOB = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021"
OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    c.name: c
    for c in [
        OfficialCheckpoint("base", f"{_BLOB}/base.pt", "base", "text2im"),
        OfficialCheckpoint("upsample", f"{_BLOB}/upsample.pt", "upsample", "text2im"),
        OfficialCheckpoint("base-inpaint", f"{_BLOB}/base_inpaint.pt", "base-inpaint", "text2im"),
        OfficialCheckpoint("upsample-inpaint", f"{_BLOB}/upsample_inpaint.pt", "upsample-inpaint", "text2im"),
        OfficialCheckpoint("clip-image-enc", f"{_BLOB}/clip_image_enc.pt", "clip-image-enc", "clip-image-enc"),
        OfficialCheckpoint("clip-text-enc", f"{_BLOB}/clip_text_enc.pt", "clip-text-enc", "clip-text-enc"),
    ]
}
# Names the official code uses (``load_checkpoint("clip/image-enc")``, file stems).
_ALIASES = {
    "clip/image-enc": "clip-image-enc", "clip/text-enc": "clip-text-enc",
    "clip_image_enc": "clip-image-enc", "clip_text_enc": "clip-text-enc",
    "base_inpaint": "base-inpaint", "upsample_inpaint": "upsample-inpaint",
}
_CLIP_PAIR = "clip"  # load_model("clip") loads both CLIP halves as one NoisedClip


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


def _valid_names() -> str:
    return ", ".join([*OFFICIAL_CHECKPOINTS, f"{_CLIP_PAIR} (both CLIP halves)"])


def _official_key(name: str) -> str | None:
    """``base`` / ``openai:base`` / ``base_inpaint`` -> registry key; None if not official."""
    key = name.split(":", 1)[1] if name.startswith("openai:") else name
    key = _ALIASES.get(key, key)
    return key if key in OFFICIAL_CHECKPOINTS else None


def official_checkpoint(name: str) -> OfficialCheckpoint:
    """The registry entry for ``name`` (aliases and the ``openai:`` prefix accepted)."""
    key = _official_key(name)
    if key is None:
        raise CheckpointError(f"unknown official checkpoint {name!r}; valid names: {', '.join(OFFICIAL_CHECKPOINTS)}")
    return OFFICIAL_CHECKPOINTS[key]


def checkpoint_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder holding official checkpoints: ``cache_dir`` itself, else ``<glide cache>/checkpoints``.

    The glide cache is ``$GLIDE_CACHE``, else ``$XDG_CACHE_HOME/glide``, else ``~/.cache/glide``.
    """
    from .download import cache_dir as default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "checkpoints"


def official_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``glide download NAME`` puts the official checkpoint (it may not exist yet)."""
    return checkpoint_dir(cache_dir) / official_checkpoint(name).filename


def download_official(name: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Download an official checkpoint into the cache and return its path (a no-op if present).

    The download streams into ``<file>.part`` (resumed by the next call after an interruption),
    holds a file lock so two processes never fetch the same file, and appears under its final
    name only when complete. ``GLIDE_OFFLINE=1`` raises ``OfflineError`` naming the file.
    """
    from filelock import FileLock

    from .download import _download_locked, _refuse_if_offline

    ckpt = official_checkpoint(name)
    dest = official_path(name, cache_dir)
    if dest.is_file():
        return dest
    _refuse_if_offline(ckpt.url, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):  # the lock download.py uses for this destination
        if dest.is_file():  # another process finished it while we waited
            return dest
        return _download_locked(ckpt.url, dest, sha256=ckpt.sha256, progress=progress)


def list_checkpoints(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Official checkpoints with their download state, for ``glide models``."""
    rows = []
    for name, ckpt in OFFICIAL_CHECKPOINTS.items():
        path = official_path(name, cache_dir)
        converted = path.with_suffix(".safetensors")
        rows.append(dict(name=name, preset=ckpt.preset, url=ckpt.url, path=str(path),
                         downloaded=path.is_file() or converted.is_file(), converted=converted.is_file()))
    return rows


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The glide model inside DDP (``.module``) or ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def model_type_of(model: nn.Module) -> str:
    """The registry ``model_type`` of a glide model (``text2im``, ``clip``, ``classifier``, ...)."""
    from .models import _registry

    model = _unwrap(model)
    for model_type, (_, cls) in _registry().items():
        if type(model) is cls:
            return model_type
    for model_type, (_, cls) in _registry().items():
        if isinstance(model, cls):
            return model_type
    raise CheckpointError(f"{type(model).__name__} is not a glide model class; cannot store its config")


def config_dict_of(model: nn.Module) -> dict[str, Any]:
    """``model.config`` as the dict checkpoints store (with ``model_type``)."""
    model = _unwrap(model)
    return {**model.config.to_dict(), "model_type": model_type_of(model)}


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
    model = _unwrap(model)
    state = state_dict if state_dict is not None else model.state_dict()
    return save_state_dict(state, config_dict_of(model), path, metadata=metadata)


def save_state_dict(
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    path: str | Path,
    *,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write tensors plus a config dict (with ``model_type``) as a glide ``.safetensors``, atomically."""
    from safetensors.torch import save_file

    from . import __version__

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
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:  # 8-byte little-endian header size, then a JSON header
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read ``(state_dict, config dict or None)`` from a ``.safetensors`` or ``.pt`` file, safely.

    Tensors keep their stored dtype. ``.pt`` files go through ``torch.load(weights_only=True)``
    and must hold a flat ``{name: tensor}`` dict; anything that would need code to unpickle
    raises ``CheckpointError``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:
            raise CheckpointError(f"cannot read {path} as safetensors: {e}") from e
        return state, _parse_config(meta.get(CONFIG_KEY), path)
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


def _parse_config(raw: str | None, path: Path) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the {CONFIG_KEY} metadata is not valid JSON ({e})") from e
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(f"{path}: the {CONFIG_KEY} metadata has no 'model_type'")
    return config


def checkpoint_config(name_or_path: str | Path, *, weights: str = "ema", cache_dir=None) -> dict[str, Any] | None:
    """The config dict a checkpoint stores, read without its tensors.

    An official checkpoint without a stored config gives its preset's config; any other bare
    ``.pt`` gives None.
    """
    path, official = _resolve(name_or_path, weights, cache_dir)
    config = None
    if _is_safetensors(path):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            config = _parse_config((f.metadata() or {}).get(CONFIG_KEY), path)
    if config is None and official is not None:
        model_type, config_obj = _official_config(official)
        config = {**config_obj.to_dict(), "model_type": model_type}
    return config


# --------------------------------------------------------------------------------------------
# Finding the file
# --------------------------------------------------------------------------------------------
def resolve_checkpoint(
    name_or_path: str | Path, *, weights: str = "ema", cache_dir: str | Path | None = None
) -> Path:
    """The weights file a name, file path, checkpoint folder or run folder stands for."""
    path, _ = _resolve(name_or_path, weights, cache_dir)
    return path


def _resolve(name_or_path: str | Path, weights: str, cache_dir) -> tuple[Path, OfficialCheckpoint | None]:
    text = str(name_or_path)
    path = Path(name_or_path).expanduser()
    if not text.startswith("openai:"):
        if path.is_dir():
            return _pick_weights_file(_latest_step(path), weights), None
        if path.is_file():
            return path, None
    if text in (_CLIP_PAIR, f"openai:{_CLIP_PAIR}"):
        raise CheckpointError(
            "'clip' is a pair of official files (clip-image-enc, clip-text-enc): load it with load_clip(), "
            "or name one half"
        )
    key = _official_key(text)
    if key is not None:
        pt = official_path(key, cache_dir)
        for candidate in _official_candidates(key, cache_dir):
            if candidate.is_file():
                return candidate, OFFICIAL_CHECKPOINTS[key]
        raise CheckpointError(
            f"the official {key!r} checkpoint is not downloaded yet (looked for {pt}). "
            f"Fetch it with:  glide download {key}"
        )
    if path.suffix in _WEIGHT_SUFFIXES or os.sep in text or "/" in text:
        raise CheckpointError(f"checkpoint file not found: {path}")
    raise CheckpointError(
        f"unknown checkpoint {text!r}: not a file or folder, and not an official name. Valid names: {_valid_names()}"
    )


def _official_candidates(key: str, cache_dir) -> tuple[Path, Path]:
    pt = official_path(key, cache_dir)
    return pt.with_suffix(".safetensors"), pt  # `glide convert` output first


def _missing_official(spec: str | Path, cache_dir) -> str | None:
    """The official name ``spec`` stands for, if that checkpoint is not in the cache yet."""
    key = _official_key(str(spec))
    if key is None or Path(spec).exists() or any(p.is_file() for p in _official_candidates(key, cache_dir)):
        return None
    return key


def _latest_step(folder: Path) -> Path:
    """A training run (``RUN/checkpoints/step-N``) or its ``checkpoints`` folder -> latest step folder."""
    steps_dir = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    steps = []
    for p in steps_dir.iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir() and any(p.glob("*.safetensors")):
            steps.append((int(m.group(1)), p))
    if steps:
        return max(steps)[1]
    if steps_dir is not folder:
        raise CheckpointError(f"training run {folder} has no saved checkpoints yet (nothing in {steps_dir})")
    return folder


def _ema_rate(p: Path) -> float | None:
    try:
        return float(p.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _pick_weights_file(folder: Path, weights: str) -> Path:
    """``weights``: ``ema`` (slowest EMA, else the raw weights), ``model``, ``ema-0.999`` or ``0.999``."""
    emas = sorted((r, p) for p in folder.glob("ema-*.safetensors") if (r := _ema_rate(p)) is not None)
    files = sorted(folder.glob("*.safetensors"))
    if weights == "ema" and emas:
        target = emas[-1][1]  # the slowest-moving average
    elif weights in ("ema", "model"):
        target = folder / "model.safetensors"
        if not target.exists() and len(files) == 1:  # a folder holding a single checkpoint
            target = files[0]
    else:
        stem = weights[: -len(".safetensors")] if weights.endswith(".safetensors") else weights
        target = folder / f"{stem}.safetensors"
        if not target.exists() and _ema_rate(Path(f"ema-{stem}")) is not None:
            target = folder / f"ema-{stem}.safetensors"
    if not target.is_file():
        options = [p.stem for p in files]
        raise CheckpointError(
            f"{folder} has no {target.name} (weights={weights!r}); it holds: {options or 'no .safetensors files'}"
        )
    return target


# --------------------------------------------------------------------------------------------
# Matching a state dict to a model
# --------------------------------------------------------------------------------------------
@functools.cache
def _preset_shapes() -> dict[str, tuple[str, dict[str, tuple[int, ...]]]]:
    """Every preset's (model_type, {key: shape}), from models built on the meta device (cheap)."""
    out = {}
    for name, preset in PRESETS.items():
        model = _meta_model(preset.model_type, preset.config())
        out[name] = (preset.model_type, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    return out


def _closest_preset(state: dict[str, torch.Tensor]) -> tuple[str, int, int, int]:
    """(preset, keys in common, keys in either, common keys with equal shapes) of the closest preset."""
    best = ("", -1, 1, -1)
    for name, (_, shapes) in _preset_shapes().items():
        common = shapes.keys() & state.keys()
        union = len(shapes.keys() | state.keys())
        same_shape = sum(shapes[k] == tuple(state[k].shape) for k in common)
        if (len(common) / union, same_shape) > (best[1] / best[2], best[3]):
            best = (name, len(common), union, same_shape)
    return best


def _looks_like(state: dict[str, torch.Tensor]) -> str:
    hint = ""
    prefixes = {k.split(".", 1)[0] for k in state}
    if len(prefixes) == 1 and (prefix := prefixes.pop()) in ("module", "_orig_mod", "model"):
        state = {k.split(".", 1)[1]: v for k, v in state.items() if "." in k}
        hint = f"after removing the {prefix + '.'!r} prefix every key carries (saved from a wrapper?), "
    name, common, union, same_shape = _closest_preset(state)
    where = f"official {name!r} model" if name in OFFICIAL_CHECKPOINTS else f"{name!r} preset"
    if common == union and same_shape == common:
        use = "" if name in OFFICIAL_CHECKPOINTS else f" (load it with config={name!r})"
        return f"{hint}its keys and shapes are exactly those of the {where}{use}"
    if common <= 0:
        return f"{hint}its keys look like none of the glide presets"
    return (f"{hint}its keys look most like the {where} ({common} of {union} keys in common, "
            f"{same_shape} of those with equal shapes)")


def describe_mismatch(state: dict[str, torch.Tensor], model: nn.Module | None = None) -> str:
    """Name the first missing/unexpected/misshapen keys and the glide model the keys look most like."""
    parts = []
    if model is not None:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                 for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing:
            parts.append(f"{len(missing)} missing keys, first: {missing[:4]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first: {unexpected[:4]}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (checkpoint vs model), first: {wrong[:3]}")
    parts.append(_looks_like(state))
    return "; ".join(parts)


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    expected = model.state_dict()
    return expected.keys() == state.keys() and all(tuple(expected[k].shape) == tuple(state[k].shape) for k in state)


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    if not _fits(model, state):
        raise CheckpointError(f"{what} does not fit {type(model).__name__}: {describe_mismatch(state, model)}")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``load_state_dict(strict=True)`` into an existing model, with an error that says what does not fit."""
    _check_fits(model, state, "checkpoint")
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------------------------
# Building models from checkpoints
# --------------------------------------------------------------------------------------------
def _official_config(ckpt: OfficialCheckpoint) -> tuple[str, Any]:
    return ckpt.model_type, preset_config(ckpt.preset)


def _guess_config(state: dict[str, torch.Tensor], path: Path) -> tuple[str, Any]:
    """For a file with no glide config: the official model whose keys and shapes it has exactly."""
    for ckpt in OFFICIAL_CHECKPOINTS.values():
        _, shapes = _preset_shapes()[ckpt.preset]
        if shapes.keys() == state.keys() and all(shapes[k] == tuple(state[k].shape) for k in state):
            return _official_config(ckpt)
    raise CheckpointError(
        f"{path} has no glide config and is not an official model ({describe_mismatch(state)}). "
        "Pass config= (a preset name, config dict or config object), or save it with glide.save_model."
    )


def _clip_type_from_keys(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("image_encoder.") for k in state):
        return "clip"
    return "clip-text-enc" if "blocks.input.w_voc" in state else "clip-image-enc"


def _explicit_config(config: Any, state: dict[str, torch.Tensor], file_config: dict | None) -> tuple[str, Any]:
    """``config=`` given to a loader: a preset name, a config dict with model_type, or a config object."""
    from .models.clip import ClipConfig

    if isinstance(config, str):
        config_obj = preset_config(config)
        return config_obj.model_type, config_obj
    if isinstance(config, dict):
        if "model_type" not in config:
            raise CheckpointError("a config dict passed as config= needs a 'model_type' key")
        return config["model_type"], config_from_dict(config)
    if isinstance(config, ClipConfig):  # one config class for the two encoders and the pair
        if file_config is not None and file_config["model_type"].startswith("clip"):
            return file_config["model_type"], config
        return _clip_type_from_keys(state), config
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise CheckpointError(f"cannot tell the model type of config {type(config).__name__}")
    return model_type, config


def _config_for(state, file_config, official, path, config=None) -> tuple[str, Any]:
    if config is not None:
        return _explicit_config(config, state, file_config)
    if file_config is not None:
        try:
            return file_config["model_type"], config_from_dict(file_config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: the stored config cannot be rebuilt: {e}") from e
    if official is not None:
        return _official_config(official)
    return _guess_config(state, path)


_RANDOM_INITS = (torch.Tensor.normal_, torch.Tensor.uniform_, nn.init.normal_, nn.init.uniform_,
                 nn.init.trunc_normal_, nn.init.kaiming_uniform_, nn.init.kaiming_normal_)


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Make random initialisation of meta tensors a no-op (it means nothing there).

    Their meta kernels are Python decompositions: ~1 ms per tensor, and the first ``normal_``
    imports torch._refs, dynamo and sympy (seconds per process), for values a checkpoint replaces.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RANDOM_INITS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def _meta_model(model_type: str, config: Any) -> nn.Module:
    """The model with every tensor on the meta device: no memory, no init; for shapes and loading."""
    with torch.device("meta"), _SkipMetaInit():
        return build_model(config, model_type=model_type)


def _owned(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``v`` as a dense tensor of ``dtype`` that owns its memory (fit to become a parameter)."""
    out = v.to(dtype) if v.dtype != dtype else v
    if not out.is_contiguous() or out.storage_offset() or out.untyped_storage().nbytes() != out.nbytes:
        out = out.clone(memory_format=torch.contiguous_format)
    return out


def _materialize(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Fill a meta-device ``model`` with ``state`` (checked already) and rebuild unsaved buffers, on CPU."""
    expected = model.state_dict()
    state = {k: _owned(v, expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are still on meta: give them storage, then let their modules refill them.
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.empty_like(buf, device="cpu")
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: {type(model).__name__} has tensors no checkpoint or reset fills: {left[:4]}")
    return model


def _finish(model: nn.Module, device, dtype: torch.dtype | None) -> nn.Module:
    model = model.to(device).eval()
    if dtype is not None and dtype != torch.float32:
        if dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be torch.float32, float16 or bfloat16, got {dtype}")
        convert = getattr(model, "convert_to_half", None)
        if callable(convert):
            convert(dtype)  # the official half path: norms and embeddings MLPs stay float32
        else:  # CLIP: store the weights in half; its layers compute in the input's precision
            for p in model.parameters():
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
    return model


def load_model(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    weights: str = "ema",
    config: Any = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
) -> nn.Module:
    """Load any glide or official checkpoint as an eval-mode model on ``device``.

    ``weights`` picks inside a checkpoint folder: ``"ema"`` (default: the slowest EMA, falling
    back to the raw weights), ``"model"``, or a file stem such as ``"ema-0.999"``.
    ``dtype=torch.float16`` / ``torch.bfloat16`` converts to the half-precision path (norms stay
    float32). ``config`` (a preset name, config dict or config object) overrides the stored
    config, e.g. for a ``.pt`` of a non-official size. ``download=True`` fetches a missing
    official checkpoint instead of raising. ``"clip"`` loads the official CLIP pair (``load_clip``).
    """
    if str(name_or_path) in (_CLIP_PAIR, f"openai:{_CLIP_PAIR}"):
        return load_clip(device=device, dtype=dtype, cache_dir=cache_dir, download=download)
    if download and (key := _missing_official(name_or_path, cache_dir)):
        download_official(key, cache_dir)
    path, official = _resolve(name_or_path, weights, cache_dir)
    state, file_config = read_checkpoint(path)
    model_type, config_obj = _config_for(state, file_config, official, path, config)
    model = _meta_model(model_type, config_obj)
    what = f"the official {official.name!r} checkpoint {path}" if official else f"checkpoint {path}"
    _check_fits(model, state, what)
    return _finish(_materialize(model, state, what), device, dtype)


def load_clip(
    image: str | Path = "clip-image-enc",
    text: str | Path | None = None,
    *,
    config: Any = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | Path | None = None,
    download: bool = False,
) -> NoisedClip:
    """The noised CLIP pair (``NoisedClip``) from its two halves, or from one glide-saved file.

    ``image`` / ``text``: names or paths of the image- and text-encoder checkpoints (``text=None``
    means the official ``clip-text-enc``). If ``image`` is a glide-saved ``clip`` checkpoint (a
    whole NoisedClip, e.g. from the trainer) it is loaded alone and ``text`` must stay None.
    ``config`` (a ``ClipConfig`` or dict) is needed only for ``.pt`` halves of non-official size.
    """
    specs = (image, text or "clip-text-enc")
    missing = [key for spec in specs if (key := _missing_official(spec, cache_dir))]
    if download:
        for key in missing:
            download_official(key, cache_dir)
    elif len(missing) == 2:
        raise CheckpointError(
            f"the official CLIP checkpoints are not downloaded yet (looked in {checkpoint_dir(cache_dir)}). "
            f"Fetch them with:  glide download {' '.join(missing)}"
        )
    image_path, _ = _resolve(specs[0], "ema", cache_dir)
    image_state, image_config = read_checkpoint(image_path)
    if image_config is not None and image_config["model_type"] == "clip":
        if text is not None:
            raise CheckpointError(f"{image_path} holds a whole noised CLIP; do not pass text= as well")
        return load_model(image_path, device=device, dtype=dtype, config=config)
    text_path, _ = _resolve(specs[1], "ema", cache_dir)
    text_state, text_config = read_checkpoint(text_path)

    halves = {"image_encoder": (image_path, image_state, image_config, "clip-image-enc"),
              "text_encoder": (text_path, text_state, text_config, "clip-text-enc")}
    for arg, (path, _, file_config, wanted) in halves.items():
        if file_config is not None and file_config["model_type"] != wanted:
            raise CheckpointError(
                f"{path} is a {file_config['model_type']!r} checkpoint, but the {arg} needs a {wanted!r} one"
            )
    clip_config = _clip_config(config, image_config, text_config, image_path, text_path)
    model = _meta_model("clip", clip_config)
    for arg, (path, state, _, wanted) in halves.items():
        _check_fits(getattr(model, arg), state, f"{path} (given as the {wanted} half)")
    state = {f"{arg}.{k}": v for arg, (_, half_state, _, _) in halves.items() for k, v in half_state.items()}
    return _finish(_materialize(model, state, f"CLIP from {image_path} and {text_path}"), device, dtype)


def _clip_config(config, image_config, text_config, image_path, text_path):
    from .models.clip import ClipConfig, official_clip_config

    if config is not None:
        return config if isinstance(config, ClipConfig) else ClipConfig.from_dict(config)
    configs = [c for c in (image_config, text_config) if c is not None]
    if not configs:
        return official_clip_config()
    built = [ClipConfig.from_dict(c) for c in configs]
    if len(built) == 2 and built[0] != built[1]:
        raise CheckpointError(f"the CLIP halves {image_path} and {text_path} were saved with different configs")
    return built[0]


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------
def convert_checkpoint(
    src: str | Path,
    dst: str | Path | None = None,
    *,
    config: Any = None,
    weights: str = "ema",
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """An official ``.pt`` (or any checkpoint) -> ``.safetensors`` with the config in its metadata.

    Tensors keep their stored dtype (the official float16 files stay float16). The keys and
    shapes are checked against the model first, so a converted file always loads. ``dst``
    defaults to ``src`` with a ``.safetensors`` suffix (for an official name: beside it in the
    cache, where ``load_model(NAME)`` finds it first). Never overwrites ``src``, nor an existing
    ``dst`` unless ``overwrite=True``.
    """
    path, official = _resolve(src, weights, cache_dir)
    if official is not None and official_path(official.name, cache_dir).is_file():
        path = official_path(official.name, cache_dir)  # the downloaded .pt, even once converted
    dst = Path(dst).expanduser() if dst is not None else path.with_suffix(".safetensors")
    if dst.exists() and dst.resolve() == path.resolve():
        raise CheckpointError(f"refusing to overwrite the source {path}; pass another destination")
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; pass overwrite=True (glide convert --force) to replace it")
    state, file_config = read_checkpoint(path)
    model_type, config_obj = _config_for(state, file_config, official, path, config)
    _check_fits(_meta_model(model_type, config_obj), state, f"checkpoint {path}")
    config_dict = {**config_obj.to_dict(), "model_type": model_type}
    return save_state_dict(state, config_dict, dst, metadata={"glide_converted_from": path.name})
