"""Pipelines: prompt -> 64 px -> 256 px, inpainting, image-to-image editing, CLIP reranking.

Each pipeline reads top to bottom: tokenise, bind the model into a denoiser (with guidance),
pick a respaced diffusion for the sampler, sample, hand the 64 px result to the upsampler.

    pipe = Text2ImagePipeline.from_pretrained()                 # official base + upsample
    out = pipe("an oil painting of a corgi", seed=0)
    out.images[0].save("corgi.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .data.transforms import image_to_tensor, resize_center_crop, tensor_to_image, to_rgb
from .diffusion import GaussianDiffusion
from .guidance import check_guidance_scale, clip_cond_fn, text2im_denoiser
from .sampling import SAMPLERS, default_respacing, sample

GUIDANCE_TYPES = ("cfg", "clip", "none")


@dataclass
class StageOptions:
    """How one stage samples: ``sampler`` name, number of ``steps`` (or an explicit
    ``respacing`` string such as ``"fast27"``), guidance scale, and sampler extras (e.g. eta)."""

    sampler: str = "dpm++2m"
    steps: int = 25
    respacing: str | None = None
    guidance_scale: float = 3.0
    sampler_options: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; valid names: {', '.join(SAMPLERS)}")
        check_guidance_scale(self.guidance_scale)
        if self.respacing is None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


# Recipes. The official notebooks: 100 ancestral steps for the base, "fast27" for the upsampler.
NOTEBOOK_BASE = StageOptions(sampler="ddpm", steps=100, guidance_scale=3.0)
NOTEBOOK_UPSAMPLE = StageOptions(sampler="ddpm", respacing="fast27", guidance_scale=1.0)
# Ours: DPM-Solver++(2M) follows the sampling ODE in far fewer model calls. The upsampler is held
# close by its low-res input and one of its 256 px steps costs as much as ~6 base steps with CFG
# (official sizes), so it gets few steps. benchmarks/sampling.py measures speed and distances.
DEFAULT_BASE = StageOptions(sampler="dpm++2m", steps=20, guidance_scale=3.0)
DEFAULT_UPSAMPLE = StageOptions(sampler="dpm++2m", steps=5, guidance_scale=1.0)


@dataclass
class PipelineOutput:
    """``images``: final PIL images; ``samples``: the same as ``[N, 3, H, W]`` in [-1, 1];
    ``low_res``: the base stage's 64 px samples; ``prompts``: the prompt of each image."""

    images: list[Image.Image]
    samples: torch.Tensor
    low_res: torch.Tensor
    prompts: list[str]

    def grid(self, columns: int | None = None) -> Image.Image:
        return image_grid(self.images, columns)


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile equally sized images into one (``columns`` defaults to a near-square layout)."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or max(1, round(len(images) ** 0.5 + 0.4999))
    rows = -(-len(images) // columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def stage_diffusion(model: nn.Module, options: StageOptions) -> GaussianDiffusion:
    """The respaced diffusion a stage samples with, from the model's training schedule."""
    options.validate()
    respacing = options.respacing or default_respacing(options.sampler, options.steps)
    return GaussianDiffusion.from_schedule(
        model.config.noise_schedule, steps=model.config.diffusion_steps, respacing=respacing
    )


def truncate_diffusion(diffusion: GaussianDiffusion, steps: int) -> GaussianDiffusion:
    """The first ``steps`` respaced steps of ``diffusion`` (the same noise levels), for starting
    the reverse process part-way (image-to-image editing)."""
    return GaussianDiffusion(diffusion.betas[:steps], diffusion.timestep_map[:steps].tolist())


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """A CPU generator: the same seed gives the same images on every device."""
    if generator is not None:
        return generator
    gen = torch.Generator()
    return gen.manual_seed(seed) if seed is not None else gen.manual_seed(torch.seed())


def _as_prompts(prompt: str | Sequence[str], num_images_per_prompt: int) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("give at least one prompt")
    if num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
    return [p for p in prompts for _ in range(num_images_per_prompt)]


def _base_options(base: StageOptions | None, guidance_scale: float | None) -> StageOptions:
    """A private copy of the base-stage options, with the call's guidance scale applied."""
    options = StageOptions(**vars(base or DEFAULT_BASE))
    if guidance_scale is not None:
        options.guidance_scale = guidance_scale
    return options


def _output(samples: torch.Tensor, low_res: torch.Tensor, prompts: list[str]) -> PipelineOutput:
    return PipelineOutput([tensor_to_image(x) for x in samples], samples.cpu(), low_res.cpu(), prompts)


def upsample_stage(upsampler, prompts, low_res, upsample, upsample_temp, generator, progress, callback,
                   **model_kwargs) -> PipelineOutput:
    """The second stage shared by every pipeline: 64 px samples -> the upsampler's size.

    ``upsample``: StageOptions, None (the default recipe) or False (keep ``low_res``).
    """
    if upsample is False or upsampler is None:
        return _output(low_res, low_res, prompts)
    options = StageOptions(**vars(upsample if isinstance(upsample, StageOptions) else DEFAULT_UPSAMPLE))
    samples = run_stage(
        upsampler, prompts, options, generator, noise_scale=upsample_temp,
        low_res=low_res.to(_device_of(upsampler)), progress=progress,
        callback=_stage_callback(callback, "upsample"), **model_kwargs,
    )
    return _output(samples, low_res, prompts)


def _stage_callback(callback, stage: str):
    if callback is None:
        return None
    return lambda info: callback({**info, "stage": stage})


def run_stage(
    model: nn.Module,
    prompts: list[str],
    options: StageOptions,
    generator: torch.Generator,
    *,
    noise_scale: float = 1.0,
    cond_fn=None,
    denoised_fn=None,
    x_T: torch.Tensor | None = None,
    diffusion: GaussianDiffusion | None = None,
    progress: bool = True,
    callback=None,
    **model_kwargs,
) -> torch.Tensor:
    """Sample one stage for ``prompts``: [N, 3, S, S] in [-1, 1] (S = the model's image size).

    ``noise_scale`` multiplies x_T (the official ``upsample_temp``); ``x_T`` starts from a given
    (partly noised) image instead; ``diffusion`` overrides the stage's respaced diffusion.
    """
    device = _device_of(model)
    tokens, mask = model.tokenize(prompts, device=device)
    denoiser = text2im_denoiser(model, tokens, mask, options.guidance_scale, **model_kwargs)
    diffusion = diffusion or stage_diffusion(model, options)
    size = model.config.image_size
    if x_T is None:
        x_T = torch.randn((len(prompts), 3, size, size), generator=generator) * noise_scale
    return sample(
        options.sampler, denoiser, diffusion, x_T.to(device), generator=generator, cond_fn=cond_fn,
        denoised_fn=denoised_fn, progress=progress, callback=callback, **options.sampler_options,
    )


class Text2ImagePipeline:
    """Text -> 64 px (base) -> 256 px (upsampler), with classifier-free or CLIP guidance.

    ``clip`` (a NoisedClip) enables ``guidance="clip"`` and ``rerank``.
    """

    def __init__(self, base: nn.Module, upsampler: nn.Module | None = None, clip: nn.Module | None = None):
        self.base, self.upsampler, self.clip = base, upsampler, clip

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path = "base",
        upsampler: str | Path | None = "upsample",
        clip: str | Path | tuple[str, str] | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: str | Path | None = None,
    ) -> Text2ImagePipeline:
        """Load by spec (``openai``, an official name, a path or folder, ``random:PRESET``; see
        ``glide.checkpoints.specs``): every role is checked before any weights are read.
        ``upsampler=None`` means no upsampler; ``clip`` is a spec or an (image, text) pair of halves."""
        from .checkpoints.specs import load_pipeline_models

        base_model, up_model, clip_model = load_pipeline_models(
            "sample", str(base), str(upsampler) if upsampler else "none", clip,
            device=device, dtype=dtype, cache_dir=cache_dir)
        return cls(base_model, up_model, clip_model)

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        num_images_per_prompt: int = 1,
        guidance: str = "cfg",
        guidance_scale: float | None = None,
        base: StageOptions | None = None,
        upsample: StageOptions | None | bool = None,
        upsample_temp: float = 0.997,
        rerank: int | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        callback: Callable[[dict], None] | None = None,
    ) -> PipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt.

        guidance: ``"cfg"`` (classifier-free, ``guidance_scale`` default 3), ``"clip"`` (noised
        CLIP gradient, scale = grad_scale) or ``"none"``. ``base`` / ``upsample`` are
        :class:`StageOptions` (defaults: DPM-Solver++ 20 and 5 steps); ``upsample=False`` stops
        at 64 px. ``rerank=N`` draws N candidates per prompt and keeps the
        ``num_images_per_prompt`` best by noised-CLIP score at t=0.
        ``callback(dict(stage, i, t, x, pred_xstart))`` runs after every step.
        """
        if guidance not in GUIDANCE_TYPES:
            raise ValueError(f"unknown guidance {guidance!r}; choose one of {', '.join(GUIDANCE_TYPES)}")
        prompts = _as_prompts(prompt, num_images_per_prompt)
        generator = _generator(seed, generator)
        base_opts = _base_options(base, guidance_scale)
        cond_fn = None
        if (guidance == "clip" or rerank) and self.clip is None:
            raise ValueError("CLIP guidance and reranking need a noised CLIP: pass clip= (e.g. "
                             "Text2ImagePipeline.from_pretrained(clip=('clip-image-enc', 'clip-text-enc')))")
        if guidance == "clip":
            cond_fn = clip_cond_fn(self.clip, prompts, base_opts.guidance_scale)
            base_opts.guidance_scale = 1.0
        elif guidance == "none":
            base_opts.guidance_scale = 1.0

        candidates = prompts
        if rerank:  # draw `rerank` candidates per prompt, keep the num_images_per_prompt best
            if rerank < num_images_per_prompt:
                raise ValueError(f"rerank={rerank} must be >= num_images_per_prompt={num_images_per_prompt}")
            candidates = [p for p in prompts[::num_images_per_prompt] for _ in range(rerank)]
        low_res = run_stage(self.base, candidates, base_opts, generator, cond_fn=cond_fn,
                            progress=progress, callback=_stage_callback(callback, "base"))
        if rerank:
            low_res = self.rerank(low_res, candidates, keep=num_images_per_prompt, group=rerank)
        return upsample_stage(self.upsampler, prompts, low_res, upsample, upsample_temp, generator, progress,
                              callback)

    def rerank(self, images: torch.Tensor, prompts: list[str], keep: int, group: int) -> torch.Tensor:
        """Keep the ``keep`` best of each consecutive ``group`` of images by noised-CLIP score at t=0,
        best first."""
        tokens, lens = self.clip.tokenize(prompts)
        with torch.no_grad():
            scores = self.clip.score(images.to(_device_of(self.clip)), tokens, lens, t=0).view(-1, group)
        best = scores.topk(keep, dim=1).indices + torch.arange(0, len(prompts), group, device=scores.device)[:, None]
        return images[best.flatten().to(images.device)]


# --------------------------------------------------------------------------------------------
# Editing
# --------------------------------------------------------------------------------------------
def load_rgb(image: Image.Image | str | Path | torch.Tensor, size: int) -> torch.Tensor:
    """An image as ``[1, 3, size, size]`` in [-1, 1]. PIL/paths are resized and centre-cropped;
    tensors ([3,H,W] or [1,3,H,W] in [-1, 1]) must already have the right size."""
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise ValueError(f"image file not found: {image}")
        image = Image.open(image)
    if isinstance(image, Image.Image):
        return image_to_tensor(resize_center_crop(to_rgb(image), size))[None]
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[:2] != (1, 3) or tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"image tensor must be [1, 3, {size}, {size}] (or [3, {size}, {size}]) in [-1, 1], "
                         f"got {list(image.shape)}")
    return x.float()


def load_mask(mask: Image.Image | str | Path | torch.Tensor, size: int) -> torch.Tensor:
    """An edit mask as ``inpaint_mask`` ``[1, 1, size, size]``: 1 = keep, 0 = fill.

    Mask images follow the usual editor convention: **white = repaint**, black = keep.
    Tensors are taken as that same "1 = repaint" convention, [H,W], [1,H,W] or [1,1,H,W].
    """
    if isinstance(mask, (str, Path)):
        if not Path(mask).is_file():
            raise ValueError(f"mask file not found: {mask}")
        mask = Image.open(mask)
    if isinstance(mask, Image.Image):
        mask = resize_center_crop(mask.convert("L"), size)
        repaint = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    else:
        repaint = mask.float()
        while repaint.dim() < 4:
            repaint = repaint[None]
        if repaint.shape[:2] != (1, 1):
            raise ValueError(f"mask must have one channel ([H, W], [1, H, W] or [1, 1, H, W]), got {list(mask.shape)}")
        if tuple(repaint.shape[2:]) != (size, size):
            repaint = F.interpolate(repaint, (size, size), mode="nearest")
    keep = (repaint < 0.5).float()
    if keep.all():
        raise ValueError("the mask marks nothing to repaint (paint the region to change white)")
    return keep


class InpaintPipeline:
    """Fill the masked region of an image from a prompt, at 64 px then 256 px; the known region
    is kept exactly (it is pasted into every x_0 estimate, as the official inpainting notebook)."""

    def __init__(self, base: nn.Module, upsampler: nn.Module | None = None):
        if not base.config.inpaint or (upsampler is not None and not upsampler.config.inpaint):
            raise ValueError("InpaintPipeline needs inpainting models (e.g. 'base-inpaint', 'upsample-inpaint')")
        self.base, self.upsampler = base, upsampler

    @classmethod
    def from_pretrained(cls, base="base-inpaint", upsampler="upsample-inpaint", *, device="cpu", dtype=None,
                        cache_dir=None) -> InpaintPipeline:
        """Load an inpainting pair by spec (see ``Text2ImagePipeline.from_pretrained``)."""
        from .checkpoints.specs import load_pipeline_models

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
        num_images: int = 1,
        guidance_scale: float | None = None,
        base: StageOptions | None = None,
        upsample: StageOptions | None | bool = None,
        upsample_temp: float = 0.997,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        callback=None,
    ) -> PipelineOutput:
        """image: PIL / path / tensor; mask: white (1) = region to repaint. Returns the edited images."""
        prompts = _as_prompts(prompt, num_images)
        generator = _generator(seed, generator)
        base_opts = _base_options(base, guidance_scale)
        size = self.base.config.image_size
        source, keep = self._inputs(image, mask, size, len(prompts), self.base)
        low_res = run_stage(
            self.base, prompts, base_opts, generator, inpaint_image=source, inpaint_mask=keep,
            denoised_fn=paste_known(source, keep), progress=progress, callback=_stage_callback(callback, "base"),
        )
        up_source = up_keep = None
        if upsample is not False and self.upsampler is not None:
            up_size = self.upsampler.config.image_size
            up_source, up_keep = self._inputs(image, mask, up_size, len(prompts), self.upsampler)
        return upsample_stage(
            self.upsampler, prompts, low_res, upsample, upsample_temp, generator, progress, callback,
            inpaint_image=up_source, inpaint_mask=up_keep,
            denoised_fn=paste_known(up_source, up_keep) if up_source is not None else None,
        )

    @staticmethod
    def _inputs(image, mask, size, batch, model):
        device = _device_of(model)
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
        num_images: int = 1,
        guidance_scale: float | None = None,
        base: StageOptions | None = None,
        upsample: StageOptions | None | bool = None,
        upsample_temp: float = 0.997,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        progress: bool = True,
        callback=None,
    ) -> PipelineOutput:
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        prompts = _as_prompts(prompt, num_images)
        generator = _generator(seed, generator)
        base_opts = _base_options(base, guidance_scale)
        full = stage_diffusion(self.base, base_opts)
        start = max(1, round(strength * full.num_timesteps))
        diffusion = truncate_diffusion(full, start)
        size = self.base.config.image_size
        x0 = load_rgb(image, size).expand(len(prompts), -1, -1, -1)
        noise = torch.randn(x0.shape, generator=generator)
        x_start = diffusion.q_sample(x0, torch.full((len(prompts),), start - 1), noise)
        low_res = run_stage(self.base, prompts, base_opts, generator, x_T=x_start, diffusion=diffusion,
                            progress=progress, callback=_stage_callback(callback, "base"))
        return upsample_stage(self.upsampler, prompts, low_res, upsample, upsample_temp, generator, progress,
                              callback)
