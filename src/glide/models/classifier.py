"""Noisy-image classifier for classifier guidance: the ADM encoder half plus attention pooling-free
global average pooling, conditioned on the timestep (Dhariwal & Nichol 2021, "noisy classifier")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import ModelConfig
from .text2im import DEFAULT_CHANNEL_MULT, _parse_ints
from .unet import UNetBackbone, normalization


@dataclass
class ClassifierConfig(ModelConfig):
    """A timestep-conditioned image classifier over ``num_classes`` labels."""

    num_classes: int = 10
    image_size: int = 64
    in_channels: int = 3
    num_channels: int = 64
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = ()
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_head_channels: int = 32
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    noise_schedule: str = "squaredcos_cap_v2"
    diffusion_steps: int = 1000
    model_type: str = field(default="classifier", compare=False)

    MODEL_TYPES = ("classifier",)

    def __post_init__(self):
        super().__post_init__()
        self.channel_mult = _parse_ints(self.channel_mult) or DEFAULT_CHANNEL_MULT.get(self.image_size, ())
        self.attention_resolutions = _parse_ints(self.attention_resolutions)
        if not self.channel_mult:
            raise ValueError(f"pass channel_mult for image_size {self.image_size}")

    def describe(self) -> str:
        return f"noisy-image classifier, {self.image_size} px, {self.num_channels} channels"


class NoisyClassifier(UNetBackbone):
    """``forward(x_t [N,3,H,W], timesteps [N]) -> logits [N, num_classes]``."""

    def __init__(self, config: ClassifierConfig):
        super().__init__(
            in_channels=config.in_channels,
            model_channels=config.num_channels,
            out_channels=0,
            num_res_blocks=config.num_res_blocks,
            attention_ds=tuple(config.image_size // r for r in config.attention_resolutions),
            channel_mult=config.channel_mult,
            dropout=config.dropout,
            num_head_channels=config.num_head_channels,
            use_scale_shift_norm=config.use_scale_shift_norm,
            resblock_updown=config.resblock_updown,
            decoder=False,
        )
        self.config = config
        self.head = nn.Sequential(
            normalization(self.out_ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(self.out_ch, config.num_classes),
        )

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"x must be [batch, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        h, _ = self.run_encoder(x, self.embed_timesteps(timesteps))
        return self.head(h.type(x.dtype))
