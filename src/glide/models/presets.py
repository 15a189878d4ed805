"""Named model presets: the official GLIDE (filtered) sizes, plus tiny ones for tests and demos."""

from __future__ import annotations

from typing import Any

from .text2im import Text2ImConfig

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

TEXT2IM_PRESETS: dict[str, dict[str, Any]] = {
    "base": _OFFICIAL_BASE,
    "upsample": _OFFICIAL_UPSAMPLE,
    "base-inpaint": dict(_OFFICIAL_BASE, inpaint=True),
    "upsample-inpaint": dict(_OFFICIAL_UPSAMPLE, inpaint=True),
    "tiny-base": dict(_OFFICIAL_BASE, **_TINY, channel_mult=(1, 2, 2)),
    "tiny-upsample": dict(_OFFICIAL_UPSAMPLE, **_TINY, image_size=128, channel_mult=(1, 1, 2)),
    "tiny-base-inpaint": dict(_OFFICIAL_BASE, **_TINY, channel_mult=(1, 2, 2), inpaint=True),
    "tiny-upsample-inpaint": dict(_OFFICIAL_UPSAMPLE, **_TINY, image_size=128, channel_mult=(1, 1, 2), inpaint=True),
}

CLIP_PRESETS = ("clip-image-enc", "clip-text-enc")
PRESETS = tuple(TEXT2IM_PRESETS) + CLIP_PRESETS


def preset_config(name: str, **overrides):
    """The config of a named preset (``base``, ``upsample``, ``clip-image-enc``, ``tiny-base``, ...)."""
    if name in TEXT2IM_PRESETS:
        return Text2ImConfig(**{**TEXT2IM_PRESETS[name], **overrides})
    if name in CLIP_PRESETS:
        from .clip import official_clip_config

        config = official_clip_config()
        return config.replace(**overrides) if overrides else config
    raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
