"""ADM building blocks (Dhariwal & Nichol 2021) with the official GLIDE key names.

Every module here keeps the parameter names of the released checkpoints (``in_layers.0``,
``emb_layers.1``, ``qkv``, ``encoder_kv``, ...), so official state dicts load with ``strict=True``.

Half precision follows the official ``convert_to_fp16``: convolutions run in the half dtype,
normalisations always compute in float32 and hand back the input's dtype.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# Attention kernels: "sdpa" (torch.nn.functional.scaled_dot_product_attention) or "einsum"
# (the official formulation: q and k scaled by d**-0.25, softmax in float32). Both give the
# same values to float rounding; which is faster depends on the device and dtype.
_ATTENTION_BACKENDS = ("sdpa", "einsum")
_attention_backend = "sdpa"


def set_attention_backend(name: str) -> None:
    """Choose the attention kernel used by every attention layer: "sdpa" or "einsum"."""
    global _attention_backend
    if name not in _ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {_ATTENTION_BACKENDS}")
    _attention_backend = name


@contextmanager
def attention_backend(name: str):
    """Temporarily switch the attention kernel (``with attention_backend("einsum"): ...``)."""
    previous = _attention_backend
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
    """Multi-head attention. q: [B, H, T, d]; k, v: [B, H, S, d]; mask: additive [.., T, S].

    Returns [B, H, T, d]. Softmax runs in float32 whatever the input dtype.
    """
    if _attention_backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scale = 1.0 / math.sqrt(math.sqrt(q.shape[-1]))
    weight = torch.einsum("bhtd,bhsd->bhts", q * scale, k * scale)
    if mask is not None:
        weight = weight + mask
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return torch.einsum("bhts,bhsd->bhtd", weight, v)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_0..), sin(t f_0..)]`` (cosines first): [N] -> [N, dim] float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int, groups: int = 32) -> GroupNorm32:
    """GroupNorm with ``groups`` groups (32 in every official model).

    With one channel per group (``groups == channels``) it is an instance norm: it erases each
    channel's spatial mean, so a 32-channel U-Net cannot see, nor predict, the per-channel mean of
    its input (the image's tint). Small models should keep at least two channels per group.
    """
    return GroupNorm32(groups, channels)


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.detach().zero_()
    return module


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv, or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class TimestepBlock(nn.Module):
    """A block whose forward also takes the timestep(+text) embedding ``emb``."""


class ResBlock(TimestepBlock):
    """Residual block with optional scale-shift norm and BigGAN-style up/down resampling."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
        norm_groups: int = 32,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            normalization(channels, norm_groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels, norm_groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        emb_out = self.emb_layers(emb).type(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Spatial self-attention; text keys/values (``encoder_kv``) are prepended to the spatial ones.

    The 1x1 ``qkv`` conv's channels are grouped per head as [q, k, v]; ``encoder_kv`` per head
    as [k, v]. No mask: every spatial query sees every text token, padding included.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        encoder_channels: int | None = None,
        norm_groups: int = 32,
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"channels {channels} not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = normalization(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        if encoder_channels is not None:
            self.encoder_kv = nn.Conv1d(encoder_channels, channels * 2, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, encoder_out: torch.Tensor | None = None) -> torch.Tensor:
        b, c, *spatial = x.shape
        heads = self.num_heads
        d = c // heads
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # [B, 3C, T]
        # Per head [q, k, v] channels -> [B, H, T, d] tensors. They are made contiguous on
        # purpose: fused SDPA kernels need it and otherwise fall back to a ~4x slower path.
        q, k, v = qkv.reshape(b, heads, 3 * d, -1).transpose(-1, -2).split(d, dim=-1)
        q = q.contiguous()
        if encoder_out is not None:
            ekv = self.encoder_kv(encoder_out)  # [B, 2C, S]
            ek, ev = ekv.reshape(b, heads, 2 * d, -1).transpose(-1, -2).split(d, dim=-1)
            k, v = torch.cat([ek, k], dim=2), torch.cat([ev, v], dim=2)  # text tokens first
        else:
            k, v = k.contiguous(), v.contiguous()
        h = attention(q, k, v)  # [B, H, T, d]
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj_out(h).reshape(b, c, *spatial)


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that routes ``emb`` to ResBlocks and text features to attention blocks."""

    def forward(self, x, emb, encoder_out=None):  # noqa: D401
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, encoder_out)
            else:
                x = layer(x)
        return x


class UNetBackbone(nn.Module):
    """The ADM U-Net without any conditioning front-end.

    Subclasses supply the embedding ``emb`` [N, 4C] and (optionally) ``encoder_out``
    [N, encoder_channels, S]; this class owns ``time_embed``, ``input_blocks``, ``middle_block``,
    ``output_blocks`` and ``out``, named as in the official checkpoints.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_ds: tuple[int, ...],
        channel_mult: tuple[int, ...],
        dropout: float = 0.0,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = True,
        resblock_updown: bool = True,
        encoder_channels: int | None = None,
        decoder: bool = True,
        norm_groups: int = 32,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        self.model_channels = model_channels
        emb_dim = model_channels * 4
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def res(ch_in, ch_out, **kw):
            return ResBlock(ch_in, emb_dim, dropout, ch_out, use_scale_shift_norm, norm_groups=norm_groups, **kw)

        def attn(ch, heads):
            return AttentionBlock(ch, heads, num_head_channels, encoder_channels, norm_groups)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        input_block_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                input_block_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                input_block_chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attn(ch, num_heads), res(ch, ch))
        self.out_ch = ch
        self.decoder = decoder
        self.grad_checkpointing = False
        if not decoder:  # encoder-only (noisy classifiers)
            return

        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                skip_ch = input_block_chans.pop()
                layers = [res(ch + skip_ch, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_ds:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(
            normalization(ch, norm_groups), nn.SiLU(), zero_module(nn.Conv2d(input_ch, out_channels, 3, padding=1))
        )

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the blocks compute in (float32, or the half dtype after ``convert_to_half``)."""
        return self.input_blocks[0][0].weight.dtype

    def convert_to_half(self, dtype: torch.dtype = torch.float16) -> None:
        """Cast the blocks' convolutions to ``dtype``; norms, embeddings MLPs and ``out`` stay float32."""
        blocks = [self.input_blocks, self.middle_block] + ([self.output_blocks] if self.decoder else [])
        for block in blocks:
            for module in block.modules():
                if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                    module.to(dtype)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass (less memory, ~30% more time)."""
        self.grad_checkpointing = enabled

    def _run_block(self, module, h, emb, encoder_out):
        if self.grad_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(module, h, emb, encoder_out, use_reentrant=False)
        return module(h, emb, encoder_out)

    def embed_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(timesteps, self.model_channels))

    def run_encoder(self, x, emb, encoder_out=None):
        """Input blocks + middle block. Returns (h, skips) in the half/float compute dtype."""
        hs = []
        h = x.type(self.dtype)
        for module in self.input_blocks:
            h = self._run_block(module, h, emb, encoder_out)
            hs.append(h)
        h = self._run_block(self.middle_block, h, emb, encoder_out)
        return h, hs

    def run_decoder(self, h, hs, emb, encoder_out=None, out_dtype=torch.float32):
        for module in self.output_blocks:
            h = self._run_block(module, torch.cat([h, hs.pop()], dim=1), emb, encoder_out)
        return self.out(h.type(out_dtype))
