"""Samplers: plain functions over a denoiser.

A **Denoiser** is ``fn(x_t [N, C, H, W], t LongTensor [N] original timesteps) -> [N, 2C, H, W]``
(eps and the learned-range variance selector v) or ``[N, C, H, W]`` (eps alone, fixed posterior
variance), with every model input bound. Samplers walk a (possibly respaced)
``GaussianDiffusion`` from its last index to 0 and hand the denoiser and ``cond_fn`` the
original timestep ``diffusion.timestep_map[i]``.

Shared keyword options:

* ``generator``: draws ``x_T`` (when a shape is given) and per-step noise, so a seeded CPU
  generator reproduces a ``torch.manual_seed`` run of the reference loop.
* ``noise_sampler(step) -> Tensor``: per-step noise instead (``step`` 0 = the first, noisiest step).
* ``cond_fn(x, t_original) -> grad`` of log p(y | x_t), already scaled. It runs with autograd
  enabled even though the loop runs under ``no_grad``.
* ``denoised_fn(x0) -> x0`` applied to every x_0 estimate before the [-1, 1] clamp
  (``clip_denoised``); inpainting uses it to paste known pixels. ``clip_denoised=p`` with p in
  (0, 1) thresholds dynamically at the p-quantile of |x_0| instead (Imagen's dynamic thresholding).
* ``callback(dict(i, t, x, pred_xstart))`` after every step; ``progress`` shows a tqdm bar.
* ``device``: where ``x_T`` goes when drawn from a shape (drawn on the generator's device).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from ..diffusion import GaussianDiffusion
from ._common import Callback, CondFn, DenoisedFn, Denoiser, NoiseSampler, Tensor
from .ddim import ddim_step, sample_ddim
from .ddpm import ddpm_step, sample_ddpm
from .dpm_solver import dpm_solver_step, dpm_solver_update, sample_dpm_solver
from .plms import plms_step, sample_plms

SAMPLERS = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "plms": sample_plms,
    "dpm++2m": sample_dpm_solver,
    "dpm++3m": partial(sample_dpm_solver, order=3),
    "dpm++2m-sde": partial(sample_dpm_solver, stochastic=True),
}


def check_sampler(name: str) -> str:
    """``name`` if it is a sampler of :data:`SAMPLERS`, else a ValueError listing the valid names
    (the one check of a sampler name, for the API, the CLI and training)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid names: {', '.join(SAMPLERS)}")
    return name


def sample(
    name: str,
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x_T_or_shape: Tensor | Sequence[int],
    **kwargs,
) -> Tensor:
    """Run the sampler ``SAMPLERS[name]``; ``kwargs`` are its keyword options (``eta`` for ddim,
    ``order`` for plms / dpm++2m, plus the shared ones)."""
    check_sampler(name)
    return SAMPLERS[name](denoiser, diffusion, x_T_or_shape, **kwargs)


__all__ = [
    "SAMPLERS",
    "Callback",
    "CondFn",
    "DenoisedFn",
    "Denoiser",
    "NoiseSampler",
    "check_sampler",
    "ddim_step",
    "ddpm_step",
    "dpm_solver_step",
    "dpm_solver_update",
    "plms_step",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpm_solver",
    "sample_plms",
]
