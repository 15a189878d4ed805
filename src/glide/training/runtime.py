"""How a run runs, apart from the loop itself: launch checks, precision (autocast + GradScaler),
the learning-rate schedule, seeding, the progress bar, and Ctrl-C / SIGTERM as a request to stop
cleanly after the current step.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch

from .config import ConfigError, TrainConfig
from .distributed import Distributed, LaunchError

logger = logging.getLogger("glide.training")


def check_launch(cfg: TrainConfig, env: Distributed) -> int:
    """The per-rank micro-batch; errors for launches that cannot work."""
    per_step = env.world_size * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise LaunchError(
            f"the global --batch-size {cfg.batch_size} is not divisible by world size {env.world_size} x --grad-accum "
            f"{cfg.grad_accum} = {per_step}; pick a multiple of {per_step} (each rank runs batch / (world x accum))")
    configs = env.gather(cfg.to_dict())
    for rank, other in enumerate(configs):
        if other != configs[0]:
            differing = sorted(k for k in other if other[k] != configs[0].get(k))
            raise LaunchError(f"rank {rank} was started with other options than rank 0 ({', '.join(differing)}); "
                              f"start every rank with the same command")
    return cfg.batch_size // per_step


def precision_tools(precision: str, device: torch.device):
    """(autocast factory, GradScaler) for ``--precision``; weights stay float32 in every mode."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU (it trains with a GradScaler); on CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU has no bfloat16 support; use fp16 or fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext
    scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=precision == "fp16")
    return autocast, scaler


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then constant, cosine or linear decay to ``min_lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.lr_schedule == "cosine":
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr + (cfg.min_lr - cfg.lr) * progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_progress(cfg: TrainConfig, step: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=step, disable=not enabled, unit="step", dynamic_ncols=True,
                desc=f"train {cfg.stage}")


class StopRequest:
    """Ctrl-C / SIGTERM ask for a clean stop: finish the step, save, raise ``TrainingInterrupted``.

    A second Ctrl-C stops at once (no checkpoint).
    """

    def __init__(self):
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        logger.warning(f"{signal.Signals(signum).name}: finishing this step, saving a checkpoint, then stopping"
                       + (" (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""))

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
