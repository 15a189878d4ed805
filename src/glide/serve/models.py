"""The models a server offers, loaded once at start-up and shared by every request.

A served model is a name (what clients pass as ``model``) for a base spec (see
``glide.checkpoints.specs``) and everything made from it: text-to-image and image-to-image over
the base and its upsampler, and inpainting over the matching inpainting pair when one exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..checkpoints.load import RANDOM_PREFIX
from ..checkpoints.specs import BUNDLED, OPENAI, load_pipeline_models
from ..diffusion import space_timesteps
from ..models import PRESETS
from ..pipelines import DEFAULT_BASE, DEFAULT_UPSAMPLE, ImageToImagePipeline, InpaintPipeline, StageOptions
from ..pipelines.text2im import Text2ImagePipeline, recommended_stage

ENDPOINTS = ("generate", "inpaint", "edit")


@dataclass(frozen=True)
class Settings:
    """How a batch samples: the batching key of the worker (requests with equal settings share a run)."""

    kind: str  # one of ENDPOINTS
    model: str
    base: StageOptions
    upsample: StageOptions | bool
    strength: float | None = None  # edit only
    inputs: str | None = None  # fingerprint of the image (and mask) being edited


def inpaint_spec(spec: str) -> str | None:
    """The spec of ``spec``'s inpainting counterpart, or None when it has none we know of."""
    if spec in (BUNDLED, OPENAI):
        return spec  # resolved per role by glide.checkpoints.specs
    if spec.startswith(RANDOM_PREFIX):
        preset = spec[len(RANDOM_PREFIX):] + "-inpaint"
        return RANDOM_PREFIX + preset if preset in PRESETS else None
    return None


class ServedModel:
    """One model's pipelines; every method runs on the worker thread except ``settings``."""

    def __init__(self, name: str, spec: str, text2im: Text2ImagePipeline, inpaint: InpaintPipeline | None):
        self.name, self.spec = name, spec
        self.text2im = text2im
        self.edit = ImageToImagePipeline(text2im.base, text2im.upsampler)
        self.inpaint = inpaint

    @classmethod
    def load(cls, name: str, spec: str, *, device: str = "cpu", dtype: torch.dtype | None = None) -> ServedModel:
        base, upsampler, _ = load_pipeline_models("sample", spec, None, device=device, dtype=dtype)
        inpaint = None
        if (inpainting := inpaint_spec(spec)) is not None:
            inpaint = InpaintPipeline(*load_pipeline_models("inpaint", inpainting, None, device=device,
                                                            dtype=dtype)[:2])
        return cls(name, spec, Text2ImagePipeline(base, upsampler), inpaint)

    @property
    def endpoints(self) -> list[str]:
        return [kind for kind in ENDPOINTS if kind != "inpaint" or self.inpaint is not None]

    def pipeline(self, kind: str):
        return {"generate": self.text2im, "edit": self.edit, "inpaint": self.inpaint}[kind]

    def image_size(self, kind: str = "generate", upsample: bool = True) -> int:
        pipe = self.pipeline(kind)
        model = pipe.upsampler if upsample and pipe.upsampler is not None else pipe.base
        return model.config.image_size

    def recommended(self, kind: str = "generate") -> StageOptions:
        return recommended_stage(self.pipeline(kind).base, DEFAULT_BASE)

    def settings(self, kind: str, *, sampler: str | None, steps: int | str | None, guidance_scale: float | None,
                 upsample: bool, upsample_steps: int | str | None, strength: float | None = None,
                 inputs: str | None = None, max_steps: int | None = None) -> Settings:
        """A request's sampling settings: what it gives, the model's recommendation for the rest
        (cut to ``max_steps`` when the recommendation has more)."""
        pipe = self.pipeline(kind)
        given = dict(sampler=sampler, timesteps=steps, guidance_scale=guidance_scale)
        base = dataclasses.replace(self.recommended(kind), **{k: v for k, v in given.items() if v is not None})
        base = _at_most(base, pipe.base, max_steps)
        up: StageOptions | bool = False
        if upsample and pipe.upsampler is not None:
            up = recommended_stage(pipe.upsampler, DEFAULT_UPSAMPLE)
            if upsample_steps is not None:
                up = dataclasses.replace(up, timesteps=upsample_steps)
            up = _at_most(up, pipe.upsampler, max_steps)
        return Settings(kind, self.name, base, up, strength, inputs)

    def stage_steps(self, settings: Settings) -> dict[str, int]:
        """The steps each stage of a run samples ({"base": N, "upsample": M}), for progress bars."""
        pipe = self.pipeline(settings.kind)
        steps = {"base": _sampled_steps(pipe.base, settings.base, settings.strength or 1.0)}
        if settings.upsample:
            steps["upsample"] = _sampled_steps(pipe.upsampler, settings.upsample, settings.upsample.strength)
        return steps

    def sample(self, settings: Settings, prompts: Sequence[str], generators: Sequence[torch.Generator],
               inputs: dict[str, Any], callback: Callable[[dict], None]) -> list[Image.Image]:
        """One sampling run: image i for ``prompts[i]`` from ``generators[i]``."""
        common = dict(num_images_per_prompt=1, base=settings.base, upsample=settings.upsample,
                      generator=list(generators), progress=False, callback=callback)
        prompts = list(prompts)
        if settings.kind == "generate":
            return self.text2im(prompts, **common).images
        if settings.kind == "edit":
            return self.edit(prompts, inputs["image"], strength=settings.strength, **common).images
        return self.inpaint(prompts, inputs["image"], inputs["mask"], **common).images


def _respaced_steps(model, options: StageOptions) -> int:
    return len(space_timesteps(model.config.diffusion_steps, options.respacing))


def _sampled_steps(model, options: StageOptions, strength: float) -> int:
    """Steps a stage runs when it starts ``strength`` of the way to noise (as ``noised_start``)."""
    steps = _respaced_steps(model, options)
    return steps if strength >= 1 else max(1, round(strength * steps))


def _at_most(options: StageOptions, model, max_steps: int | None) -> StageOptions:
    """``options`` with at most ``max_steps`` respaced steps (evenly spaced when cut)."""
    if max_steps is None or _respaced_steps(model, options) <= max_steps:
        return options
    return dataclasses.replace(options, timesteps=max_steps)


class ModelRegistry:
    """The served models by name, in the order given (the first is the default)."""

    def __init__(self, models: Sequence[ServedModel]):
        if not models:
            raise ValueError("serve at least one model")
        self.models = {m.name: m for m in models}
        self.default = models[0].name

    @classmethod
    def load(cls, specs: Sequence[str], *, device: str = "cpu", dtype: torch.dtype | None = None) -> ModelRegistry:
        """``specs``: ``SPEC`` or ``NAME=SPEC`` each (the name clients use; default: the spec)."""
        models = []
        for entry in specs:
            name, _, spec = entry.rpartition("=") if "=" in entry else (entry, "", entry)
            models.append(ServedModel.load(name.strip() or spec, spec.strip(), device=device, dtype=dtype))
        return cls(models)

    def get(self, name: str | None, kind: str) -> ServedModel:
        """The model ``name`` (default: the first); ValueError when it is not served or cannot do ``kind``."""
        name = self.default if name is None else name
        if name not in self.models:
            raise ValueError(f"model {name!r} is not served here; choose one of: {', '.join(self.models)}")
        model = self.models[name]
        if kind not in model.endpoints:
            raise ValueError(f"model {name!r} has no {kind} variant; models that do: "
                             f"{', '.join(m.name for m in self.models.values() if kind in m.endpoints) or 'none'}")
        return model
