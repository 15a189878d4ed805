"""Loading models from any checkpoint: official names, files, checkpoint and run folders,
``random:PRESET``; the noised-CLIP pair; conversion to ``.safetensors``.

``load_model`` accepts:

* an official name (``base``, ``upsample``, ``base-inpaint``, ``upsample-inpaint``,
  ``clip-image-enc``, ``clip-text-enc``, optionally as ``openai:base``; fetched with
  ``glide download NAME``), or ``clip`` for the noised-CLIP pair (see ``load_clip``);
* a path to a ``.pt`` or ``.safetensors`` file;
* a checkpoint folder (``model.safetensors`` and optional ``ema-<rate>.safetensors``);
* a training run folder (``RUN/checkpoints/step-<N>/``: its latest complete step);
* ``bundled:NAME``: a model shipped inside the package, ``glide/bundled/NAME.safetensors``;
* ``random:PRESET``: a randomly initialised preset, the same weights every time, marked with
  ``model.random_weights = True`` (see ``is_random``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import CheckpointError, SpecError
from ..models import PRESETS, ModelConfig, build_model, config_from_dict, preset_config
from . import files
from .fit import check_fits, guess_config, materialize, meta_model, official_config
from .registry import (
    CLIP_HALVES,
    CLIP_PAIR,
    OFFICIAL_CHECKPOINTS,
    OPENAI_PREFIX,
    OfficialCheckpoint,
    checkpoint_dir,
    download_command,
    download_official,
    missing_official,
    official_candidates,
    official_key,
    official_path,
    valid_names,
)

if TYPE_CHECKING:
    from ..models.clip import NoisedClip

RANDOM_PREFIX = "random:"
BUNDLED_PREFIX = "bundled:"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "bundled"  # package data: glide/bundled/*.safetensors
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


# --------------------------------------------------------------------------------------------
# Finding the file and its config
# --------------------------------------------------------------------------------------------
def resolve_weights_file(
    name_or_path: str | Path, *, weights: str = "ema", cache_dir: str | Path | None = None
) -> Path:
    """The weights file a name, file path, checkpoint folder or run folder stands for."""
    path, _ = _resolve(name_or_path, weights, cache_dir)
    return path


def bundled_names() -> list[str]:
    """The models shipped inside the package, loadable as ``bundled:NAME``."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.safetensors"))


def bundled_path(spec: str) -> Path:
    """``bundled:NAME`` -> ``glide/bundled/NAME.safetensors``; an unknown NAME raises ``CheckpointError``."""
    name = str(spec)[len(BUNDLED_PREFIX):] if str(spec).startswith(BUNDLED_PREFIX) else str(spec)
    path = BUNDLED_DIR / f"{name}.safetensors"
    if "/" in name or os.sep in name or not path.is_file():
        raise CheckpointError(f"no bundled model {name!r}; bundled models: {', '.join(bundled_names()) or 'none'}")
    return path


def _resolve(name_or_path: str | Path, weights: str, cache_dir) -> tuple[Path, OfficialCheckpoint | None]:
    text = str(name_or_path)
    if text.startswith(BUNDLED_PREFIX):
        return bundled_path(text), None
    path = Path(name_or_path).expanduser()
    if not text.startswith(OPENAI_PREFIX):
        if path.is_dir():
            return files.pick_weights_file(files.checkpoint_folder(path), weights), None
        if path.is_file():
            return path, None
    if text in (CLIP_PAIR, OPENAI_PREFIX + CLIP_PAIR):
        raise CheckpointError(
            "'clip' is a pair of official files (clip-image-enc, clip-text-enc): load it with load_clip(), "
            "or name one half"
        )
    key = official_key(text)
    if key is not None:
        for candidate in official_candidates(key, cache_dir):
            if candidate.is_file():
                return candidate, OFFICIAL_CHECKPOINTS[key]
        raise CheckpointError(
            f"the official {key!r} checkpoint is not downloaded yet (looked for {official_path(key, cache_dir)}). "
            f"Fetch it with:  glide download {key}"
        )
    if path.suffix in _WEIGHT_SUFFIXES or os.sep in text or "/" in text:
        raise CheckpointError(f"checkpoint file not found: {path}")
    raise CheckpointError(
        f"unknown checkpoint {text!r}: not a file or folder, and not an official name. Valid names: {valid_names()}"
    )


