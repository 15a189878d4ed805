"""Text to image: ``StageOptions`` and the sampling recipes, one stage sampler (``run_stage``),
and ``Text2ImagePipeline`` (prompt -> 64 px -> 256 px, CLIP reranking).

Each pipeline reads top to bottom: tokenise, bind the model into a denoiser (with guidance),
pick a respaced diffusion for the sampler, sample, hand the 64 px result to the upsampler.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..bounds import check_number
from ..diffusion import GaussianDiffusion, space_timesteps
from ..errors import SamplingError
from ..guidance import bind_cond_fns, check_guidance_scale, text2im_denoiser
from ..images import image_grid, tensor_to_image
from ..sampling import check_sampler, sample

# The length of GLIDE's training process: respacing strings are checked against it up front
# (a model with another length is checked again when its stage builds the diffusion).
_CHECK_STEPS = 1000


@dataclass(frozen=True)
class StageOptions:
    """How one stage samples, validated when built; derive variants with ``dataclasses.replace``.

    ``sampler``: a name of ``glide.sampling.SAMPLERS``. ``timesteps``: an int N (N evenly spaced
    steps, the noisiest included) or any respacing string (``"fast27"``, ``"ddim50"``, ``"100"``,
    ``"10,10,3"``). ``guidance_scale``: classifier-free guidance, >= 0 (1 = none).
    ``sampler_options``: the sampler's extras (e.g. ``{"eta": 0.5}`` for ddim), read-only.
    ``strength``: the share of the process sampled, in (0, 1]. 1 starts from pure noise; below 1
    (upsamplers) starts from the bilinearly upsampled low-res input noised to that level, which
    spares a small upsampler the steps near pure noise, where its errors are amplified most.
    """

    sampler: str = "dpm++2m"
    timesteps: int | str = 25
    guidance_scale: float = 3.0
    sampler_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    strength: float = 1.0

    def __post_init__(self) -> None:
        check_sampler(self.sampler)
        object.__setattr__(self, "strength", check_number("strength", self.strength, low=0, high=1, low_open=True))
        object.__setattr__(self, "guidance_scale", check_guidance_scale(self.guidance_scale))
        object.__setattr__(self, "timesteps", _check_timesteps(self.timesteps))
        object.__setattr__(self, "sampler_options", MappingProxyType(dict(self.sampler_options)))

    @property
    def respacing(self) -> str:
        """The respacing string of ``timesteps`` (an int N is ``"N"``: evenly spaced)."""
        return str(self.timesteps)


def _check_timesteps(timesteps: int | str) -> int | str:
    if isinstance(timesteps, int) and not isinstance(timesteps, bool):
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        return timesteps
    if not isinstance(timesteps, str):
        raise ValueError(f"timesteps must be an int or a respacing string such as 'fast27', got {timesteps!r}")
    try:
        space_timesteps(_CHECK_STEPS, timesteps)
    except ValueError as e:
        raise ValueError(f"timesteps={timesteps!r} is not a respacing: {e}") from None
    return timesteps.strip()


# Recipes. The official notebooks: 100 ancestral steps for the base, "fast27" for the upsampler.
NOTEBOOK_BASE = StageOptions(sampler="ddpm", timesteps=100, guidance_scale=3.0)
NOTEBOOK_UPSAMPLE = StageOptions(sampler="ddpm", timesteps="fast27", guidance_scale=1.0)
# Ours: DPM-Solver++(2M) follows the sampling ODE in far fewer model calls. The upsampler is held
# close by its low-res input and one of its 256 px steps costs as much as ~6 base steps with CFG
# (official sizes), so it gets few steps. benchmarks/sampling.py measures speed and distances.
DEFAULT_BASE = StageOptions(sampler="dpm++2m", timesteps=20, guidance_scale=3.0)
DEFAULT_UPSAMPLE = StageOptions(sampler="dpm++2m", timesteps=5, guidance_scale=1.0)
# Few steps: the stochastic DPM-Solver++(2M) with trailing spacing (10 model calls), and the
# upsampler started from its noised, upsampled input at strength 0.3 (10 steps, 3 calls). On the
# bundled cascade this matches 100-step DDPM's caption accuracy (docs/benchmarks.md).
FAST_BASE = StageOptions(sampler="dpm++2m-sde", timesteps="trailing10", guidance_scale=3.0)
FAST_UPSAMPLE = StageOptions(sampler="dpm++2m-sde", timesteps=10, guidance_scale=1.0, strength=0.3)
# The named recipes of --recipe (besides "default": what each checkpoint recommends, else DEFAULT_*).
RECIPES = {"notebook": (NOTEBOOK_BASE, NOTEBOOK_UPSAMPLE), "fast": (FAST_BASE, FAST_UPSAMPLE)}


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


def stage_diffusion(model: nn.Module, options: StageOptions) -> GaussianDiffusion:
    """The respaced diffusion a stage samples with, from the model's training schedule."""
    steps = model.config.diffusion_steps
    try:
        return GaussianDiffusion.from_schedule(model.config.noise_schedule, steps, options.respacing)
    except ValueError as e:
        raise ValueError(f"timesteps={options.timesteps!r} does not fit the model's {steps}-step process: "
                         f"{e}") from None


