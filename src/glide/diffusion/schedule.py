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


def _parse_counts(spec: str) -> list[int]:
    try:
        return [int(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"invalid respacing {spec!r}: expected 'N', 'ddimN', 'fast27' or a comma list like '10,10,3'"
        ) from None


def _ddim_steps(num_steps: int, count: int) -> set[int]:
    """The DDIM paper's striding: the smallest integer stride giving exactly ``count`` steps from 0."""
    for stride in range(1, num_steps + 1):
        if len(range(0, num_steps, stride)) == count:
            return set(range(0, num_steps, stride))
    raise ValueError(f"cannot take exactly {count} steps of {num_steps} with an integer stride (ddim{count})")


def space_timesteps(num_steps: int, section_counts: str | Sequence[int]) -> set[int]:
    """Which original steps to keep when sampling with fewer steps.

    ``section_counts`` is one of:

    * ``"100"`` or ``"10,10,3,2,2"`` (or a list of ints): the ``num_steps`` steps are split into
      equal sections (the first ``num_steps % len`` get one extra step), and each section is
      strided to its count, endpoints included, with Python's round-half-to-even.
    * ``"ddimK"``: the smallest integer stride that gives exactly K steps starting at 0.
    * ``"fast27"``: the sections ``10,10,3,2,2`` with the last step swapped for the third-last
      (the official upsampler setting; it avoids artifacts from the noisiest step).

    Returns the set of kept original step indices.
    """
    if isinstance(section_counts, str):
        spec = section_counts.strip()
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
