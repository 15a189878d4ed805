"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), multistep, on the data prediction x_0, in the discrete respaced schedule.

With ``alpha_i = sqrt(abar_i)``, ``sigma_i = sqrt(1 - abar_i)``, ``lambda_i = log(alpha_i / sigma_i)``
and ``h = lambda_{i-1} - lambda_i``, one step from respaced index i to i - 1 is

    x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (exp(-h) - 1) D

with ``D = x0_i`` (first order, = DDIM) or, second order (2M), with ``r = h_prev / h``,
``D = (1 + 1 / (2r)) x0_i - 1 / (2r) x0_{i+1}``. Third order (3M) integrates the quadratic through
x0_i, x0_{i+1}, x0_{i+2} (in lambda) exactly: the paper's multistep update with the second
difference taken at its Taylor value h^2 x0'' (the reference code's D2 is half of that, which
leaves it second order on a quadratic x_0; tests/test_sampling.py checks exactness). The first steps use the
orders their history allows. The step into index 0 is first order ("lower order final", and the
step before it at most second order): evenly spaced respacings make its log-SNR jump several
times the previous one (e.g. h = 2.9 after 0.66 with "20" on the linear schedule), and
extrapolating over it is unstable (worse than DDIM on Gaussian data). The last step, from index 0
to clean data (sigma = 0), returns x0_0 (the first-order limit), so N steps take N denoiser calls.

The SDE variant (``stochastic=True``, DPM-Solver++(2M) SDE with eta = 1) solves the reverse SDE
instead of the ODE: ``x_{i-1} = (sigma_{i-1} / sigma_i) e^-h x_i + alpha_{i-1} (1 - e^-2h) D
+ sigma_{i-1} sqrt(1 - e^-2h) z``; at first order this is the DDPM posterior step with the
fixed variance beta-tilde. Fresh noise at every step corrects a small model's errors the way
ancestral sampling does, so it keeps DDPM's quality in far fewer steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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


def _log_snr(diffusion: GaussianDiffusion, i: int) -> float:
    """lambda_i = log(alpha_i / sigma_i), in float64."""
    abar = float(diffusion.alphas_cumprod[i])
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def dpm_solver_update(
    diffusion: GaussianDiffusion,
    x: Tensor,
    i: int,
    pred_xstart: Tensor,
    prev_xstart: Tensor | None = None,
    *,
    history: Sequence[Tensor] = (),
    noise: Tensor | None = None,
) -> Tensor:
    """The DPM-Solver++ move from respaced index ``i`` to ``i - 1`` (to clean data when i == 0).

    ``prev_xstart``: the x_0 prediction at index ``i + 1``, for the second-order (2M) update;
    ``history``: the predictions at ``i + 1, i + 2`` (newest first) instead, for third order (3M).
    None / empty gives the first-order update, as does ``i <= 1`` (lower order final, see above).
    ``noise``: a standard normal draw like ``x`` for the SDE update (orders 1 and 2); None: the ODE.
    """
    if i == 0:
        return pred_xstart
    past = list(history) if prev_xstart is None else [prev_xstart]
    order = min(1 + len(past), i, 2 if noise is not None else 3)
    lam_to, lam = _log_snr(diffusion, i - 1), _log_snr(diffusion, i)
    h = lam_to - lam
    abar, abar_to = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod[i - 1])
    alpha_to, sigma_ratio = math.sqrt(abar_to), math.sqrt((1 - abar_to) / (1 - abar))
    if noise is not None:  # the SDE: the ODE's exp(-h) becomes exp(-2h), plus fresh noise
        x_coef, d_coef = sigma_ratio * math.exp(-h), -alpha_to * math.expm1(-2 * h)
    else:
        x_coef, d_coef = sigma_ratio, -alpha_to * math.expm1(-h)
    out = x_coef * x + d_coef * pred_xstart
    if order >= 2:
        r0 = (lam - _log_snr(diffusion, i + 1)) / h
        d1_0 = (pred_xstart - past[0]) / r0
        if order == 2:
            out = out + (d_coef / 2) * d1_0
        else:
            r1 = (_log_snr(diffusion, i + 1) - _log_snr(diffusion, i + 2)) / h
            d1_1 = (past[0] - past[1]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = 2 * (d1_0 - d1_1) / (r0 + r1)  # ~ h^2 x0'': exact for x_0 quadratic in lambda (tested)
            phi_2 = math.expm1(-h) / h + 1
            phi_3 = (math.expm1(-h) + h) / h**2 - 0.5
            out = out + alpha_to * phi_2 * d1 - alpha_to * phi_3 * d2
    if noise is not None:
        out = out + math.sqrt((1 - abar_to) * -math.expm1(-2 * h)) * noise
    return out


def dpm_solver_step(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x: Tensor,
    i: int,
    prev_xstart: Tensor | None = None,
    *,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool | float = True,
) -> dict[str, Tensor]:
    """One DPM-Solver++ step from respaced index ``i`` (an int) to ``i - 1``.

    x_0 is the denoiser's prediction after ``denoised_fn``, the clamp and the score-style
    ``cond_fn`` correction of eps. Returns ``dict(sample, pred_xstart)``; pass ``pred_xstart``
    as ``prev_xstart`` of the next step for the second-order update.
    """
    out = predict_eps_xstart(
        denoiser, diffusion, x, i, cond_fn=cond_fn, denoised_fn=denoised_fn, clip_denoised=clip_denoised
    )
    sample = dpm_solver_update(diffusion, x, i, out["pred_xstart"], prev_xstart)
    return {"sample": sample, "pred_xstart": out["pred_xstart"]}


def sample_dpm_solver(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x_T_or_shape: Tensor | Sequence[int],
    *,
    order: int = 2,
    stochastic: bool = False,
    **options: Any,
) -> Tensor:
    """DPM-Solver++(1/2M/3M) (``order`` 1, 2, 3; 1 = DDIM) over every step of ``diffusion``, one
    denoiser call per step; ``stochastic``: the SDE variant (orders 1-2), which draws one
    ``noise_sampler(step)`` per step like DDPM. ``options``: the shared ones (see ``glide.sampling``).
    Deterministic otherwise: the only random draw is ``x_T``."""
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ order must be 1, 2 or 3, got {order}")
    if stochastic and order == 3:
        raise ValueError("the DPM-Solver++ SDE sampler has orders 1 and 2, not 3")
    history: list[Tensor] = []  # this run's x_0 predictions of the previous steps, newest first

    def step(x: Tensor, i: int, noise: NoiseArg, **hooks: Any) -> dict[str, Tensor]:
        out = predict_eps_xstart(denoiser, diffusion, x, i, **hooks)
        drawn = resolve_noise(noise, x) if stochastic and i > 0 else None
        sample = dpm_solver_update(diffusion, x, i, out["pred_xstart"], history=history[: order - 1], noise=drawn)
        history.insert(0, out["pred_xstart"])
        del history[2:]
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    return run_loop(step, diffusion, x_T_or_shape, **options)