def truncate_diffusion(diffusion: GaussianDiffusion, steps: int) -> GaussianDiffusion:
    """The first ``steps`` respaced steps of ``diffusion`` (the same noise levels), for starting
    the reverse process part-way (image-to-image editing)."""
    return GaussianDiffusion(diffusion.betas[:steps], diffusion.timestep_map[:steps].tolist())


def strength_steps(num_timesteps: int, strength: float) -> int:
    """How many of a stage's ``num_timesteps`` respaced steps (model calls) run at ``strength``."""
    return max(1, round(strength * num_timesteps))


def noised_start(diffusion: GaussianDiffusion, image: torch.Tensor, strength: float, generator: Generators,
                 noise_scale: float = 1.0) -> tuple[GaussianDiffusion, torch.Tensor]:
    """SDEdit's start: ``image`` noised ``strength`` of the way to pure noise, and the first steps of
    ``diffusion`` that lead back from there (at least one)."""
    steps = strength_steps(diffusion.num_timesteps, strength)
    truncated = truncate_diffusion(diffusion, steps)
    noise = randn(image.shape, generator).to(image) * noise_scale
    return truncated, truncated.q_sample(image, torch.full((image.shape[0],), steps - 1, device=image.device), noise)


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# Arguments, checked before any model runs.
def _check_count(value: int, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _check_stage(value, name: str, allow_false: bool = False):
    if value is None or isinstance(value, StageOptions) or (allow_false and value is False):
        return value
    allowed = "StageOptions, None" + (" or False" if allow_false else "")
    raise ValueError(f"{name} must be {allowed}, got {type(value).__name__}")


def _as_prompts(prompt: str | Sequence[str], num_images_per_prompt: int) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("give at least one prompt")
    if not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be strings")
    _check_count(num_images_per_prompt, "num_images_per_prompt")
    return [p for p in prompts for _ in range(num_images_per_prompt)]


# One generator for the whole batch, or one per image (a list: image i's noise then comes from
# generators[i] alone, so it does not depend on how many images share the batch).
Generators = torch.Generator | Sequence[torch.Generator]


def _generator(seed: int | None, generator: Generators | None) -> Generators:
    """A CPU generator: the same seed gives the same images on every device."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            generator = list(generator)
            if not generator or not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("generator must be a torch.Generator or a non-empty list of them (one per image)")
        return generator
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    gen = torch.Generator()
    return gen.manual_seed(seed) if seed is not None else gen.manual_seed(torch.seed())


@dataclass(frozen=True)
class _Call:
    """The checked arguments every pipeline shares."""

    prompts: list[str]
    base: StageOptions
    upsample: StageOptions | bool | None
    upsample_temp: float
    generator: Generators


def recommended_stage(model: nn.Module | None, fallback: StageOptions) -> StageOptions:
    """The stage options a model recommends (``model.recommended_sampling``, from its checkpoint
    header: see ``glide convert --sampler``), else ``fallback`` (the library's default recipe)."""
    return stage_from_sampling(getattr(model, "recommended_sampling", None), fallback)


def stage_from_sampling(sampling: Mapping[str, Any] | None, fallback: StageOptions) -> StageOptions:
    """StageOptions from a checkpoint's recorded sampling dict, or ``fallback`` when there is none."""
    if not sampling:
        return fallback
    try:
        return StageOptions(**sampling)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the model's recommended sampling {dict(sampling)!r} is not valid: {e}") from None


def check_call(prompt, num_images_per_prompt, guidance_scale, base, upsample, upsample_temp, seed,
                generator, base_model: nn.Module | None = None, upsampler: nn.Module | None = None) -> _Call:
    """The shared arguments; a stage left as None samples as its model recommends (``recommended_stage``)."""
    prompts = _as_prompts(prompt, num_images_per_prompt)
    base = _check_stage(base, "base") or recommended_stage(base_model, DEFAULT_BASE)
    if guidance_scale is not None:
        base = dataclasses.replace(base, guidance_scale=guidance_scale)
    upsample = _check_stage(upsample, "upsample", allow_false=True)
    if upsample is None and upsampler is not None:
        upsample = recommended_stage(upsampler, DEFAULT_UPSAMPLE)
    upsample_temp = check_number("upsample_temp", upsample_temp, low=0)
    return _Call(prompts, base, upsample, upsample_temp, _generator(seed, generator))


def randn(shape: Sequence[int], generator: Generators) -> torch.Tensor:
    """Standard normal noise of ``shape`` [N, ...] from ``generator``, or row i from
    ``generator[i]`` when it is a list of N generators (one per image)."""
    if isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for {shape[0]} images: give one per image")
    return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])


