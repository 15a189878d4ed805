"""Training for every GLIDE stage (base, upsample, inpaint, upsample-inpaint, noised CLIP, noisy
classifier): ``train(TrainConfig(...)) -> run folder``; the CLI is ``glide train``.

    from glide.training import TrainConfig, train
    run = train(TrainConfig(stage="base", model="tiny-base", data="shapes", steps=500, out="runs/demo"))
    model = glide.checkpoints.load_model(run)   # the latest checkpoint, EMA weights
"""

from .config import STAGES, ConfigError, TrainConfig
from .ema import EMA
from .runtime import learning_rate
from .trainer import TrainingInterrupted, train

__all__ = ["EMA", "STAGES", "ConfigError", "TrainConfig", "TrainingInterrupted", "learning_rate", "train"]
