"""Every named model preset, in one table: ``PRESETS[name] -> Preset(model_type, fields)``.

The official GLIDE (filtered) sizes, the noised CLIP and noisy classifier sizes, and tiny
versions of each for tests, demos and CPU experiments. Sampling (``random:NAME``), training
(``glide train --model NAME``), ``glide models``, checkpoint diagnosis and the official-API
defaults in ``glide.compat`` all read this table.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .config import ModelConfig


@dataclass(frozen=True)
class Preset:
    """A named model: its ``model_type`` and the config fields that differ from the defaults."""

    name: str
    model_type: str
    fields: Mapping[str, Any]

    def config(self, **overrides: Any) -> ModelConfig:
        """A fresh config of this preset with ``overrides`` applied (unknown keys raise ``ValueError``)."""
        from . import config_from_dict

        return config_from_dict({**copy.deepcopy(dict(self.fields)), **overrides, "model_type": self.model_type})

    @property
    def description(self) -> str:
        """One line for listings, e.g. ``base, 64 px, 192 channels``."""
        return self.config().describe()


# The official options (glide_text2im.model_creation defaults); channel_mult is derived from size.
_OFFICIAL_BASE = dict(
    image_size=64, num_channels=192, num_res_blocks=3, num_heads=1, num_head_channels=64,
    num_heads_upsample=-1, attention_resolutions=(32, 16, 8), dropout=0.1, text_ctx=128,
    xf_width=512, xf_layers=16, xf_heads=8, xf_final_ln=True, xf_padding=True,
    use_scale_shift_norm=True, resblock_updown=True, noise_schedule="squaredcos_cap_v2",
)
_OFFICIAL_UPSAMPLE = dict(_OFFICIAL_BASE, image_size=256, num_res_blocks=2, noise_schedule="linear", super_res=True)

# Tiny shapes (the reference fixtures' sizes): seconds on a CPU, for tests and the offline demo.
# 8 GroupNorm groups of 4 channels: with the official 32 groups, 32 channels make an instance norm
# that hides each channel's image mean from the output layer (trained models sample tinted images).
_TINY = dict(
    num_channels=32, num_res_blocks=1, num_head_channels=16, attention_resolutions=(16, 8),
    text_ctx=48, xf_width=32, xf_layers=1, xf_heads=2, dropout=0.0, norm_groups=8,
    n_vocab=257, tokenizer={"kind": "bytes"},  # no vocabulary download needed
)
_TINY_BASE = dict(_OFFICIAL_BASE, **_TINY, channel_mult=(1, 2, 2))
_TINY_UPSAMPLE = dict(_OFFICIAL_UPSAMPLE, **_TINY, image_size=128, channel_mult=(1, 1, 2))

_TABLE: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("text2im", _OFFICIAL_BASE),
    "upsample": ("text2im", _OFFICIAL_UPSAMPLE),
    "base-inpaint": ("text2im", dict(_OFFICIAL_BASE, inpaint=True)),
    "upsample-inpaint": ("text2im", dict(_OFFICIAL_UPSAMPLE, inpaint=True)),
    # ClipConfig's defaults are the official noised CLIP (clip/config.yaml).
    "clip-image-enc": ("clip-image-enc", {}),
    "clip-text-enc": ("clip-text-enc", {}),
    "clip": ("clip", {}),
    "classifier": ("classifier", dict(image_size=64, num_channels=128, num_res_blocks=2,
                                      attention_resolutions=(32, 16, 8), num_head_channels=64)),
    "tiny-base": ("text2im", _TINY_BASE),
    "tiny-upsample": ("text2im", _TINY_UPSAMPLE),
    "tiny-base-inpaint": ("text2im", dict(_TINY_BASE, inpaint=True)),
    "tiny-upsample-inpaint": ("text2im", dict(_TINY_UPSAMPLE, inpaint=True)),
    # Byte tokens, so no vocabulary download; `glide sample --clip random` resizes it to the base's size.
    "tiny-clip": ("clip", dict(image_size=32, patch_size=4, n_embd=64, n_head_state_text=16, n_head_text=2,
                               n_xf_blocks_text=2, n_head_state_image=16, n_head_image=2, n_xf_blocks_image=2,
                               n_vocab=257, max_text_len=128, tokenizer={"kind": "bytes"})),
    "tiny-classifier": ("classifier", dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2),
                                           attention_resolutions=(16, 8), num_head_channels=16)),
    # The attribute classifier of the shapes domain (glide.evaluation), bundled as bundled:shapes-judge.
    "shapes-judge": ("shapes-judge", {}),
}

PRESETS: Mapping[str, Preset] = MappingProxyType({
    name: Preset(name, model_type, MappingProxyType(fields)) for name, (model_type, fields) in _TABLE.items()
})


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named preset (``base``, ``tiny-base``, ``clip-image-enc``, ``tiny-classifier``, ...)."""
    return get_preset(name).config(**overrides)


def preset_names(*model_types: str) -> list[str]:
    """The preset names, in table order; only those of ``model_types`` when given (e.g. ``"text2im"``)."""
    return [name for name, p in PRESETS.items() if not model_types or p.model_type in model_types]
