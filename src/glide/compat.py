"""Drop-in layer for the official ``glide_text2im`` notebook API.

The three official notebooks (text2im, inpaint, clip_guided) run unchanged once their imports
read::

    from glide.compat import load_checkpoint                      # glide_text2im.download
    from glide.compat import (create_model_and_diffusion, model_and_diffusion_defaults,
                              model_and_diffusion_defaults_upsampler)  # glide_text2im.model_creation
    from glide.compat import create_clip_model                    # glide_text2im.clip.model_creation
    from glide.compat import SimpleTokenizer                      # glide_text2im.tokenizer.simple_tokenizer

Everything is a thin wrapper of glide's own models (``Text2ImUNet``, ``NoisedClip``), diffusion
(``GaussianDiffusion``), samplers (``sample_ddpm``, ``sample_ddim``) and checkpoint loading
(downloads go to glide's cache, files are read with ``weights_only=True``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .checkpoints import download_official, official_checkpoint, official_path, read_checkpoint
from .diffusion import GaussianDiffusion
from .guidance import clip_cond_fn_from_tokens
from .models import get_preset, preset_config
from .models.clip import ClipConfig, NoisedClip, official_clip_config
from .models.config import RENAMED_KEYS
from .models.text2im import Text2ImConfig, Text2ImUNet
from .sampling import ddim_step, ddpm_step, sample_ddim, sample_ddpm
from .sampling._common import CondFn, Denoiser, model_mean_variance, with_grad
from .tokenizer import ClipTokenizer

Tensor = torch.Tensor

# Options of the official model_and_diffusion_defaults() that are not Text2ImConfig fields.
_RUNTIME_OPTIONS = dict(timestep_respacing="", use_fp16=True, cache_text_emb=False)
# Text2ImConfig fields the official options do not have (glide additions).
_GLIDE_ONLY_FIELDS = ("n_vocab", "learn_sigma", "tokenizer", "model_type", "norm_groups", "coord_channels")


def _official_options(preset: str) -> dict[str, Any]:
    """The official option dict of a preset of the table: ints joined as the official strings,
    ``channel_mult=""`` (derived from the size) unless the preset sets it."""
    config = preset_config(preset)
    options = {k: v for k, v in config.to_dict().items() if k not in _GLIDE_ONLY_FIELDS}
    options["channel_mult"] = ",".join(map(str, get_preset(preset).fields.get("channel_mult", ())))
    options["attention_resolutions"] = ",".join(map(str, config.attention_resolutions))
    return {**options, **_RUNTIME_OPTIONS}


def model_and_diffusion_defaults() -> dict[str, Any]:
    """The official base-model options (64 px), as a fresh dict."""
    return _official_options("base")


def model_and_diffusion_defaults_upsampler() -> dict[str, Any]:
    """The official upsampler options (64 -> 256 px), as a fresh dict."""
    return _official_options("upsample")


def config_from_options(options: dict[str, Any]) -> Text2ImConfig:
    """Official ``create_model_and_diffusion`` keyword options -> a :class:`Text2ImConfig`."""
    known = set(model_and_diffusion_defaults())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown options {unknown}; the official options are {sorted(known)}")
    return Text2ImConfig(**{k: v for k, v in options.items() if k not in _RUNTIME_OPTIONS})


class CompatText2ImUNet(Text2ImUNet):
    """:class:`glide.models.Text2ImUNet` plus the official model's ``convert_to_fp16`` and ``del_cache``."""

    def convert_to_fp16(self) -> None:
        """The official half-precision conversion: :meth:`convert_to_half` with float16."""
        self.convert_to_half(torch.float16)

    def del_cache(self) -> None:
        """Official API: text features are never cached inside the model here, so nothing to drop."""


# --------------------------------------------------------------------------------------------
# create_model_and_diffusion
# --------------------------------------------------------------------------------------------


def create_model_and_diffusion(**options: Any) -> tuple[CompatText2ImUNet, SpacedDiffusion]:
    """The official ``create_model_and_diffusion(**options)`` -> ``(model, diffusion)``.

    ``model`` is a :class:`glide.models.Text2ImUNet` with the official ``convert_to_fp16`` and
    ``del_cache`` methods (the inpaint / super-res variant is picked by ``options``), in float32.
    As in the official code, ``use_fp16`` does not convert the weights: call
    ``model.convert_to_fp16()`` (the notebooks do, ``if has_cuda``).
    ``cache_text_emb`` is accepted and has no effect (text features are recomputed per call,
    which gives the same numbers). ``diffusion`` is a :class:`SpacedDiffusion`.
    """
    missing = sorted(set(model_and_diffusion_defaults()) - set(options))
    if missing:
        raise TypeError(f"create_model_and_diffusion() missing options {missing}; "
                        "start from model_and_diffusion_defaults()")
    model = CompatText2ImUNet(config_from_options(options))
    diffusion = create_gaussian_diffusion(
        steps=options["diffusion_steps"],
        noise_schedule=options["noise_schedule"],
        timestep_respacing=options["timestep_respacing"],
    )
    return model, diffusion


