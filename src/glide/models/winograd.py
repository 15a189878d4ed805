"""Winograd F(4x4, 3x3) convolution for fp32 inference on a CPU.

A 3x3 convolution computes each 4x4 block of outputs from a 6x6 block of inputs with 36
multiplications per (input, output) channel pair instead of 144 (Lavin & Gray, 2015, "Fast
Algorithms for Convolutional Neural Networks"). On the official-size models the convolutions are
84% of a step and already run at the CPU's peak rate, so doing less arithmetic is what is left:
measured on a 2-core AMD EPYC, a base step took 0.68x the time (``benchmarks/sampling.py``). The
price is rounding and memory: a layer's output moves by up to ~1e-4 of its scale (the transforms
multiply by up to 5 and 8), a full base step's eps by under 5e-5, and the transformed weights take
4x the layers' weights. Hence only for float32 and only where :func:`use_winograd` is asked for
(the CLI does it for large models in fp32 on a CPU; ``--no-winograd`` turns it off).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Input (B^T), filter (G) and output (A^T) transforms for the interpolation points 0, +-1, +-2, inf.
_BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
       (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
      (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))


def _kron(rows) -> torch.Tensor:
    m = torch.tensor(rows, dtype=torch.float64)
    return torch.kron(m, m).float()  # both spatial axes at once: one matrix product per transform


_INPUT = _kron(_BT)  # [36, 36]
_FILTER = _kron(_G)  # [36, 9]
_OUTPUT = _kron(_AT)  # [16, 36]
# Work on bands of tile rows whose transformed inputs stay in the cache (measured: at 256 px the
# unbanded transforms made the layer 1.5x slower than the direct convolution, banded 0.8x).
_BAND_ELEMENTS = 1 << 16


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """[out, in, 3, 3] filters -> [36, out, in] Winograd-domain filters (4x the memory)."""
    out_c, in_c = weight.shape[:2]
    return (_FILTER @ weight.detach().reshape(out_c * in_c, 9).T).view(36, out_c, in_c)


def winograd_conv3x3(x: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for float32 ``x`` [B, C, H, W], with
    ``weight_t = transform_weight(weight)``. The result has channels-last strides."""
    b, c, h, w = x.shape
    out_c = weight_t.shape[1]
    tiles_h, tiles_w = -(-h // 4), -(-w // 4)
    # Channels last, padded by one (plus up to three to fill the last tiles): tiles gather along C.
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1 + 4 * tiles_w - w, 1, 1 + 4 * tiles_h - h))
    out = x.new_empty(b, 4 * tiles_h, 4 * tiles_w, out_c)
    band = max(1, _BAND_ELEMENTS // (b * tiles_w * max(c, out_c)))
    for r0 in range(0, tiles_h, band):
        r1 = min(tiles_h, r0 + band)
        tiles = padded[:, 4 * r0:4 * r1 + 2].unfold(1, 6, 4).unfold(2, 6, 4)  # [B, r, tw, C, 6, 6]
        d = tiles.permute(4, 5, 0, 1, 2, 3).reshape(36, -1)
        m = torch.bmm((_INPUT @ d).view(36, -1, c), weight_t.transpose(1, 2))  # [36, tiles, out]
        y = (_OUTPUT @ m.view(36, -1)).view(4, 4, b, r1 - r0, tiles_w, out_c)
        out[:, 4 * r0:4 * r1].view(b, r1 - r0, 4, tiles_w, 4, out_c).copy_(y.permute(2, 3, 0, 4, 1, 5))
    y = out[:, :h, :w].permute(0, 3, 1, 2)
    return y if bias is None else y + bias[:, None, None]


# Below this map size the direct convolution runs: at 8 px Winograd saved only 15% of a layer's
# time, and the official base keeps 120M of its convolution weights there (4x that transformed).
MIN_SIZE = 16


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` (same parameters and state-dict keys) that runs
    :func:`winograd_conv3x3` for float32 CPU inputs without gradients on maps of ``MIN_SIZE`` px
    and up, and the direct convolution otherwise (training, half precision, GPUs, small maps).
    The transformed weights are kept, which costs 4x the layer's weights in memory."""

    def _cached_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version)  # new weights -> a new transform
        if getattr(self, "_winograd_key", None) != key:
            self._winograd_weight, self._winograd_key = transform_weight(self.weight), key
        return self._winograd_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 or min(x.shape[-2:]) < MIN_SIZE
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return super().forward(x)
        return winograd_conv3x3(x, self._cached_weight(), self.bias)


def _eligible(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.padding == (1, 1) and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros")


def use_winograd(model: nn.Module) -> int:
    """Run ``model``'s 3x3 stride-1 convolutions as :class:`WinogradConv2d`, in place (the weights
    are shared, not copied); returns how many layers changed."""
    changed = [m for m in model.modules() if _eligible(m)]
    for module in changed:
        module.__class__ = WinogradConv2d  # same attributes and parameters; only forward differs
    return len(changed)
