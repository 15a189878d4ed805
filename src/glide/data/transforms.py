"""Image and caption preprocessing, and the degraded low-res input the upsampler trains on.

Images leave this module as ``FloatTensor [3, R, R]`` in [-1, 1]; loading, converting and
resizing live in :mod:`glide.images`, shared with inference.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from glide.images import image_to_tensor, resize_center_crop, to_rgb

Range = float | tuple[float, float] | None

_WHITESPACE = re.compile(r"\s+")
_INVISIBLE = {"\ufeff", "\u200b", "\u2060"}  # BOM, zero-width space, word joiner


def clean_caption(text: str) -> str:
    """NFC-normalise, drop control characters, collapse whitespace runs to one space, strip."""
    text = unicodedata.normalize("NFC", text)
    text = _WHITESPACE.sub(" ", text)
    text = "".join(
        ch for ch in text if ch not in _INVISIBLE and unicodedata.category(ch) not in ("Cc", "Cs")
    )
    return text.strip()


class ImageTransform:
    """PIL image (any mode, any size) -> ``FloatTensor [3, resolution, resolution]`` in [-1, 1].

    No random flip here: the trainer flips (``--random-flip``) with its own per-sample seeds.
    """

    def __init__(self, resolution: int):
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return image_to_tensor(resize_center_crop(to_rgb(image), self.resolution))

    def __repr__(self) -> str:
        return f"ImageTransform(resolution={self.resolution})"


def _per_sample(value: Range, batch: int, generator: torch.Generator | None) -> torch.Tensor:
    """A float, ``(low, high)`` (uniform per sample) or None (0) -> FloatTensor [batch]."""
    if value is None:
        return torch.zeros(batch)
    if isinstance(value, Sequence):
        low, high = (float(v) for v in value)
        if high < low:
            raise ValueError(f"range must be (low, high) with low <= high, got {value}")
        device = generator.device if generator is not None else None
        return low + (high - low) * torch.rand(batch, generator=generator, device=device).cpu()
    return torch.full((batch,), float(value))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``x [B, C, H, W]`` with its own ``sigma [B]`` (pixels; 0 = unchanged)."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, h - 1, w - 1)  # reflect padding needs radius < size
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sigma = sigma.to(x).clamp_min(1e-6)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / sigma) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def make_low_res(
    image: torch.Tensor,
    low_res_size: int,
    blur_sigma: Range = None,
    noise_std: Range = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The upsampler's conditioning input: ``image [B, 3, H, W]`` -> ``[B, 3, s, s]``, s = low_res_size.

    Antialiased bicubic downsampling (clamped to [-1, 1]), then optional Gaussian blur (sigma in
    low-res pixels) and additive Gaussian noise (std in [-1, 1] units, not clamped). ``blur_sigma``
    and ``noise_std`` are a number or a ``(low, high)`` range drawn uniformly per image.
    """
    if image.ndim != 4:
        raise ValueError(f"make_low_res expects [B, 3, H, W], got shape {tuple(image.shape)}")
    low = F.interpolate(image, size=(low_res_size, low_res_size), mode="bicubic", antialias=True,
                        align_corners=False).clamp(-1, 1)
    batch = image.shape[0]
    sigma = _per_sample(blur_sigma, batch, generator)
    if bool((sigma > 0).any()):
        low = gaussian_blur(low, sigma)
    std = _per_sample(noise_std, batch, generator)
    if bool((std > 0).any()):
        device = generator.device if generator is not None else low.device
        noise = torch.randn(low.shape, generator=generator, device=device, dtype=low.dtype).to(low.device)
        low = low + std.to(low)[:, None, None, None] * noise
    return low