def create_gaussian_diffusion(steps: int, noise_schedule: str, timestep_respacing: str) -> SpacedDiffusion:
    """The official ``create_gaussian_diffusion``: ``""`` keeps every one of ``steps`` steps.

    Built on the CPU even inside a ``with torch.device(...)`` block (its tables are not model state).
    """
    with torch.device("cpu"):
        diffusion = GaussianDiffusion.from_schedule(noise_schedule, steps, timestep_respacing or None)
    return SpacedDiffusion(diffusion)


# --------------------------------------------------------------------------------------------
# The diffusion object with the official call signatures
# --------------------------------------------------------------------------------------------

ModelFn = Callable[..., Tensor]


class SpacedDiffusion:
    """The official ``SpacedDiffusion`` API over a :class:`glide.diffusion.GaussianDiffusion`.

    ``model(x, t, **model_kwargs)`` and ``cond_fn(x, t, **model_kwargs)`` receive ``t`` as the
    *original* timesteps (int64 ``[N]``), mapped through ``timestep_map`` as the official
    ``_WrappedModel`` does; loops draw noise from the global torch RNG (``torch.randn``), so
    ``torch.manual_seed`` reproduces official runs. Timestep arguments of the single-step methods
    (``t``) are respaced indices, as in the official code. Other attributes (``betas``,
    ``alphas_cumprod``, ...) are those of the wrapped ``diffusion``.
    """

    def __init__(self, diffusion: GaussianDiffusion):
        self.diffusion = diffusion

    def __getattr__(self, name: str) -> Any:
        if name == "diffusion":  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.diffusion, name)

    def __repr__(self) -> str:
        return f"compat.SpacedDiffusion({self.diffusion!r})"

    @property
    def num_timesteps(self) -> int:
        return self.diffusion.num_timesteps

    @property
    def timestep_map(self) -> list[int]:
        """Respaced index -> original timestep (a list, as in the official code)."""
        return self.diffusion.timestep_map.tolist()

    # -- adapters ------------------------------------------------------------------------------
    @staticmethod
    def _denoiser(model: ModelFn, model_kwargs: dict | None) -> Denoiser:
        kwargs = model_kwargs or {}

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            out = model(x, t, **kwargs)
            return out[0] if isinstance(out, tuple) else out  # official models may return (out, extra)

        return denoise

    @staticmethod
    def _cond_fn(cond_fn: ModelFn | None, model_kwargs: dict | None) -> CondFn | None:
        if cond_fn is None:
            return None
        kwargs = model_kwargs or {}
        return lambda x, t: cond_fn(x, t, **kwargs)

    @staticmethod
    def _device(model: ModelFn, device) -> torch.device | None:
        """The official default: the device of the model's parameters (None for a plain function)."""
        if device is not None or not isinstance(model, nn.Module):
            return device
        param = next(model.parameters(), None)
        return param.device if param is not None else None

    def _run(self, sampler, model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device,
             progress, **options) -> Tensor:
        """Call a glide sampler with the official loop arguments adapted to a Denoiser."""
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list, got {type(shape).__name__}")
        return sampler(
            self._denoiser(model, model_kwargs), self.diffusion, noise if noise is not None else tuple(shape),
            cond_fn=self._cond_fn(cond_fn, model_kwargs), denoised_fn=denoised_fn, clip_denoised=clip_denoised,
            progress=progress, device=self._device(model, device), **options,
        )

    @staticmethod
    def _collect(steps: list[dict]) -> Callable[[dict], None]:
        return lambda d: steps.append({"sample": d["x"], "pred_xstart": d["pred_xstart"]})

    # -- loops ---------------------------------------------------------------------------------
    def p_sample_loop(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict | None = None,
        device=None,
        progress: bool = False,
    ) -> Tensor:
        """Ancestral sampling (:func:`glide.sampling.sample_ddpm`) -> samples ``[N, C, H, W]``.

        ``noise``: x_T (default ``torch.randn(*shape, device=device)``); ``device`` defaults to
        the model's parameters' device when ``model`` is an ``nn.Module``.
        """
        return self._run(sample_ddpm, model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs,
                         device, progress)

    def ddim_sample_loop(
        self,
        model: ModelFn,
        shape: Sequence[int],
        noise: Tensor | None = None,
        clip_denoised: bool = True,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
        cond_fn: ModelFn | None = None,
        model_kwargs: dict | None = None,
        device=None,
        progress: bool = False,
        eta: float = 0.0,
    ) -> Tensor:
        """DDIM (:func:`glide.sampling.sample_ddim`) -> samples ``[N, C, H, W]``; arguments as
        :meth:`p_sample_loop`."""
        return self._run(sample_ddim, model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs,
                         device, progress, eta=eta)

    def p_sample_loop_progressive(self, model: ModelFn, shape: Sequence[int], noise: Tensor | None = None,
                                  clip_denoised: bool = True, denoised_fn=None, cond_fn: ModelFn | None = None,
                                  model_kwargs: dict | None = None, device=None,
                                  progress: bool = False) -> Iterator[dict]:
        """``dict(sample, pred_xstart)`` for every step. Unlike the official generator, the whole
        loop runs at the first ``next()`` and the steps are then handed out."""
        steps: list[dict] = []
        self._run(sample_ddpm, model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device,
                  progress, callback=self._collect(steps))
        yield from steps

    def ddim_sample_loop_progressive(self, model: ModelFn, shape: Sequence[int], noise: Tensor | None = None,
                                     clip_denoised: bool = True, denoised_fn=None, cond_fn: ModelFn | None = None,
                                     model_kwargs: dict | None = None, device=None, progress: bool = False,
                                     eta: float = 0.0) -> Iterator[dict]:
        """As :meth:`p_sample_loop_progressive`, for DDIM."""
        steps: list[dict] = []
        self._run(sample_ddim, model, shape, noise, clip_denoised, denoised_fn, cond_fn, model_kwargs, device,
                  progress, eta=eta, callback=self._collect(steps))
        yield from steps

    # -- single steps --------------------------------------------------------------------------
    def p_mean_variance(self, model: ModelFn, x: Tensor, t: Tensor, clip_denoised: bool = True,
                        denoised_fn=None, model_kwargs: dict | None = None) -> dict[str, Tensor]:
        """Mean, variance, log_variance and pred_xstart of p(x_{t-1} | x_t); ``t`` respaced."""
        return model_mean_variance(self._denoiser(model, model_kwargs), self.diffusion, x, t,
                                   denoised_fn=denoised_fn, clip_denoised=clip_denoised)

    def p_sample(self, model: ModelFn, x: Tensor, t: Tensor, clip_denoised: bool = True, denoised_fn=None,
                 cond_fn: ModelFn | None = None, model_kwargs: dict | None = None) -> dict[str, Tensor]:
        """One ancestral step (noise from ``torch.randn_like``); ``t`` respaced."""
        return ddpm_step(self._denoiser(model, model_kwargs), self.diffusion, x, t, lambda: torch.randn_like(x),
                         cond_fn=with_grad(self._cond_fn(cond_fn, model_kwargs)), denoised_fn=denoised_fn,
                         clip_denoised=clip_denoised)

    def ddim_sample(self, model: ModelFn, x: Tensor, t: Tensor, clip_denoised: bool = True, denoised_fn=None,
                    cond_fn: ModelFn | None = None, model_kwargs: dict | None = None,
                    eta: float = 0.0) -> dict[str, Tensor]:
        """One DDIM step (noise from ``torch.randn_like``); ``t`` respaced."""
        return ddim_step(self._denoiser(model, model_kwargs), self.diffusion, x, t, lambda: torch.randn_like(x),
                         eta=eta, cond_fn=with_grad(self._cond_fn(cond_fn, model_kwargs)),
                         denoised_fn=denoised_fn, clip_denoised=clip_denoised)

    # -- forward process and training ----------------------------------------------------------
    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) at respaced step ``t`` (``noise`` defaults to ``torch.randn_like``)."""
        return self.diffusion.q_sample(x_start, t, torch.randn_like(x_start) if noise is None else noise)

    def training_losses(self, model: ModelFn, x_start: Tensor, t: Tensor, model_kwargs: dict | None = None,
                        noise: Tensor | None = None) -> dict[str, Tensor]:
        """The guided-diffusion signature of the hybrid loss: ``dict(loss, mse, vb)``, each ``[N]``."""
        return self.diffusion.training_losses(self._denoiser(model, model_kwargs), x_start, t, noise)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------

#: The names the official ``load_checkpoint`` accepts.
MODEL_PATHS = {name: official_checkpoint(name).url for name in
               ("base", "upsample", "base-inpaint", "upsample-inpaint", "clip/image-enc", "clip/text-enc")}


def load_checkpoint(
    checkpoint_name: str,
    device: str | torch.device = "cpu",
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 4096,
) -> dict[str, Tensor]:
    """The official checkpoint ``checkpoint_name`` as a state dict on ``device``.

    Names: ``base``, ``upsample``, ``base-inpaint``, ``upsample-inpaint``, ``clip/image-enc``,
    ``clip/text-enc``. The file is downloaded into glide's cache (``glide download NAME``'s
    place; ``cache_dir`` overrides it) when missing, and read with ``weights_only=True``: a
    pickle that would run code raises :class:`glide.checkpoints.CheckpointError`.
    ``chunk_size`` is accepted for the official signature and ignored.
    """
    if checkpoint_name not in MODEL_PATHS:
        raise ValueError(f"Unknown checkpoint name {checkpoint_name!r}. Known names are: {list(MODEL_PATHS)}.")
    path = official_path(checkpoint_name, cache_dir)
    converted = path.with_suffix(".safetensors")
    if not path.exists() and converted.exists():
        path = converted
    elif not path.exists():
        path = download_official(checkpoint_name, cache_dir, progress=progress)
    state, _ = read_checkpoint(path)
    return {k: v.to(device) for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------

#: The official ``glide_text2im.tokenizer.simple_tokenizer.SimpleTokenizer`` (CLIP BPE).
SimpleTokenizer = ClipTokenizer


class ClipModel:
    """The official ``CLIPModel``: a :class:`glide.models.clip.NoisedClip` behind its attributes.

    ``image_encoder`` / ``text_encoder`` load the official ``clip/image-enc`` / ``clip/text-enc``
    state dicts strictly. One difference: glide's ``image_encoder(x_t, t)`` takes ``x_t`` in
    [-1, 1] (it applies ``(x + 1) * 127.5`` itself) where the official one takes [0, 255]
    pixels; ``image_embeddings`` and ``cond_fn`` take [-1, 1] in both.
    """

    def __init__(self, clip: NoisedClip, device: torch.device, tokenizer: Any = None):
        self.clip = clip
        self.device = device
        self._tokenizer = tokenizer

    @property
    def config(self) -> dict[str, Any]:
        """The official ``clip/config.yaml`` keys (``beta_schedule``, ``n_timesteps``, ...)."""
        official_name = {new: old for old, new in RENAMED_KEYS.items()}
        return {official_name.get(k, k): v for k, v in self.clip.config.to_dict().items()
                if k not in ("tokenizer", "model_type")}

    @property
    def image_encoder(self) -> nn.Module:
        return self.clip.image_encoder

    @property
    def text_encoder(self) -> nn.Module:
        return self.clip.text_encoder

    @property
    def logit_scale(self) -> Tensor:
        return self.clip.logit_scale

    @property
    def tokenizer(self):
        return self._tokenizer if self._tokenizer is not None else self.clip.tokenizer

    def to(self, device: str | torch.device) -> ClipModel:
        self.clip.to(device)
        self.device = torch.device(device)
        return self

    def eval(self) -> ClipModel:
        self.clip.eval()
        return self

    def train(self, mode: bool = True) -> ClipModel:
        self.clip.train(mode)
        return self

    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """prompts -> (tokens int64 ``[B, max_text_len]``, lens int64 ``[B]``) on the model's device."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        tok, n_ctx = self.tokenizer, self.clip.config.max_text_len
        rows = [tok.padded_tokens_and_len(tok.encode(p), n_ctx) for p in prompts]
        device = self.logit_scale.device
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.long, device=device).view(len(rows), n_ctx)
        lens = torch.tensor([r[1] for r in rows], dtype=torch.long, device=device)
        return tokens, lens

    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """L2-normalised text embeddings ``[B, n_embd]``."""
        return self.clip.embed_text(*self.encode_prompts(prompts))

    def image_embeddings(self, images: Tensor, t: Tensor) -> Tensor:
        """L2-normalised embeddings ``[B, n_embd]`` of ``images: [B, 3, S, S] in [-1, 1]`` at original steps ``t``."""
        return self.clip.embed_image(images, t)

    def cond_fn(self, prompts: list[str], grad_scale: float) -> Callable[..., Tensor]:
        """``cond_fn(x, t, grad_scale=grad_scale, **model_kwargs) -> grad``, the official signature,
        from :func:`glide.guidance.clip_cond_fn_from_tokens` (extra keyword arguments are ignored)."""
        unit = clip_cond_fn_from_tokens(self.clip, *self.encode_prompts(prompts), 1.0)

        def cond_fn(x: Tensor, t: Tensor, grad_scale: float = grad_scale, **kwargs: Any) -> Tensor:
            return unit(x, t) * grad_scale

        return cond_fn


def create_clip_model(
    config_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    tokenizer: Any = None,
) -> ClipModel:
    """The official ``create_clip_model``: a noised CLIP built on ``device`` (default: CUDA if
    available), from a YAML/JSON file with the official ``clip/config.yaml`` keys (default: the
    official full-size model). ``tokenizer``: anything with the official ``SimpleTokenizer``'s
    ``encode`` and ``padded_tokens_and_len`` (default: glide's CLIP tokenizer)."""
    config = ClipConfig.from_file(config_path) if config_path is not None else official_clip_config()
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    with device:
        clip = NoisedClip(config)
    return ClipModel(clip.eval(), device, tokenizer)
