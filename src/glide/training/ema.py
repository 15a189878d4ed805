"""Exponential moving averages of a model's weights, one copy per rate.

After every optimizer step ``ema = rate * ema + (1 - rate) * param`` for every floating-point
entry of the state dict; integer buffers are copied. Given the step number, the rate warms up
as ``min(rate, (1 + step) / (10 + step))``, so that the averages of short runs and of the first
thousands of steps are not dominated by the random initial weights. The averages live in float32 on the model's
device and are saved beside the raw weights as ``ema-<rate>.safetensors``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checkpoints.files import ema_name as rate_name  # the run-folder layout owns EMA file names


class EMA:
    """EMA copies of ``model``'s state dict for each rate in ``rates``."""

    def __init__(self, model: nn.Module, rates: tuple[float, ...] | list[float]):
        self.rates = tuple(float(r) for r in rates)
        if len({rate_name(r) for r in self.rates}) != len(self.rates):
            raise ValueError(f"EMA rates must be distinct, got {list(self.rates)}")
        state = model.state_dict()
        self.keys = list(state)
        self.float_keys = [k for k in self.keys if state[k].is_floating_point()]
        self.other_keys = [k for k in self.keys if not state[k].is_floating_point()]
        self.averages: dict[float, dict[str, torch.Tensor]] = {
            rate: {k: v.detach().float().clone() for k, v in state.items()} for rate in self.rates
        }

    @staticmethod
    def warmed_up(rate: float, step: int | None) -> float:
        """The rate used at optimizer step ``step`` (0-based); the plain rate when step is None."""
        return rate if step is None else min(rate, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """Move every average one step towards the model's current weights."""
        if not self.rates:
            return
        state = model.state_dict()
        current = [state[k].detach().float() for k in self.float_keys]
        for rate, average in self.averages.items():
            weight = 1.0 - self.warmed_up(rate, step)
            torch._foreach_lerp_([average[k] for k in self.float_keys], current, weight)
            for k in self.other_keys:
                average[k].copy_(state[k])

    def state_dict(self, rate: float) -> dict[str, torch.Tensor]:
        return self.averages[rate]

    def load_state_dict(self, rate: float, state: dict[str, torch.Tensor]) -> None:
        average = self.averages[rate]
        if state.keys() != average.keys():
            missing = sorted(average.keys() - state.keys())[:3]
            raise ValueError(f"EMA {rate_name(rate)} does not fit the model (missing keys such as {missing})")
        for k, v in state.items():
            average[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, rate: float, model: nn.Module) -> None:
        """Load the average of ``rate`` into ``model`` (e.g. a copy used for sampling)."""
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.averages[rate].items()})
