"""The shapes judge: a small CNN that reads a CaptionedShapes scene back from an image.

For each of the ``NUM_CLASSES`` (shape, colour) pairs (unique per scene by construction) it
predicts whether the pair is present, its size (small / large) and its centre ``(x, y)`` as
fractions of the side (y down, as in ``glide.data.shapes``). ``glide.evaluation.judge`` turns
that into scenes and caption scores; its penultimate features serve shapes-FID / precision /
recall. Trained by ``python -m glide.evaluation.train_judge``; bundled as ``bundled:shapes-judge``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import NUM_CLASSES
from .config import ModelConfig

OUTPUTS_PER_PAIR = 4  # presence logit, size logit (large > 0), centre x, centre y


@dataclass
class JudgeConfig(ModelConfig):
    """``image_size``: inputs of another size are resized to it. ``channels``: the stem's width,
    then one stride-2 stage each; the last stage's map (``image_size / 2**(len - 1)`` cells a
    side) holds one heat map per pair."""

    image_size: int = 32
    channels: tuple[int, ...] = (32, 48, 96)
    num_pairs: int = NUM_CLASSES
    model_type: str = field(default="shapes-judge", compare=False)

    MODEL_TYPES = ("shapes-judge",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if len(self.channels) < 2 or self.image_size % 2 ** (len(self.channels) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**{len(self.channels) - 1} "
                             f"(one halving per stage after the first of channels={self.channels})")

    @property
    def feature_dim(self) -> int:
        """Width of the penultimate features: the last map's mean and max over space."""
        return 2 * self.channels[-1]

    def describe(self) -> str:
        return f"shapes judge, {self.image_size} px, {self.feature_dim} features"


class JudgeOutput(NamedTuple):
    """``presence`` / ``large``: logits ``[N, P]``; ``centre``: ``[N, P, 2]`` (x, y in [0, 1]);
    ``features``: the penultimate activations ``[N, feature_dim]``."""

    presence: torch.Tensor
    large: torch.Tensor
    centre: torch.Tensor
    features: torch.Tensor


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU()]


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(*_conv(c_in, c_out, 2), *_conv(c_out, c_out))


class ShapesJudge(nn.Module):
    """``forward(images [N, 3, H, W] in [-1, 1]) -> JudgeOutput``; any H = W is resized to ``image_size``.

    A heat map per pair on a coarse grid: presence is its maximum, the centre its soft-argmax
    (sub-cell precise), the size logit its softmax-weighted mean of a size map. Being
    translation-equivariant, it learns positions from few examples.
    """

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.stages = nn.Sequential(*_conv(3, c[0]), *(_stage(a, b) for a, b in zip(c, c[1:], strict=False)))
        self.heads = nn.Conv2d(c[-1], 2 * config.num_pairs, 1)
        self.register_buffer("grid", torch.empty(0), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)build ``grid``, the (x, y) centre of each heat-map cell; no checkpoint stores it."""
        side = self.config.image_size // 2 ** (len(self.config.channels) - 1)
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        self.grid = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).view(-1, 2)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` checked ([N, 3, H, W]) and resized (antialiased) to ``image_size``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"the judge reads RGB images [N, 3, H, W] in [-1, 1], got {tuple(images.shape)}")
        size = self.config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                   align_corners=False)
        return images

    def _map(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.resize(images))

    @staticmethod
    def _pool(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``[N, feature_dim]`` (shapes-FID, precision and recall use them)."""
        return self._pool(self._map(images))

    def forward(self, images: torch.Tensor) -> JudgeOutput:
        h = self._map(images)
        heat, size = self.heads(h).flatten(2).chunk(2, dim=1)  # [N, P, cells] each
        weights = heat.softmax(-1)
        return JudgeOutput(heat.amax(-1), (weights * size).sum(-1), weights @ self.grid, self._pool(h))
