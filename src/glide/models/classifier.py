"""Noisy-image classifier for classifier guidance: the ADM encoder half plus attention pooling-free
global average pooling, conditioned on the timestep (Dhariwal & Nichol 2021, "noisy classifier")."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .text2im import DEFAULT_CHANNEL_MULT, _parse_ints
from .unet import UNetBackbone, normalization


@dataclass
class ClassifierConfig:
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

    model_type = "classifier"

    def __post_init__(self):
        self.channel_mult = _parse_ints(self.channel_mult) or DEFAULT_CHANNEL_MULT.get(self.image_size, ())
        self.attention_resolutions = _parse_ints(self.attention_resolutions)
        if not self.channel_mult:
            raise ValueError(f"pass channel_mult for image_size {self.image_size}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(channel_mult=list(self.channel_mult), attention_resolutions=list(self.attention_resolutions),
                 model_type=self.model_type)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassifierConfig:
        d = {k: v for k, v in d.items() if k != "model_type"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ClassifierConfig keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)


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