def random_preset(spec: str) -> str | None:
    """``random:tiny-base`` -> ``tiny-base`` (checked against the presets); None for other specs."""
    if not str(spec).startswith(RANDOM_PREFIX):
        return None
    preset = str(spec)[len(RANDOM_PREFIX):]
    if preset not in PRESETS:
        raise SpecError(f"unknown preset {preset!r} in {spec!r}; valid presets: {', '.join(PRESETS)}")
    return preset


def checkpoint_config(name_or_path: str | Path, *, weights: str = "ema", cache_dir=None) -> dict[str, Any] | None:
    """The config dict a checkpoint stores, read from the file header without its tensors.

    An official checkpoint gives its preset's config (even before it is downloaded), and
    ``random:PRESET`` the preset's; any other bare ``.pt`` gives None.
    """
    preset = random_preset(name_or_path)
    if preset is not None:
        return preset_config(preset).to_dict()
    key = official_key(str(name_or_path))
    if key is not None and missing_official(name_or_path, cache_dir):
        return official_config(OFFICIAL_CHECKPOINTS[key]).to_dict()
    path, official = _resolve(name_or_path, weights, cache_dir)
    config = files.read_file_config(path)
    if config is None and official is not None:
        config = official_config(official).to_dict()
    return config


def checkpoint_sampling(name_or_path: str | Path, *, weights: str = "ema", cache_dir=None) -> dict[str, Any] | None:
    """The recommended sampling a checkpoint's header records (see ``glide convert --sampler``), or
    None: presets, official checkpoints and files without one use the library's default recipe."""
    if random_preset(name_or_path) is not None or official_key(str(name_or_path)) is not None:
        return None
    path, _ = _resolve(name_or_path, weights, cache_dir)
    return files.read_sampling(path)


def _clip_type_from_keys(state: dict[str, torch.Tensor]) -> str:
    if any(k.startswith("image_encoder.") for k in state):
        return "clip"
    return "clip-text-enc" if "blocks.input.w_voc" in state else "clip-image-enc"


def _explicit_config(config: Any, state: dict[str, torch.Tensor], file_config: dict | None) -> ModelConfig:
    """``config=`` given to a loader: a preset name, a config dict with model_type, or a config object."""
    from ..models.clip import ClipConfig

    if isinstance(config, str):
        return preset_config(config)
    if isinstance(config, dict):
        if "model_type" not in config:
            raise CheckpointError("a config dict passed as config= needs a 'model_type' key")
        return config_from_dict(config)
    if isinstance(config, ClipConfig):  # one config class for the two encoders and the pair
        if file_config is not None and file_config["model_type"].startswith("clip"):
            return config.as_type(file_config["model_type"])
        return config.as_type(_clip_type_from_keys(state))
    if not isinstance(config, ModelConfig):
        raise CheckpointError(f"config= must be a preset name, a config dict or a ModelConfig, "
                              f"not {type(config).__name__}")
    return config


