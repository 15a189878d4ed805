"""Beta schedules and timestep respacing.

Everything here is float64 numpy and bit-compatible with the official GLIDE / guided-diffusion
code: the same arithmetic in the same order, so tables and timestep lists match exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

SCHEDULES = ("linear", "squaredcos_cap_v2")


def _cosine_alpha_bar(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Betas ``[num_steps]`` float64 of a named schedule.

    * ``linear``: Ho et al.'s schedule stretched to any length,
      ``linspace(scale * 1e-4, scale * 0.02, num_steps)`` with ``scale = 1000 / num_steps``.
    * ``squaredcos_cap_v2``: Nichol & Dhariwal's cosine schedule,
      ``beta_i = min(1 - abar((i+1)/N) / abar(i/N), 0.999)``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name == "squaredcos_cap_v2":
        betas = [
            min(1 - _cosine_alpha_bar((i + 1) / num_steps) / _cosine_alpha_bar(i / num_steps), 0.999)
            for i in range(num_steps)
        ]
        return np.array(betas, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}; valid names: {', '.join(SCHEDULES)}")


# Spacings chosen by noise level rather than by t: the name prefixes a step count ("logsnr10").
# trailing: Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"),
#   t = round(T - k T / N) - 1: always starts at the noisiest step, never visits t = 0.
# logsnr: evenly spaced in log-SNR lambda = log(alpha / sigma) between the ends of the schedule
#   (DPM-Solver's recommendation for pixel-space models).
# karras: sigma = sqrt(1 - abar) / sqrt(abar) spaced as in Karras et al. 2022 (EDM) with rho = 7,
#   which packs steps towards the clean end.
# logsnr and karras start where sigma <= SIGMA_MAX (EDM's sigma_max) rather than at the last step:
# there x_t holds under 1.3% signal, so a draw of N(0, I) serves as x_t, while the cosine schedule's
# last steps (sigma up to 2e4) would take several of the steps and make the first x_0 estimate,
# x_0 = (x_t - sigma eps) / alpha, amplify the model's error in eps by up to 2e4.
NOISE_SPACINGS = ("trailing", "logsnr", "karras")
KARRAS_RHO = 7.0
SIGMA_MAX = 80.0


def _parse_counts(spec: str) -> list[int]:
    try:
        return [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"invalid respacing {spec!r}: expected 'N', 'ddimN', 'trailingN', 'logsnrN', 'karrasN', 'fast27' "
            "or a comma list like '10,10,3'"
        ) from None


def _distinct_descending(targets: Sequence[int], num_steps: int) -> set[int]:
    """``targets`` (noisiest first) made strictly decreasing within 0..num_steps-1, each moved as
    little as needed: rounding a dense end of a spacing to integer steps can repeat a step."""
    kept = [min(int(t), num_steps - 1) for t in targets]
    for k in range(1, len(kept)):
        kept[k] = min(kept[k], kept[k - 1] - 1)
    kept[-1] = max(kept[-1], 0)
    for k in range(len(kept) - 2, -1, -1):
        kept[k] = max(kept[k], kept[k + 1] + 1)
    return set(kept)


def _noise_spacing(kind: str, num_steps: int, count: int, schedule: str) -> set[int]:
    """``count`` steps of a ``num_steps``-step ``schedule`` spaced by noise level (NOISE_SPACINGS)."""
    if not 1 <= count <= num_steps:
        raise ValueError(f"cannot take {count} steps of a {num_steps}-step process ({kind}{count})")
    if kind == "trailing":
        return _distinct_descending(np.round(np.arange(num_steps, 0, -num_steps / count)) - 1, num_steps)
    abar = np.cumprod(1.0 - get_named_beta_schedule(schedule, num_steps))
    log_sigma = 0.5 * (np.log1p(-abar) - np.log(abar))  # -lambda: increasing in t
    top = min(log_sigma[-1], math.log(SIGMA_MAX))
    if count == 1:
        targets = np.array([top])
    elif kind == "logsnr":
        targets = np.linspace(top, log_sigma[0], count)
    else:
        lo, hi = np.exp(log_sigma[0]) ** (1 / KARRAS_RHO), math.exp(top) ** (1 / KARRAS_RHO)
        targets = KARRAS_RHO * np.log(np.linspace(hi, lo, count))
    nearest = np.abs(log_sigma[None, :] - targets[:, None]).argmin(axis=1)
    return _distinct_descending(nearest, num_steps)


def step_count(steps: int | str, num_steps: int = 1000) -> int:
    """How many steps a ``--steps`` value samples: a count ``N``, or a respacing such as
    ``trailing10`` or ``10,10,3,2,2`` (ValueError, saying why, for anything else). The count of a
    respacing does not depend on the beta schedule."""
    if isinstance(steps, bool) or not isinstance(steps, int | str):
        raise ValueError(f"steps must be a count or a respacing such as 'trailing10', got {steps!r}")
    if isinstance(steps, int):
        if not 1 <= steps <= num_steps:
            raise ValueError(f"cannot take {steps} steps of a {num_steps}-step process")
        return steps
    return len(space_timesteps(num_steps, steps))


def _ddim_steps(num_steps: int, count: int) -> set[int]:
    """The DDIM paper's striding: the smallest integer stride giving exactly ``count`` steps from 0."""
    for stride in range(1, num_steps + 1):
        if len(range(0, num_steps, stride)) == count:
            return set(range(0, num_steps, stride))
    raise ValueError(f"cannot take exactly {count} steps of {num_steps} with an integer stride (ddim{count})")