def _check_finite(samples: torch.Tensor, stage: str) -> torch.Tensor:
    if not bool(torch.isfinite(samples).all()):
        raise SamplingError(
            f"the {stage} stage produced non-finite values (NaN or inf): the model's weights may be corrupt, "
            f"or half precision overflowed (try dtype float32 / --dtype fp32)")
    return samples


def _output(samples: torch.Tensor, low_res: torch.Tensor, prompts: list[str]) -> PipelineOutput:
    return PipelineOutput([tensor_to_image(x) for x in samples], samples.cpu(), low_res.cpu(), prompts)


def upsample_stage(upsampler, call: _Call, low_res, progress, callback, **model_kwargs) -> PipelineOutput:
    """The second stage shared by every pipeline: 64 px samples -> the upsampler's size.

    ``call.upsample``: StageOptions, None (the default recipe) or False (keep ``low_res``).
    """
    if call.upsample is False or upsampler is None:
        return _output(low_res, low_res, call.prompts)
    samples = run_stage(
        upsampler, call.prompts, call.upsample or DEFAULT_UPSAMPLE, call.generator, noise_scale=call.upsample_temp,
        low_res=low_res.to(device_of(upsampler)), progress=progress,
        callback=stage_callback(callback, "upsample"), **model_kwargs,
    )
    return _output(samples, low_res, call.prompts)


def stage_callback(callback, stage: str):
    if callback is None:
        return None
    return lambda info: callback({**info, "stage": stage})


def run_stage(
    model: nn.Module,
    prompts: list[str],
    options: StageOptions,
    generator: Generators,
    *,
    noise_scale: float = 1.0,
    cond_fn=None,
    denoised_fn=None,
    x_T: torch.Tensor | None = None,
    diffusion: GaussianDiffusion | None = None,
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None,
    autocast: Callable[[], Any] | None = None,
    check_finite: bool = True,
    progress: bool = True,
    callback=None,
    **model_kwargs,
) -> torch.Tensor:
    """Sample one stage for ``prompts``: [N, 3, S, S] in [-1, 1] (S = the model's image size).

    ``noise_scale`` multiplies x_T (the official ``upsample_temp``); ``x_T`` starts from a given
    (partly noised) image instead; ``diffusion`` overrides the stage's respaced diffusion.
    ``tokens``: the prompts already tokenised (tokens, mask); ``autocast()``: a context the model
    runs in (training's mixed precision), its output cast to float32. ``check_finite`` raises
    :class:`SamplingError` when the result holds NaN or inf.
    """
    device = device_of(model)
    tokens, mask = tokens if tokens is not None else model.tokenize(prompts, device=device)
    denoiser = text2im_denoiser(model, tokens, mask, options.guidance_scale, **model_kwargs)
    if autocast is not None:
        denoiser = _under(autocast, denoiser)
    diffusion = diffusion or stage_diffusion(model, options)
    size = model.config.image_size
    if x_T is None and options.strength < 1:
        low_res = model_kwargs.get("low_res")
        if low_res is None:
            raise ValueError(f"strength={options.strength:g} starts from the low-res input, which only an upsampler "
                             f"stage has; use strength 1 (or ImageToImagePipeline to edit an image)")
        start = F.interpolate(low_res.float(), (size, size), mode="bilinear", align_corners=False)
        diffusion, x_T = noised_start(diffusion, start, options.strength, generator, noise_scale)
    elif x_T is None:
        x_T = randn((len(prompts), 3, size, size), generator) * noise_scale
    if isinstance(generator, torch.Generator):
        noise = dict(generator=generator)
    else:  # per-image generators: every step's noise too
        noise = dict(noise_sampler=lambda step: randn(x_T.shape, generator).to(device, x_T.dtype))
    samples = sample(
        options.sampler, denoiser, diffusion, x_T.to(device), cond_fn=cond_fn, denoised_fn=denoised_fn,
        progress=progress, callback=callback, **noise, **options.sampler_options,
    )
    return _check_finite(samples, "upsample" if model.config.super_res else "base") if check_finite else samples


def _under(autocast: Callable[[], Any], denoiser):
    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast():
            return denoiser(x, t).float()

    return run


