"""The noised CLIP's transformer pieces: float32 LayerNorm, ``Affine`` (``w`` / ``b``), pre-LN
attention and MLP residual blocks, and the feature head. Parameter names follow the official
``glide_text2im/clip`` checkpoints, so their state dicts load with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _ZeroMiddleThirdGrad(torch.autograd.Function):
    """Identity whose backward zeroes the middle third (``chunk(3)[1]``) of the gradient.

    The official code applies this to the q and v biases (a relic of a fused qkv bias whose key
    part gets no gradient). It changes only parameter gradients, never outputs or input gradients.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad.chunk(3)[1].zero_()
        return grad


class LayerNorm(nn.Module):
    """LayerNorm over the last dim, computed in float32, with parameters ``g`` and ``b``."""

    def __init__(self, n_state: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(n_state))
        self.b = nn.Parameter(torch.zeros(n_state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.g.shape, self.g.float(), self.b.float(), self.eps)


class Affine(nn.Module):
    """Linear layer with weight ``w`` ``[n_out, n_in]`` and optional bias ``b``."""

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        bias: bool = True,
        std: float | None = None,
        zero_middle_bias_grad: bool = False,
    ):
        super().__init__()
        self.w = nn.Parameter(torch.empty(n_out, n_in))
        nn.init.normal_(self.w, std=std if std is not None else math.sqrt(2 / (n_in + n_out)))
        self.b = nn.Parameter(torch.zeros(n_out)) if bias else None
        self.zero_middle_bias_grad = zero_middle_bias_grad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b
        if b is not None:
            b = b.to(x.dtype)
            if self.zero_middle_bias_grad and b.requires_grad:
                b = _ZeroMiddleThirdGrad.apply(b)
        return F.linear(x, self.w.to(x.dtype), b)


class AttentionResblock(nn.Module):
    """Pre-LN multi-head self-attention with a residual; ``f_k`` has no bias."""

    def __init__(self, n_state: int, n_head: int, n_resblocks: int, causal: bool):
        super().__init__()
        self.n_head = n_head
        self.causal = causal
        std = 1 / math.sqrt(n_state)
        self.ln = LayerNorm(n_state)
        self.f_q = Affine(n_state, n_state, std=std, zero_middle_bias_grad=True)
        self.f_k = Affine(n_state, n_state, std=std, bias=False)
        self.f_v = Affine(n_state, n_state, std=std, zero_middle_bias_grad=True)
        self.f_c = Affine(n_state, n_state, std=1 / math.sqrt(n_state * n_resblocks**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.ln(x)
        q, k, v = (f(h).view(b, n, self.n_head, -1).transpose(1, 2) for f in (self.f_q, self.f_k, self.f_v))
        # The official code scales q and k each by d**-0.25; that is SDPA's default d**-0.5 scale.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return x + self.f_c(a.transpose(1, 2).reshape(b, n, c))


class MlpResblock(nn.Module):
    """Pre-LN MLP (4x width, exact GELU) with a residual."""

    def __init__(self, n_state: int, n_resblocks: int):
        super().__init__()
        self.ln = LayerNorm(n_state)
        self.f_1 = Affine(n_state, 4 * n_state, std=math.sqrt(2 / (4 * n_state)))
        self.f_2 = Affine(4 * n_state, n_state, std=1 / math.sqrt(n_state * n_resblocks**2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f_2(F.gelu(self.f_1(self.ln(x))))


class TransformerBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_resblocks: int, causal: bool):
        super().__init__()
        self.f_attn = AttentionResblock(n_state, n_head, n_resblocks, causal)
        self.f_mlp = MlpResblock(n_state, n_resblocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f_mlp(self.f_attn(x))


class FeatureHead(nn.Module):
    """LayerNorm then a bias-free projection ``f`` to the joint embedding size."""

    def __init__(self, n_state: int, n_embd: int):
        super().__init__()
        self.ln = LayerNorm(n_state)
        self.f = Affine(n_state, n_embd, bias=False)

    def forward(self, token: torch.Tensor) -> torch.Tensor:
        return self.f(self.ln(token))
