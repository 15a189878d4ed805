"""Ancestral sampling (DDPM) with the model's learned-range variance."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from ..diffusion import GaussianDiffusion
from ._common import (
    CondFn,
    DenoisedFn,
    Denoiser,
    NoiseArg,
    Tensor,
    model_mean_variance,
    resolve_noise,
    run_loop,
)


def ddpm_step(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x: Tensor,
    t: Tensor | int,
    noise: NoiseArg,
    *,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool | float = True,
) -> dict[str, Tensor]:
    """One ancestral step x_t -> x_{t-1} (``t`` respaced: an int or LongTensor ``[N]``).

    ``x_{t-1} = mean + [t != 0] * exp(0.5 * log_var) * noise``; ``cond_fn`` shifts the mean by
    ``variance * cond_fn(x, original_t)``. ``noise`` is a tensor like ``x`` or a zero-argument
    callable, called right after the denoiser (where the reference draws it). Returns
    ``dict(sample, pred_xstart)``.
    """
    out = model_mean_variance(denoiser, diffusion, x, t, denoised_fn=denoised_fn, clip_denoised=clip_denoised)
    noise = resolve_noise(noise, x)
    if cond_fn is not None:
        out["mean"] = diffusion.condition_mean(cond_fn, out, x, t)
    t = diffusion.as_timesteps(t, x)
    nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
    sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def sample_ddpm(
    denoiser: Denoiser, diffusion: GaussianDiffusion, x_T_or_shape: Tensor | Sequence[int], **options: Any
) -> Tensor:
    """Ancestral sampling over every step of ``diffusion`` (the reference ``p_sample_loop``);
    ``options``: the shared ones (see ``glide.sampling``).

    Random draws, in order: ``x_T`` (if a shape is given), then one ``noise_sampler(step)`` per
    step (step 0 = the noisiest), including the last, where it is multiplied by zero.
    """
    return run_loop(partial(ddpm_step, denoiser, diffusion), diffusion, x_T_or_shape, **options)