def space_timesteps(
    num_steps: int, section_counts: str | Sequence[int], schedule: str = "squaredcos_cap_v2"
) -> set[int]:
    """Which original steps to keep when sampling with fewer steps.

    ``section_counts`` is one of:

    * ``"100"`` or ``"10,10,3,2,2"`` (or a list of ints): the ``num_steps`` steps are split into
      equal sections (the first ``num_steps % len`` get one extra step), and each section is
      strided to its count, endpoints included, with Python's round-half-to-even.
    * ``"ddimK"``: the smallest integer stride that gives exactly K steps starting at 0.
    * ``"fast27"``: the sections ``10,10,3,2,2`` with the last step swapped for the third-last
      (the official upsampler setting; it avoids artifacts from the noisiest step).
    * ``"trailingK"``, ``"logsnrK"``, ``"karrasK"``: K steps spaced by noise level (see
      NOISE_SPACINGS); the last two read the named beta ``schedule``. Always exactly K steps, so
      the count never depends on the schedule.

    Returns the set of kept original step indices.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        for kind in NOISE_SPACINGS:
            if spec.startswith(kind):
                count = _parse_counts(spec[len(kind):])
                if len(count) != 1:
                    raise ValueError(f"invalid respacing {section_counts!r}: expected '{kind}K' with one count K")
                return _noise_spacing(kind, num_steps, count[0], schedule)
        if spec.startswith("ddim"):
            count = _parse_counts(spec[len("ddim") :])
            if len(count) != 1 or count[0] < 1:
                raise ValueError(f"invalid respacing {section_counts!r}: expected 'ddimK' with K >= 1")
            return _ddim_steps(num_steps, count[0])
        if spec == "fast27":
            steps = space_timesteps(num_steps, [10, 10, 3, 2, 2])
            steps.discard(num_steps - 1)
            steps.add(num_steps - 3)
            return steps
        counts = _parse_counts(spec)
    else:
        counts = [int(c) for c in section_counts]
    if not counts:
        raise ValueError("respacing needs at least one section count")
    if len(counts) > num_steps:
        raise ValueError(f"cannot split {num_steps} steps into {len(counts)} sections")

    size_per, extra = divmod(num_steps, len(counts))
    start = 0
    kept: list[int] = []
    for index, count in enumerate(counts):
        size = size_per + (1 if index < extra else 0)
        if count < 1:
            raise ValueError(f"section counts must be >= 1, got {count}")
        if count > size:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps")
        stride = 1 if count == 1 else (size - 1) / (count - 1)
        position = 0.0  # accumulated by repeated float addition, as the reference does
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


def respace_betas(betas: np.ndarray, kept_steps: set[int] | Sequence[int]) -> tuple[np.ndarray, list[int]]:
    """Betas of the process that visits only ``kept_steps``: ``1 - abar[t_k] / abar[t_{k-1}]``.

    ``abar`` before the first kept step is taken as 1. Returns ``(new_betas, timestep_map)``
    where ``timestep_map`` is the sorted list of kept original steps.
    """
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    kept = set(int(s) for s in kept_steps)
    if not kept or min(kept) < 0 or max(kept) >= len(alphas_cumprod):
        raise ValueError(f"kept steps must be a non-empty subset of 0..{len(alphas_cumprod) - 1}")
    last = 1.0
    new_betas = []
    timestep_map = []
    for step, abar in enumerate(alphas_cumprod):
        if step in kept:
            new_betas.append(1 - abar / last)
            last = abar
            timestep_map.append(step)
    return np.array(new_betas, dtype=np.float64), timestep_map
