"""Training for every GLIDE stage (base, upsample, inpaint, upsample-inpaint, noised CLIP, noisy
classifier): ``train(TrainConfig(...)) -> run folder``; the CLI is ``glide train``.

    from glide.training import TrainConfig, train
    run = train(TrainConfig(stage="base", model="tiny-base", data="shapes", steps=500, out="runs/demo"))
    model = glide.checkpoints.load_model(run)   # the latest checkpoint, EMA weights
"""

from .config import STAGES, ConfigError, TrainConfig

__all__ = ["EMA", "STAGES", "ConfigError", "TrainConfig", "TrainingInterrupted", "learning_rate", "train"]
# Imported on first use: they import torch, and ``glide train --help`` reads only the config.
_LAZY = {"EMA": ".ema", "TrainingInterrupted": ".trainer", "learning_rate": ".runtime", "train": ".trainer"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name], __name__), name)
