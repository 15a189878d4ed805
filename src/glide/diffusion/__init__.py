"""The math of the forward and reverse diffusion process (no nn.Modules, no models)."""

from .gaussian import (
    GaussianDiffusion,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from .schedule import SCHEDULES, get_named_beta_schedule, respace_betas, space_timesteps, step_count

__all__ = [
    "SCHEDULES",
    "GaussianDiffusion",
    "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule",
    "mean_flat",
    "normal_kl",
    "respace_betas",
    "space_timesteps",
    "step_count",
]
