"""Model zoo: config dataclasses, ``nn.Module``s, and the registry that rebuilds a model from its
saved config dict (``{"model_type": ..., **fields}``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .presets import PRESETS, preset_config
from .text2im import Text2ImConfig, Text2ImUNet, TextEmbedding


def _registry() -> dict[str, tuple[type, Any]]:
    # Imported lazily so that importing glide.models stays cheap.
    from . import clip
    from .classifier import ClassifierConfig, NoisyClassifier

    return {
        "text2im": (Text2ImConfig, Text2ImUNet),
        "clip-image-enc": (clip.ClipConfig, clip.ClipImageEncoder),
        "clip-text-enc": (clip.ClipConfig, clip.ClipTextEncoder),
        "clip": (clip.ClipConfig, clip.NoisedClip),
        "classifier": (ClassifierConfig, NoisyClassifier),
    }


MODEL_TYPES = ("text2im", "clip-image-enc", "clip-text-enc", "clip", "classifier")


def config_from_dict(d: dict[str, Any]):
    """Rebuild a config dataclass from its ``to_dict()`` form (which carries ``model_type``)."""
    model_type = d.get("model_type")
    registry = _registry()
    if model_type not in registry:
        raise ValueError(f"config has unknown model_type {model_type!r}; known: {', '.join(registry)}")
    config_cls, _ = registry[model_type]
    return config_cls.from_dict({k: v for k, v in d.items() if k != "model_type"})


def build_model(config, model_type: str | None = None) -> nn.Module:
    """Instantiate a model from a config dataclass or a config dict (randomly initialised)."""
    if isinstance(config, dict):
        model_type = model_type or config.get("model_type")
        config = config_from_dict({**config, "model_type": model_type})
    model_type = model_type or getattr(config, "model_type", None)
    registry = _registry()
    if model_type not in registry:
        raise ValueError(f"unknown model_type {model_type!r}; known: {', '.join(registry)}")
    return registry[model_type][1](config)


def build_preset(name: str, **overrides) -> nn.Module:
    """A randomly initialised model of a named preset (see ``PRESETS``)."""
    config = preset_config(name, **overrides)
    return build_model(config, model_type=name if name.startswith("clip-") else None)


__all__ = [
    "MODEL_TYPES", "PRESETS", "Text2ImConfig", "Text2ImUNet", "TextEmbedding",
    "build_model", "build_preset", "config_from_dict", "preset_config",
]
