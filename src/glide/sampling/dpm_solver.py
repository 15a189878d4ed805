"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models"), multistep, on the data prediction x_0, in the discrete respaced schedule.

With ``alpha_i = sqrt(abar_i)``, ``sigma_i = sqrt(1 - abar_i)``, ``lambda_i = log(alpha_i / sigma_i)``
and ``h = lambda_{i-1} - lambda_i``, one step from respaced index i to i - 1 is

    x_{i-1} = (sigma_{i-1} / sigma_i) x_i - alpha_{i-1} (exp(-h) - 1) D

with ``D = x0_i`` (first order, = DDIM) or, second order (2M), with ``r = h_prev / h``,
``D = (1 + 1 / (2r)) x0_i - 1 / (2r) x0_{i+1}``. The first step is first order (no history).
The step into index 0 is first order too ("lower order final"): evenly spaced respacings make
its log-SNR jump several times the previous one (e.g. h = 2.9 after 0.66 with "20" on the
linear schedule), and the 2M extrapolation over it is unstable (worse than DDIM on Gaussian
data). The last step, from index 0 to clean data (sigma = 0), returns x0_0 (the first-order
limit), so N steps take N denoiser calls.
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
    run_loop,
)


def _log_snr(diffusion: GaussianDiffusion, i: int) -> float:
    """lambda_i = log(alpha_i / sigma_i), in float64."""
    abar = float(diffusion.alphas_cumprod[i])
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def dpm_solver_update(
    diffusion: GaussianDiffusion, x: Tensor, i: int, pred_xstart: Tensor, prev_xstart: Tensor | None = None
) -> Tensor:
    """The DPM-Solver++ move from respaced index ``i`` to ``i - 1`` (to clean data when i == 0).

    ``prev_xstart``: the x_0 prediction at index ``i + 1`` for the second-order (2M) update;
    None gives the first-order update, as does ``i <= 1`` (lower order final, see above).
    """
    if i == 0:
        return pred_xstart
    abar, abar_to = float(diffusion.alphas_cumprod[i]), float(diffusion.alphas_cumprod[i - 1])
    h = _log_snr(diffusion, i - 1) - _log_snr(diffusion, i)
    x_coef = math.sqrt((1 - abar_to) / (1 - abar))
    d_coef = -math.sqrt(abar_to) * math.expm1(-h)
    denoised = pred_xstart
    if prev_xstart is not None and i > 1:
        r = (_log_snr(diffusion, i) - _log_snr(diffusion, i + 1)) / h
        denoised = (1 + 1 / (2 * r)) * pred_xstart - (1 / (2 * r)) * prev_xstart
    return x_coef * x + d_coef * denoised


def dpm_solver_step(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x: Tensor,
    i: int,
    prev_xstart: Tensor | None = None,
    *,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool = True,
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
    **options: Any,
) -> Tensor:
    """DPM-Solver++(2M) (``order=2``) or DPM-Solver++(1) (``order=1``, = DDIM) over every step of
    ``diffusion``: one denoiser call per step; ``options``: the shared ones (see ``glide.sampling``).
    Deterministic: the only random draw is ``x_T``; ``noise_sampler`` is accepted for a uniform
    signature and unused."""
    if order not in (1, 2):
        raise ValueError(f"DPM-Solver++ order must be 1 or 2, got {order}")
    prev_xstart: Tensor | None = None  # this run's x_0 of the previous step, for the 2M update

    def step(x: Tensor, i: int, noise: NoiseArg, **hooks: Any) -> dict[str, Tensor]:
        nonlocal prev_xstart
        out = dpm_solver_step(denoiser, diffusion, x, i, prev_xstart if order == 2 else None, **hooks)
        prev_xstart = out["pred_xstart"]
        return out

    return run_loop(step, diffusion, x_T_or_shape, **options)
