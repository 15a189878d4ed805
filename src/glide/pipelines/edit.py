"""Editing pipelines: inpainting (``InpaintPipeline``, the known region pasted into every x_0
estimate) and SDEdit-style image-to-image (``ImageToImagePipeline``), on the stage sampler of
``glide.pipelines.text2im``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..bounds import check_number
from ..guidance import bind_cond_fns
from ..images import load_mask, load_rgb
from .text2im import (
    Generators,
    PipelineOutput,
    StageOptions,
    Text2ImagePipeline,
    check_call,
    device_of,
    noised_start,
    run_stage,
    stage_callback,
    stage_diffusion,
    upsample_stage,
)


class InpaintPipeline:
    """Fill the masked region of an image from a prompt, at 64 px then 256 px; the known region
    is kept exactly (it is pasted into every x_0 estimate, as the official inpainting notebook)."""

    def __init__(self, base: nn.Module, upsampler: nn.Module | None = None):
        if not base.config.inpaint or (upsampler is not None and not upsampler.config.inpaint):
            raise ValueError("InpaintPipeline needs inpainting models (e.g. 'base-inpaint', 'upsample-inpaint')")
        self.base, self.upsampler = base, upsampler

    @classmethod
    def from_pretrained(cls, base="bundled", upsampler="bundled", *, device="cpu", dtype=None,
                        cache_dir=None) -> InpaintPipeline:
        """Load an inpainting pair by spec (see ``Text2ImagePipeline.from_pretrained``): by default the
        bundled cascade's inpainting models; ``("openai", "openai")`` is base-inpaint + upsample-inpaint."""
        from ..checkpoints.specs import load_pipeline_models

        base_model, up_model, _ = load_pipeline_models(
            "inpaint", str(base), str(upsampler) if upsampler else "none",
            device=device, dtype=dtype, cache_dir=cache_dir)
        return cls(base_model, up_model)

    def __call__(
        self,
        prompt: str,
        image,
        mask,
        *,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        cond_fns: Sequence = (),
        base: StageOptions | None = None,
        upsample: StageOptions | None | bool = None,
        upsample_temp: float = 0.997,
        seed: int | None = None,
        generator: Generators | None = None,
        progress: bool = True,
        callback=None,
    ) -> PipelineOutput:
        """image: PIL / path / tensor; mask: white (1) = region to repaint. Returns the edited images.
        ``guidance_scale`` and ``cond_fns`` guide the base stage as in :class:`Text2ImagePipeline`."""
        call = check_call(prompt, num_images_per_prompt, guidance_scale, base, upsample, upsample_temp, seed,
                           generator, self.base, self.upsampler)
        batch = len(call.prompts)
        source, keep = self._inputs(image, mask, self.base.config.image_size, batch, self.base)
        up_source = up_keep = None
        if call.upsample is not False and self.upsampler is not None:
            up_source, up_keep = self._inputs(image, mask, self.upsampler.config.image_size, batch, self.upsampler)
        cond_fn = bind_cond_fns(cond_fns, call.prompts)
        low_res = run_stage(
            self.base, call.prompts, call.base, call.generator, inpaint_image=source, inpaint_mask=keep,
            cond_fn=cond_fn, denoised_fn=paste_known(source, keep), progress=progress,
            callback=stage_callback(callback, "base"),
        )
        return upsample_stage(
            self.upsampler, call, low_res, progress, callback, inpaint_image=up_source, inpaint_mask=up_keep,
            denoised_fn=paste_known(up_source, up_keep) if up_source is not None else None,
        )

    @staticmethod
    def _inputs(image, mask, size, batch, model):
        device = device_of(model)
        source = load_rgb(image, size).to(device).expand(batch, -1, -1, -1)
        keep = load_mask(mask, size).to(device).expand(batch, -1, -1, -1)
        return source, keep


def paste_known(source: torch.Tensor, keep: torch.Tensor):
    """``denoised_fn`` that replaces the known pixels of every x_0 estimate with the source's."""
    return lambda x0: x0 * (1 - keep) + source * keep


class ImageToImagePipeline(Text2ImagePipeline):
    """SDEdit-style editing: noise an image to ``strength`` of the way to pure noise, then
    denoise it with the prompt (base stage), and upsample as usual."""

    def __call__(  # type: ignore[override]
        self,
        prompt: str,
        image,
        *,
        strength: float = 0.6,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        cond_fns: Sequence = (),
        base: StageOptions | None = None,
        upsample: StageOptions | None | bool = None,
        upsample_temp: float = 0.997,
        seed: int | None = None,
        generator: Generators | None = None,
        progress: bool = True,
        callback=None,
    ) -> PipelineOutput:
        strength = check_number("strength", strength, low=0.0, high=1.0, low_open=True)
        call = check_call(prompt, num_images_per_prompt, guidance_scale, base, upsample, upsample_temp, seed,
                           generator, self.base, self.upsampler)
        n = len(call.prompts)
        x0 = load_rgb(image, self.base.config.image_size).expand(n, -1, -1, -1)
        diffusion, x_start = noised_start(stage_diffusion(self.base, call.base), x0, strength, call.generator)
        low_res = run_stage(self.base, call.prompts, call.base, call.generator, x_T=x_start, diffusion=diffusion,
                            cond_fn=bind_cond_fns(cond_fns, call.prompts), progress=progress,
                            callback=stage_callback(callback, "base"))
        return upsample_stage(self.upsampler, call, low_res, progress, callback)