class Text2ImagePipeline:
    """Text -> 64 px (base) -> 256 px (upsampler), with classifier-free guidance and any gradient
    guidances (CLIP, classifier) stacked on the base stage. ``clip`` (a NoisedClip) enables ``rerank``.
    """

    def __init__(self, base: nn.Module, upsampler: nn.Module | None = None, clip: nn.Module | None = None):
        self.base, self.upsampler, self.clip = base, upsampler, clip

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path = "bundled",
        upsampler: str | Path | None = "bundled",
        clip: str | Path | tuple[str, str] | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cache_dir: str | Path | None = None,
    ) -> Text2ImagePipeline:
        """Load by spec (``bundled``, ``openai``, an official name, a path or folder, ``random:PRESET``;
        see ``glide.checkpoints.specs``): every role is checked before any weights are read. The
        default is the bundled shapes cascade (offline); ``("openai", "openai")`` the official pair.
        ``upsampler=None`` means no upsampler; ``clip`` is a spec or an (image, text) pair of halves."""
        from ..checkpoints.specs import load_pipeline_models

        base_model, up_model, clip_model = load_pipeline_models(
            "sample", str(base), str(upsampler) if upsampler else "none", clip,
            device=device, dtype=dtype, cache_dir=cache_dir)
        return cls(base_model, up_model, clip_model)

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        num_images_per_prompt: int = 1,
        guidance_scale: float | None = None,
        cond_fns: Sequence = (),
        base: StageOptions | None = None,
        upsample: StageOptions | None | bool = None,
        upsample_temp: float = 0.997,
        rerank: int | None = None,
        seed: int | None = None,
        generator: Generators | None = None,
        progress: bool = True,
        callback: Callable[[dict], None] | None = None,
    ) -> PipelineOutput:
        """Generate ``num_images_per_prompt`` images for each prompt.

        ``guidance_scale``: classifier-free guidance of the base stage (default: ``base``'s, 3;
        1 = none). ``cond_fns``: gradient guidances summed on the base stage, e.g.
        ``(ClipGuidance(clip, 2.0), ClassifierGuidance(classifier, label=3, scale=1.0))`` from
        ``glide.guidance``, or plain ``cond_fn(x, t)`` callables. ``base`` / ``upsample`` are
        :class:`StageOptions` (defaults: DPM-Solver++ 20 and 5 steps); ``upsample=False`` stops
        at 64 px. ``rerank=N`` draws N candidates per prompt and keeps the
        ``num_images_per_prompt`` best by noised-CLIP score at t=0 (needs ``clip``).
        ``callback(dict(stage, i, t, x, pred_xstart))`` runs after every step. ``generator``: one
        torch.Generator, or a list of one per image sampled (per candidate with ``rerank``), so
        that an image does not depend on the others in its batch.
        """
        call = check_call(prompt, num_images_per_prompt, guidance_scale, base, upsample, upsample_temp, seed,
                           generator, self.base, self.upsampler)
        candidates = call.prompts
        if rerank is not None:  # draw `rerank` candidates per prompt, keep the num_images_per_prompt best
            if self.clip is None:
                raise ValueError("reranking needs a noised CLIP: pass clip= (e.g. Text2ImagePipeline."
                                 "from_pretrained(clip=('clip-image-enc', 'clip-text-enc')))")
            if _check_count(rerank, "rerank") < num_images_per_prompt:
                raise ValueError(f"rerank={rerank} must be >= num_images_per_prompt={num_images_per_prompt}")
            candidates = [p for p in call.prompts[::num_images_per_prompt] for _ in range(rerank)]
        cond_fn = bind_cond_fns(cond_fns, candidates)
        low_res = run_stage(self.base, candidates, call.base, call.generator, cond_fn=cond_fn,
                            progress=progress, callback=stage_callback(callback, "base"))
        if rerank is not None:
            best = self.rerank_indices(low_res, candidates, keep=num_images_per_prompt, group=rerank)
            low_res = low_res[best.to(low_res.device)]
            if not isinstance(call.generator, torch.Generator):  # the kept candidates' generators go on
                call = dataclasses.replace(call, generator=[call.generator[i] for i in best.tolist()])
        return upsample_stage(self.upsampler, call, low_res, progress, callback)

    def rerank(self, images: torch.Tensor, prompts: list[str], keep: int, group: int) -> torch.Tensor:
        """Keep the ``keep`` best of each consecutive ``group`` of images by noised-CLIP score at t=0,
        best first."""
        return images[self.rerank_indices(images, prompts, keep, group).to(images.device)]

    def rerank_indices(self, images: torch.Tensor, prompts: list[str], keep: int, group: int) -> torch.Tensor:
        """The indices (int64 [N / group * keep], CPU) :meth:`rerank` keeps."""
        tokens, lens = self.clip.tokenize(prompts)
        with torch.no_grad():
            scores = self.clip.score(images.to(device_of(self.clip)), tokens, lens, t=0).view(-1, group)
        best = scores.topk(keep, dim=1).indices + torch.arange(0, len(prompts), group, device=scores.device)[:, None]
        return best.flatten().cpu()
