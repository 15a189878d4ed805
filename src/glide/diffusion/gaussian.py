"""The Gaussian diffusion process: forward noising, posteriors, the reverse-step parameters and
the hybrid training loss of Improved DDPM.

All tables are float64 numpy arrays indexed by the *respaced* step ``t`` (``0..num_timesteps-1``,
0 = least noisy). Per step, the picked coefficient is converted to float32 (float64 for float64
inputs) before it touches a tensor, exactly as the reference does, so results agree with it in
the last bits. ``timestep_map[t]`` is the original (1000-step) index that models and ``cond_fn``
receive. This module never imports a model: it works on model *outputs* or on a callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .schedule import get_named_beta_schedule, respace_betas, space_timesteps

Tensor = torch.Tensor
CondFn = Callable[[Tensor, Tensor], Tensor]


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the first: ``[N, ...] -> [N]``."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by the reference."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats) of 8-bit images ``x`` in [-1, 1] under a Gaussian discretised to
    bins of width 2/255; the outermost bins extend to infinity. Elementwise, shaped like ``x``."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


def clamp_xstart(x0: Tensor, clip: bool | float) -> Tensor:
    """The x_0 estimate's clamp: ``True`` = static, to [-1, 1]; a float ``p`` in (0, 1) = dynamic
    thresholding (Saharia et al. 2022, Imagen): per image, ``s`` = the p-quantile of |x_0| but at
    least 1, then clamp to [-s, s] and divide by s (keeps saturated pixels from piling up at
    +-1 under strong guidance); ``False`` = none."""
    if clip is False or clip is None:
        return x0
    if clip is True:
        return x0.clamp(-1, 1)
    s = torch.quantile(x0.detach().flatten(1).abs().float(), float(clip), dim=1).clamp_min(1.0).to(x0.dtype)
    s = s.view(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def check_clip_denoised(clip: bool | float) -> bool | float:
    """``clip_denoised``: a bool, or a dynamic-thresholding quantile in (0, 1)."""
    if isinstance(clip, bool) or clip is None:
        return bool(clip)
    if isinstance(clip, float) and 0 < clip < 1:
        return clip
    raise ValueError(f"clip_denoised must be True, False or a quantile in (0, 1) for dynamic thresholding, "
                     f"got {clip!r}")


class GaussianDiffusion:
    """A discrete Gaussian diffusion with ``len(betas)`` steps.

    ``betas``: float64 ``[T]`` in (0, 1]. ``timestep_map``: for a respaced process, the original
    step index of each of the T steps (ascending); identity when None.
    """

    def __init__(self, betas: np.ndarray, timestep_map: Sequence[int] | None = None):
        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError("betas must be a non-empty 1-D array")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        self.betas = betas
        self.num_timesteps = int(len(betas))
        if timestep_map is None:
            timestep_map = range(self.num_timesteps)
        self.timestep_map = torch.tensor(list(timestep_map), dtype=torch.long)
        if self.timestep_map.shape != (self.num_timesteps,):
            raise ValueError(f"timestep_map must have {self.num_timesteps} entries")
        if self.num_timesteps > 1 and not bool((self.timestep_map.diff() > 0).all()):
            raise ValueError("timestep_map must be strictly increasing")

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.one_minus_alphas_cumprod = 1.0 - self.alphas_cumprod
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.log_betas = np.log(betas)

        # Posterior q(x_{t-1} | x_t, x_0). Its variance is 0 at t = 0, so the log is clipped by
        # reusing the t = 1 value there; a one-step process (an image-to-image start one step from
        # clean) has no t = 1 and uses beta_0: its only step adds no noise, but log(0) would turn
        # the learned-range variance into NaN.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        self._device_tables: dict[tuple[str, torch.device], Tensor] = {}

    @classmethod
    def from_schedule(
        cls, schedule: str, steps: int = 1000, respacing: str | Sequence[int] | None = None
    ) -> GaussianDiffusion:
        """The named ``steps``-step schedule, respaced by ``respacing`` (see ``space_timesteps``).

        As in the reference, the betas always go through respacing (``None`` / ``""`` keeps every
        step), which changes the full-length betas only in the last bits.
        """
        base = get_named_beta_schedule(schedule, steps)
        kept = space_timesteps(steps, respacing, schedule) if respacing else set(range(steps))
        betas, timestep_map = respace_betas(base, kept)
        return cls(betas, timestep_map)

    def __repr__(self) -> str:
        return f"GaussianDiffusion(num_timesteps={self.num_timesteps}, timestep_map=[{self._map_summary()}])"

    def _map_summary(self) -> str:
        m = self.timestep_map.tolist()
        return ", ".join(map(str, m)) if len(m) <= 6 else f"{m[0]}, {m[1]}, ..., {m[-1]}"

    # ----------------------------------------------------------------------------------------
    # Per-step coefficients

    def extract(self, table: str, t: Tensor | int, x: Tensor) -> Tensor:
        """``getattr(self, table)[t]`` as a tensor ``[N, 1, ..., 1]`` broadcastable to ``x``.

        The float64 value is converted to float32 (float64 if ``x`` is float64) after indexing.
        ``t``: LongTensor ``[N]`` of respaced indices, or an int for the whole batch.
        """
        t = self.as_timesteps(t, x)
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        out = self._on_device(table, x.device)[t].to(dtype)
        return out.view(-1, *([1] * (x.ndim - 1)))

    def _on_device(self, table: str, device: torch.device) -> Tensor:
        """A table as a tensor on ``device`` (float64; float32 where the device lacks float64)."""
        key = (table, device)
        values = self._device_tables.get(key)
        if values is None:
            values = getattr(self, table)
            values = torch.from_numpy(np.ascontiguousarray(values)) if isinstance(values, np.ndarray) else values
            if device.type == "mps" and values.dtype == torch.float64:
                values = values.float()
            values = values.to(device)
            self._device_tables[key] = values
        return values

    def as_timesteps(self, t: Tensor | int, x: Tensor) -> Tensor:
        """Respaced step(s) as a LongTensor ``[N]`` on ``x``'s device (an int is broadcast)."""
        if not isinstance(t, Tensor) or t.ndim == 0:
            return torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}], got {tuple(t.shape)}")
        return t.to(device=x.device, dtype=torch.long)

    def original_timesteps(self, t: Tensor | int, x: Tensor) -> Tensor:
        """Original-process step indices (what models and ``cond_fn`` see) for respaced ``t``."""
        t = self.as_timesteps(t, x)
        return self._on_device("timestep_map", t.device)[t]

    # ----------------------------------------------------------------------------------------
    # Forward process and posterior

    def q_mean_variance(self, x_start: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = self.extract("sqrt_alphas_cumprod", t, x_start) * x_start
        variance = self.extract("one_minus_alphas_cumprod", t, x_start)
        log_variance = self.extract("log_one_minus_alphas_cumprod", t, x_start)
        return mean, variance.expand_as(x_start), log_variance.expand_as(x_start)

    def q_sample(self, x_start: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with the given noise."""
        if noise.shape != x_start.shape:
            raise ValueError("noise must have x_start's shape")
        return (
            self.extract("sqrt_alphas_cumprod", t, x_start) * x_start
            + self.extract("sqrt_one_minus_alphas_cumprod", t, x_start) * noise
        )

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self.extract("posterior_mean_coef1", t, x_t) * x_start + self.extract("posterior_mean_coef2", t, x_t) * x_t
        )
        variance = self.extract("posterior_variance", t, x_t).expand_as(x_t)
        log_variance = self.extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x_0 = x_t / sqrt(abar_t) - sqrt(1 / abar_t - 1) * eps."""
        return (
            self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t
            - self.extract("sqrt_recipm1_alphas_cumprod", t, x_t) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor | int, pred_xstart: Tensor) -> Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_xstart) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t
        )

    # ----------------------------------------------------------------------------------------
    # Reverse process

    def p_mean_variance(
        self,
        model_output: Tensor,
        x_t: Tensor,
        t: Tensor | int,
        clip_denoised: bool | float = True,
        denoised_fn: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Parameters of p(x_{t-1} | x_t) from a model output.

        ``model_output``: ``[N, 2C, ...]`` = (eps, v) with the learned-range variance
        ``log_var = frac * log(beta_t) + (1 - frac) * posterior_log_variance_clipped_t``,
        ``frac = (v + 1) / 2``; or ``[N, C, ...]`` = eps alone with the fixed posterior variance.
        ``denoised_fn`` then the [-1, 1] clamp (if ``clip_denoised``) apply to the x_0 estimate.
        Returns ``dict(mean, variance, log_variance, pred_xstart, eps)``; ``eps`` is the model's.
        """
        channels = x_t.shape[1]
        if model_output.shape[0] != x_t.shape[0] or model_output.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"model output {tuple(model_output.shape)} does not match x {tuple(x_t.shape)}")
        if model_output.shape[1] == 2 * channels:
            eps, var_values = model_output.split(channels, dim=1)
            min_log = self.extract("posterior_log_variance_clipped", t, x_t)
            max_log = self.extract("log_betas", t, x_t)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        elif model_output.shape[1] == channels:
            eps = model_output
            variance = self.extract("posterior_variance", t, x_t).expand_as(x_t)
            log_variance = self.extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        else:
            raise ValueError(
                f"model output has {model_output.shape[1]} channels; expected {channels} or {2 * channels}"
            )
        pred_xstart = self.predict_xstart_from_eps(x_t, t, eps)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        pred_xstart = clamp_xstart(pred_xstart, clip_denoised)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    def condition_mean(self, cond_fn: CondFn, out: dict[str, Tensor], x: Tensor, t: Tensor | int) -> Tensor:
        """Sohl-Dickstein et al.'s guidance: ``mean + variance * cond_fn(x, original_t)``."""
        gradient = cond_fn(x, self.original_timesteps(t, x))
        return out["mean"].float() + out["variance"] * gradient.float()

    def condition_score(self, cond_fn: CondFn, out: dict[str, Tensor], x: Tensor, t: Tensor | int) -> dict[str, Tensor]:
        """Song et al.'s score guidance: ``eps' = eps - sqrt(1 - abar_t) * cond_fn(x, original_t)``.

        eps is re-derived from ``out["pred_xstart"]`` (so after any clamp), x_0 is recomputed from
        eps' without a second clamp, and the mean follows from the posterior. Returns a new dict.
        """
        alpha_bar = self.extract("alphas_cumprod", t, x)
        eps = self.predict_eps_from_xstart(x, t, out["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self.original_timesteps(t, x))
        new = dict(out)
        new["eps"] = eps
        new["pred_xstart"] = self.predict_xstart_from_eps(x, t, eps)
        new["mean"], _, _ = self.q_posterior_mean_variance(new["pred_xstart"], x, t)
        return new

    # ----------------------------------------------------------------------------------------
    # Training

    def hybrid_losses(
        self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor, noise: Tensor
    ) -> dict[str, Tensor]:
        """Improved DDPM's hybrid loss from a model output at ``x_t = q_sample(x_start, t, noise)``.

        Returns per-sample ``[N]`` tensors: ``mse`` = mean (eps - eps_pred)^2; ``vb`` = the
        variational bound term in bits (KL of the true posterior from p at t > 0, the
        discretised decoder NLL at t = 0), computed with eps detached so it only trains the
        variance channels and scaled by ``num_timesteps / 1000``; ``loss = mse + vb``.
        An eps-only output (fixed variance) gets ``vb = 0``.
        """
        channels = x_t.shape[1]
        eps = model_output[:, :channels]
        mse = mean_flat((noise - eps) ** 2)
        if model_output.shape[1] == channels:
            vb = torch.zeros_like(mse)
        else:
            frozen = torch.cat([eps.detach(), model_output[:, channels:]], dim=1)
            vb = self._vb_terms_bpd(frozen, x_start, x_t, t) * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def _vb_terms_bpd(self, model_output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
        out = self.p_mean_variance(model_output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"]))
        nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"], log_scales=0.5 * out["log_variance"])
        nll = mean_flat(nll)
        return torch.where(self.as_timesteps(t, x_t) == 0, nll, kl) / math.log(2.0)

    def training_losses(
        self,
        model_fn: Callable[[Tensor, Tensor], Tensor],
        x_start: Tensor,
        t: Tensor,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Noise ``x_start`` to step ``t`` (respaced indices), run ``model_fn(x_t, original_t)``
        and return ``hybrid_losses`` (``dict(loss, mse, vb)``, each ``[N]``).

        ``noise`` defaults to ``torch.randn_like(x_start)``, as in the reference. (The trainer
        draws its own per-sample noise for exact resumes and calls ``hybrid_losses``.)
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model_fn(x_t, self.original_timesteps(t, x_start))
        return self.hybrid_losses(model_output, x_start, x_t, t, noise)