def _config_for(state, file_config, official, path, config=None) -> ModelConfig:
    if config is not None:
        return _explicit_config(config, state, file_config)
    if file_config is not None:
        try:
            return config_from_dict(file_config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: the stored config cannot be rebuilt: {e}") from e
    if official is not None:
        return official_config(official)
    return guess_config(state, path)


# --------------------------------------------------------------------------------------------
# Building models
# --------------------------------------------------------------------------------------------
def _finish(model: nn.Module, device, dtype: torch.dtype | None) -> nn.Module:
    return to_precision(model.to(device).eval(), dtype)


def to_precision(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``model`` (float32) on the half path of ``dtype`` (float16 / bfloat16: norms and embedding
    MLPs stay float32), in place; float32 or None leaves it as it is."""
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


def mark_random(model: nn.Module) -> nn.Module:
    """Mark ``model`` as randomly initialised (untrained): the CLI prints RANDOM WEIGHTS for it."""
    model.random_weights = True
    return model


def is_random(model: nn.Module) -> bool:
    """True for a model built by ``random:PRESET`` (or marked with ``mark_random``)."""
    return bool(getattr(model, "random_weights", False))


def seeded_build(config: ModelConfig) -> nn.Module:
    """A randomly initialised model, the same weights every time (seed 0, global RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return mark_random(build_model(config))


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
    """Load any glide or official checkpoint (or ``random:PRESET``) as an eval-mode model on ``device``.

    ``weights`` picks inside a checkpoint folder: ``"ema"`` (default: the slowest EMA, falling
    back to the raw weights), ``"model"``, or a file stem such as ``"ema-0.999"``.
    ``dtype=torch.float16`` / ``torch.bfloat16`` converts to the half-precision path (norms stay
    float32). ``config`` (a preset name, config dict or config object) overrides the stored
    config, e.g. for a ``.pt`` of a non-official size. ``download=True`` fetches a missing
    official checkpoint instead of raising. ``"clip"`` loads the official CLIP pair (``load_clip``).
    """
    if str(name_or_path) in (CLIP_PAIR, OPENAI_PREFIX + CLIP_PAIR):
        return load_clip(device=device, dtype=dtype, cache_dir=cache_dir, download=download)
    preset = random_preset(name_or_path)
    if preset is not None:
        return _finish(seeded_build(preset_config(preset)), device, dtype)
    if download and (key := missing_official(name_or_path, cache_dir)):
        download_official(key, cache_dir)
    path, official = _resolve(name_or_path, weights, cache_dir)
    state, file_config = files.read_checkpoint(path)
    model = meta_model(_config_for(state, file_config, official, path, config))
    what = f"the official {official.name!r} checkpoint {path}" if official else f"checkpoint {path}"
    check_fits(model, state, what)
    model = _finish(materialize(model, state, what), device, dtype)
    model.recommended_sampling = files.read_sampling(path)  # glide.pipelines samples with it by default
    return model


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
    specs = (image, text or CLIP_HALVES[1])
    missing = [key for spec in specs if (key := missing_official(spec, cache_dir))]
    if download:
        for key in missing:
            download_official(key, cache_dir)
    elif len(missing) == 2:
        raise CheckpointError(
            f"the official CLIP checkpoints are not downloaded yet (looked in {checkpoint_dir(cache_dir)}). "
            f"Fetch them with:  {download_command(missing)}"
        )
    image_path, _ = _resolve(specs[0], "ema", cache_dir)
    image_state, image_config = files.read_checkpoint(image_path)
    if image_config is not None and image_config["model_type"] == "clip":
        if text is not None:
            raise CheckpointError(f"{image_path} holds a whole noised CLIP; do not pass text= as well")
        return load_model(image_path, device=device, dtype=dtype, config=config)
    text_path, _ = _resolve(specs[1], "ema", cache_dir)
    text_state, text_config = files.read_checkpoint(text_path)

    halves = {"image_encoder": (image_path, image_state, image_config, CLIP_HALVES[0]),
              "text_encoder": (text_path, text_state, text_config, CLIP_HALVES[1])}
    for arg, (path, _, file_config, wanted) in halves.items():
        if file_config is not None and file_config["model_type"] != wanted:
            raise CheckpointError(
                f"{path} is a {file_config['model_type']!r} checkpoint, but the {arg} needs a {wanted!r} one"
            )
    clip_config = _clip_config(config, image_config, text_config, image_path, text_path)
    model = meta_model(clip_config.as_type("clip"))
    for arg, (path, state, _, wanted) in halves.items():
        check_fits(getattr(model, arg), state, f"{path} (given as the {wanted} half)")
    state = {f"{arg}.{k}": v for arg, (_, half_state, _, _) in halves.items() for k, v in half_state.items()}
    return _finish(materialize(model, state, f"CLIP from {image_path} and {text_path}"), device, dtype)


def _clip_config(config, image_config, text_config, image_path, text_path):
    from ..models.clip import ClipConfig, official_clip_config

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
    half: bool = False,
    sampling: dict[str, Any] | None = None,
) -> Path:
    """An official ``.pt`` (or any checkpoint) -> ``.safetensors`` with the config in its metadata.

    Tensors keep their stored dtype (the official float16 files stay float16); ``half=True``
    stores float32 tensors as float16 (half the size; loading upcasts them again). ``sampling``
    (``{"sampler", "timesteps", "guidance_scale"}``) is recorded in the header as the model's
    recommended sampling, which the pipelines and ``glide sample`` use by default. The keys and
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
    state, file_config = files.read_checkpoint(path)
    config_obj = _config_for(state, file_config, official, path, config)
    check_fits(meta_model(config_obj), state, f"checkpoint {path}")
    if half:
        state = {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}
    metadata = {"glide_converted_from": path.name}
    if sampling is not None:
        metadata[files.SAMPLING_KEY] = json.dumps(dict(sampling))
    return files.save_state_dict(state, config_obj.to_dict(), dst, metadata=metadata)
