"""Drop-in layer for the official ``glide_text2im`` notebook API.

Replace ``from glide_text2im.download import load_checkpoint`` and
``from glide_text2im.model_creation import (create_model_and_diffusion, model_and_diffusion_defaults,
model_and_diffusion_defaults_upsampler)`` (and ``glide_text2im.clip.model_creation.create_clip_model``)
with imports from here; the rest of the notebooks runs unchanged. Everything is a thin wrapper of
glide's own models, diffusion and samplers.
"""

from __future__ import annotations

from typing import Any

from .models.text2im import Text2ImConfig

# Options of the official model_and_diffusion_defaults() that are not model-shape fields.
_DIFFUSION_KEYS = ("diffusion_steps", "noise_schedule", "timestep_respacing")
_RUNTIME_KEYS = ("use_fp16", "cache_text_emb")


def model_and_diffusion_defaults() -> dict[str, Any]:
    """The official base-model options (64 px), as a fresh dict."""
    return dict(
        image_size=64, num_channels=192, num_res_blocks=3, channel_mult="", num_heads=1,
        num_head_channels=64, num_heads_upsample=-1, attention_resolutions="32,16,8", dropout=0.1,
        text_ctx=128, xf_width=512, xf_layers=16, xf_heads=8, xf_final_ln=True, xf_padding=True,
        diffusion_steps=1000, noise_schedule="squaredcos_cap_v2", timestep_respacing="",
        use_scale_shift_norm=True, resblock_updown=True, use_fp16=True, cache_text_emb=False,
        inpaint=False, super_res=False,
    )


def model_and_diffusion_defaults_upsampler() -> dict[str, Any]:
    """The official upsampler options (64 -> 256 px), as a fresh dict."""
    return dict(model_and_diffusion_defaults(), image_size=256, num_res_blocks=2,
                noise_schedule="linear", super_res=True)


def config_from_options(options: dict[str, Any]) -> Text2ImConfig:
    """Official ``create_model_and_diffusion`` keyword options -> a :class:`Text2ImConfig`."""
    known = set(model_and_diffusion_defaults())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown options {unknown}; the official options are {sorted(known)}")
    fields = {k: v for k, v in options.items() if k not in (*_RUNTIME_KEYS, "timestep_respacing")}
    return Text2ImConfig(**fields)
