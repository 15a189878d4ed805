"""Pieces every sampler shares: the starting noise, per-step noise, the denoiser call and the loop
(``run_loop``); each sampler module adds only its step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from ..diffusion import GaussianDiffusion
from ..diffusion.gaussian import check_clip_denoised, clamp_xstart

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
CondFn = Callable[[Tensor, Tensor], Tensor]
DenoisedFn = Callable[[Tensor], Tensor]
NoiseSampler = Callable[[int], Tensor]
Callback = Callable[[dict], None]
NoiseArg = Tensor | Callable[[], Tensor] | None


def initial_noise(
    x_T_or_shape: Tensor | Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``x_T``: the given tensor, or ``torch.randn(shape, generator=generator)`` (drawn on the
    generator's device, so a CPU generator reproduces ``torch.manual_seed`` runs), on ``device``."""
    if isinstance(x_T_or_shape, Tensor):
        return x_T_or_shape if device is None else x_T_or_shape.to(device)
    shape = tuple(int(s) for s in x_T_or_shape)
    draw_device = generator.device if generator is not None else (device or "cpu")
    x = torch.randn(shape, generator=generator, device=draw_device)
    return x if device is None else x.to(device)


def default_noise_sampler(generator: torch.Generator | None, like: Tensor) -> NoiseSampler:
    """Per-step noise ``torch.randn(like.shape, generator=generator)``, one draw per call."""

    def draw(step: int) -> Tensor:
        draw_device = generator.device if generator is not None else like.device
        noise = torch.randn(like.shape, generator=generator, device=draw_device, dtype=like.dtype)
        return noise.to(like.device)

    return draw


def resolve_noise(noise: NoiseArg, like: Tensor) -> Tensor:
    """A noise argument of a step function: a tensor, a zero-argument callable, or None (zeros)."""
    if noise is None:
        return torch.zeros_like(like)
    return noise() if callable(noise) else noise


def with_grad(cond_fn: CondFn | None) -> CondFn | None:
    """Run ``cond_fn`` with autograd enabled (loops run under ``no_grad``) and detach its output."""
    if cond_fn is None:
        return None

    def wrapped(x: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            return cond_fn(x, t).detach()

    return wrapped


def process_xstart(x0: Tensor, denoised_fn: DenoisedFn | None, clip_denoised: bool | float) -> Tensor:
    """Apply ``denoised_fn`` and then the clamp (``clamp_xstart``) to an x_0 estimate."""
    if denoised_fn is not None:
        x0 = denoised_fn(x0)
    return clamp_xstart(x0, clip_denoised)


def model_mean_variance(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x: Tensor,
    t: Tensor | int,
    *,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool | float = True,
) -> dict[str, Tensor]:
    """Call ``denoiser(x, original_t)`` and turn its output into ``p_mean_variance``'s dict."""
    output = denoiser(x, diffusion.original_timesteps(t, x))
    return diffusion.p_mean_variance(output, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn)


def predict_eps_xstart(
    denoiser: Denoiser,
    diffusion: GaussianDiffusion,
    x: Tensor,
    t: Tensor | int,
    *,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool | float = True,
) -> dict[str, Tensor]:
    """The (x_0, eps) pair the deterministic samplers step with.

    x_0 goes through ``denoised_fn`` and the clamp, ``cond_fn`` corrects the score
    (``condition_score``), and eps is re-derived from the final x_0, as the reference DDIM does.
    """
    out = model_mean_variance(denoiser, diffusion, x, t, denoised_fn=denoised_fn, clip_denoised=clip_denoised)
    if cond_fn is not None:
        out = diffusion.condition_score(cond_fn, out, x, t)
    out["eps"] = diffusion.predict_eps_from_xstart(x, t, out["pred_xstart"])
    return out


class Step(Protocol):
    """One move of a sampler: ``step(x, i, noise, *, cond_fn, denoised_fn, clip_denoised)``
    from respaced index ``i`` to ``i - 1`` -> ``dict(sample, pred_xstart, ...)``."""

    def __call__(
        self,
        x: Tensor,
        i: int,
        noise: NoiseArg,
        /,
        *,
        cond_fn: CondFn | None,
        denoised_fn: DenoisedFn | None,
        clip_denoised: bool | float,
    ) -> dict[str, Tensor]: ...


def run_loop(
    step: Step,
    diffusion: GaussianDiffusion,
    x_T_or_shape: Tensor | Sequence[int],
    *,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    cond_fn: CondFn | None = None,
    denoised_fn: DenoisedFn | None = None,
    clip_denoised: bool | float = True,
    progress: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The loop every sampler shares (options: see ``glide.sampling``): ``x_T``, then ``step``
    from respaced index N-1 down to 0, under ``no_grad``.

    ``noise`` is a zero-argument callable drawing ``noise_sampler(k)`` for the k-th step (k = 0
    the noisiest), so a deterministic step that never calls it draws nothing. A multistep
    sampler passes a fresh closure per run that keeps its own history between calls.
    """
    clip_denoised = check_clip_denoised(clip_denoised)
    x = initial_noise(x_T_or_shape, generator, device)
    noise_sampler = noise_sampler or default_noise_sampler(generator, x)
    hooks = {"cond_fn": with_grad(cond_fn), "denoised_fn": denoised_fn, "clip_denoised": clip_denoised}
    indices = range(diffusion.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices)
    with torch.no_grad():
        for k, i in enumerate(indices):
            out = step(x, i, lambda k=k: noise_sampler(k), **hooks)
            x = out["sample"]
            if callback is not None:
                callback({"i": i, "t": int(diffusion.timestep_map[i]), "x": x, "pred_xstart": out["pred_xstart"]})
    return x
