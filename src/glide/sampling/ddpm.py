"""Ancestral sampling (DDPM) with the model's learned-range variance."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..diffusion import GaussianDiffusion
from ._common import (
    Callback,
    CondFn,
    DenoisedFn,
    Denoiser,
    NoiseArg,
    NoiseSampler,
    Tensor,
    default_noise_sampler,
    initial_noise,
    loop_indices,
    model_mean_variance,
    report,
    resolve_noise,
    with_grad,
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
    clip_denoised: bool = True,
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
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x_T_or_shape: Tensor | Sequence[int],
    *,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool = True,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ancestral sampling over every step of ``diffusion`` (the reference ``p_sample_loop``).

    Random draws, in order: ``x_T`` (if a shape is given), then one ``noise_sampler(step)`` per
    step (step 0 = the noisiest), including the last, where it is multiplied by zero.
    """
    x = initial_noise(x_T_or_shape, generator, device)
    noise_sampler = noise_sampler or default_noise_sampler(generator, x)
    cond_fn = with_grad(cond_fn)
    with torch.no_grad():
        for step, i in loop_indices(diffusion, progress):
            out = ddpm_step(
                denoiser,
                diffusion,
                x,
                i,
                lambda step=step: noise_sampler(step),
                cond_fn=cond_fn,
                denoised_fn=denoised_fn,
                clip_denoised=clip_denoised,
            )
            x = out["sample"]
            report(callback, diffusion, i, x, out["pred_xstart"])
    return x
