"""DDIM (Song et al. 2021): deterministic at ``eta=0``, ancestral-like as ``eta -> 1``."""

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
    predict_eps_xstart,
    resolve_noise,
    run_loop,
)


def ddim_step(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x: Tensor,
    t: Tensor | int,
    noise: NoiseArg = None,
    *,
    eta: float = 0.0,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool | float = True,
) -> dict[str, Tensor]:
    """One DDIM step x_t -> x_{t-1} (``t`` respaced: an int or LongTensor ``[N]``).

    With x_0 and eps from ``predict_eps_xstart`` (clamp, then score-style ``cond_fn``),
    ``sigma = eta * sqrt((1 - abar_prev) / (1 - abar)) * sqrt(1 - abar / abar_prev)`` and
    ``x_{t-1} = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma^2) eps + [t != 0] sigma noise``.
    ``noise``: a tensor, a zero-argument callable (called after ``cond_fn``, where the
    reference draws), or None for zeros (fine when ``eta == 0``).
    Returns ``dict(sample, pred_xstart)``.
    """
    out = predict_eps_xstart(
        denoiser, diffusion, x, t, cond_fn=cond_fn, denoised_fn=denoised_fn, clip_denoised=clip_denoised
    )
    alpha_bar = diffusion.extract("alphas_cumprod", t, x)
    alpha_bar_prev = diffusion.extract("alphas_cumprod_prev", t, x)
    sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
    noise = resolve_noise(noise, x)
    mean = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * out["eps"]
    t = diffusion.as_timesteps(t, x)
    nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
    return {"sample": mean + nonzero * sigma * noise, "pred_xstart": out["pred_xstart"]}


def sample_ddim(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x_T_or_shape: Tensor | Sequence[int],
    *,
    eta: float = 0.0,
    **options: Any,
) -> Tensor:
    """DDIM over every step of ``diffusion`` (the reference ``ddim_sample_loop``); ``options``:
    the shared ones (see ``glide.sampling``).

    Like the reference, one noise draw per step even at ``eta=0`` (then multiplied by zero),
    so generator streams line up with ``sample_ddpm`` and with ``torch.manual_seed`` runs.
    """
    return run_loop(partial(ddim_step, denoiser, diffusion, eta=eta), diffusion, x_T_or_shape, **options)
