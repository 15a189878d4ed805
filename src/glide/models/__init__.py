"""Model zoo: config dataclasses, ``nn.Module``s, the preset table, and the registry that rebuilds
a model from its saved config dict (``{"model_type": ..., **fields}``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .config import ModelConfig
from .presets import PRESETS, Preset, get_preset, preset_config, preset_names
from .text2im import Text2ImConfig, Text2ImUNet, TextEmbedding
from .winograd import use_winograd


def _lookup(model_type: Any) -> tuple[type[ModelConfig], type[nn.Module]]:
    """model_type -> (config class, model class): the one table of model types."""
    # Imported lazily so that importing glide.models stays cheap.
    from . import clip
    from .classifier import ClassifierConfig, NoisyClassifier
    from .judge import JudgeConfig, ShapesJudge

    classes = {
        "text2im": (Text2ImConfig, Text2ImUNet),
        "clip-image-enc": (clip.ClipConfig, clip.ClipImageEncoder),
        "clip-text-enc": (clip.ClipConfig, clip.ClipTextEncoder),
        "clip": (clip.ClipConfig, clip.NoisedClip),
        "classifier": (ClassifierConfig, NoisyClassifier),
        "shapes-judge": (JudgeConfig, ShapesJudge),
    }
    if model_type not in classes:
        raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(classes)}")
    return classes[model_type]


def config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """Rebuild a config dataclass from its ``to_dict()`` form (which carries ``model_type``)."""
    config_cls, _ = _lookup(d.get("model_type"))
    return config_cls.from_dict(d)


def build_model(config: ModelConfig | Mapping[str, Any], model_type: str | None = None) -> nn.Module:
    """A randomly initialised model from a config object or dict; ``model_type`` (optional) picks
    another of the modules the config can describe (e.g. ``"clip"`` for a CLIP encoder's config)."""
    if isinstance(config, Mapping):
        config = config_from_dict({**config, **({"model_type": model_type} if model_type else {})})
    elif model_type is not None and model_type != config.model_type:
        config = config.replace(model_type=model_type)  # raises if the config class cannot describe it
    return _lookup(config.model_type)[1](config)


def build_preset(name: str, **overrides: Any) -> nn.Module:
    """A randomly initialised model of a named preset (see ``PRESETS``)."""
    return build_model(preset_config(name, **overrides))


__all__ = [
    "PRESETS", "ModelConfig", "Preset", "Text2ImConfig", "Text2ImUNet", "TextEmbedding", "build_model",
    "build_preset", "config_from_dict", "get_preset", "preset_config", "preset_names", "use_winograd",
]
