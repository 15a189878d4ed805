"""GLIDE's text-conditional U-Nets: base (64 px), super-resolution (64 -> 256), inpainting variants.

A byte-pair-encoded caption goes through a transformer; its last token's feature is added to the
timestep embedding, and every token's feature becomes extra keys/values in each attention block.
Parameter names equal the official release, so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from .config import ModelConfig
from .unet import LayerNorm, UNetBackbone, attention

# Default channel multipliers by resolution, as in the official create_model.
DEFAULT_CHANNEL_MULT = {
    256: (1, 1, 2, 2, 4, 4),
    128: (1, 1, 2, 3, 4),
    64: (1, 2, 3, 4),
    32: (1, 2, 2, 2),
    16: (1, 2),
}


def _parse_ints(value) -> tuple[int, ...]:
    if isinstance(value, str):
        return tuple(int(v) for v in value.split(",") if v.strip())
    return tuple(int(v) for v in value)


@dataclass
class Text2ImConfig(ModelConfig):
    """Everything needed to rebuild a text-conditional U-Net and the diffusion it was trained with.

    Field names follow the official ``model_and_diffusion_defaults`` options; ``channel_mult`` and
    ``attention_resolutions`` are tuples here (strings are accepted and parsed).
    """

    image_size: int = 64
    num_channels: int = 192
    num_res_blocks: int = 3
    channel_mult: tuple[int, ...] = ()
    num_heads: int = 1
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    dropout: float = 0.1
    text_ctx: int = 128
    xf_width: int = 512
    xf_layers: int = 16
    xf_heads: int = 8
    xf_final_ln: bool = True
    xf_padding: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    norm_groups: int = 32  # GroupNorm groups; keep >= 2 channels per group (see unet.normalization)
    super_res: bool = False
    inpaint: bool = False
    # Not in GLIDE: two extra input channels holding each pixel's (y, x) in [-1, 1]. A small
    # convolutional U-Net cannot otherwise tell the top of the image from the bottom away from its
    # borders, which a caption such as "a red circle above a blue square" needs.
    coord_channels: bool = False
    n_vocab: int = 50257
    learn_sigma: bool = True
    noise_schedule: str = "squaredcos_cap_v2"
    diffusion_steps: int = 1000
    tokenizer: dict[str, Any] = field(default_factory=lambda: {"kind": "glide-bpe"})
    model_type: str = field(default="text2im", compare=False)

    MODEL_TYPES = ("text2im",)

    def __post_init__(self):
        super().__post_init__()
        self.channel_mult = _parse_ints(self.channel_mult)
        self.attention_resolutions = _parse_ints(self.attention_resolutions)
        if not self.channel_mult:
            if self.image_size not in DEFAULT_CHANNEL_MULT:
                raise ValueError(
                    f"no default channel_mult for image_size {self.image_size}; "
                    f"pass channel_mult explicitly (defaults exist for {sorted(DEFAULT_CHANNEL_MULT)})"
                )
            self.channel_mult = DEFAULT_CHANNEL_MULT[self.image_size]
        if self.num_channels % 32:
            raise ValueError(f"num_channels must be a multiple of 32 (GroupNorm), got {self.num_channels}")
        if self.norm_groups < 1 or self.num_channels % self.norm_groups:
            raise ValueError(f"norm_groups must divide num_channels {self.num_channels}, got {self.norm_groups}")
        if self.xf_width and self.xf_width % self.xf_heads:
            raise ValueError(f"xf_width {self.xf_width} is not divisible by xf_heads {self.xf_heads}")
        downsample = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % downsample:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by {downsample}, "
                f"the total downsampling of channel_mult {self.channel_mult}"
            )

    @property
    def in_channels(self) -> int:
        return 3 + (3 if self.super_res else 0) + (4 if self.inpaint else 0) + (2 if self.coord_channels else 0)

    @property
    def out_channels(self) -> int:
        return 6 if self.learn_sigma else 3

    @property
    def attention_ds(self) -> tuple[int, ...]:
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def describe(self) -> str:
        kind = ("upsampler" if self.super_res else "base") + (", inpainting" if self.inpaint else "")
        return f"{kind}, {self.image_size} px, {self.num_channels} channels"


def coordinate_maps(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, H, W]``: each pixel's row and column as -1 (top / left) .. 1, like ``x``'s dtype."""
    batch, _, height, width = x.shape
    rows = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)
    cols = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid.expand(batch, -1, -1, -1)


class TextEmbedding(NamedTuple):
    """Text features: ``xf_proj`` [B, 4C] (added to the timestep embedding) and ``xf_out``
    [B, xf_width, text_ctx] (keys/values for attention). Compute once per sampling run."""

    xf_proj: torch.Tensor
    xf_out: torch.Tensor


class TransformerAttention(nn.Module):
    """Multi-head self-attention; ``c_qkv`` output is split into q, k, v *per head*."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, width * 3)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, width = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, -1).transpose(1, 2)  # [B, H, T, 3d]
        q, k, v = qkv.split(width // self.heads, dim=-1)
        h = attention(q, k, v).transpose(1, 2).reshape(b, t, width)
        return self.c_proj(h)


class TransformerMLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, width * 4)
        self.c_proj = nn.Linear(width * 4, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = TransformerAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = TransformerMLP(width)
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Pre-LN transformer with no attention mask (padding slots are seen by every position)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class Text2ImUNet(UNetBackbone):
    """Text-conditional ADM U-Net; ``config.super_res`` / ``config.inpaint`` select the variant.

    ``forward(x_t, timesteps, tokens, mask, *, text=None, low_res=None, inpaint_image=None,
    inpaint_mask=None) -> [B, 6, H, W]`` (eps, then the variance selector v in [-1, 1]).
    """

    def __init__(self, config: Text2ImConfig):
        super().__init__(
            in_channels=config.in_channels,
            model_channels=config.num_channels,
            out_channels=config.out_channels,
            num_res_blocks=config.num_res_blocks,
            attention_ds=config.attention_ds,
            channel_mult=config.channel_mult,
            dropout=config.dropout,
            num_heads=config.num_heads,
            num_head_channels=config.num_head_channels,
            num_heads_upsample=config.num_heads_upsample,
            use_scale_shift_norm=config.use_scale_shift_norm,
            resblock_updown=config.resblock_updown,
            encoder_channels=config.xf_width or None,
            norm_groups=config.norm_groups,
        )
        self.config = config
        c = config
        if c.xf_width:
            self.transformer = Transformer(c.xf_width, c.xf_layers, c.xf_heads)
            self.final_ln = LayerNorm(c.xf_width) if c.xf_final_ln else None
            self.token_embedding = nn.Embedding(c.n_vocab, c.xf_width)
            self.positional_embedding = nn.Parameter(torch.empty(c.text_ctx, c.xf_width, dtype=torch.float32))
            self.transformer_proj = nn.Linear(c.xf_width, c.num_channels * 4)
            if c.xf_padding:
                self.padding_embedding = nn.Parameter(torch.empty(c.text_ctx, c.xf_width, dtype=torch.float32))
            self._init_text_weights()
        self._tokenizer = None

    def _init_text_weights(self) -> None:
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        if self.config.xf_padding:
            nn.init.normal_(self.padding_embedding, std=0.01)

    # -- tokenizer ---------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The tokenizer named in ``config.tokenizer`` (built on first use)."""
        if self._tokenizer is None:
            from ..tokenizer import tokenizer_from_config

            self._tokenizer = tokenizer_from_config(self.config.tokenizer)
        return self._tokenizer

    def tokenize(self, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (tokens LongTensor [B, text_ctx], mask BoolTensor [B, text_ctx])."""
        tokens, mask = self.tokenizer.batch(list(prompts), self.config.text_ctx)
        device = device or self.positional_embedding.device
        return tokens.to(device), mask.to(device)

    # -- precision ---------------------------------------------------------------------------
    def convert_to_half(self, dtype: torch.dtype = torch.float16) -> None:
        """Half-precision path of the official ``convert_to_fp16`` (fp16 on CUDA, bf16 anywhere).

        Convolutions, the text transformer's linear layers, the token table and ``transformer_proj``
        move to ``dtype``; norms, time/emb MLPs, positional and padding embeddings stay float32.
        """
        super().convert_to_half(dtype)
        if self.config.xf_width:
            for module in self.transformer.modules():
                if isinstance(module, nn.Linear):
                    module.to(dtype)
            self.token_embedding.to(dtype)
            self.transformer_proj.to(dtype)

    # -- forward -----------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> TextEmbedding:
        """tokens: LongTensor [B, text_ctx]; mask: BoolTensor [B, text_ctx] (True = real token)."""
        c = self.config
        if tokens.dim() != 2 or tokens.shape[1] != c.text_ctx:
            raise ValueError(f"tokens must have shape [batch, {c.text_ctx}], got {tuple(tokens.shape)}")
        if c.xf_padding and mask is None:
            raise ValueError("this model uses padding embeddings: pass the token mask as well")
        xf_in = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if c.xf_padding:
            xf_in = torch.where(mask[..., None].bool(), xf_in, self.padding_embedding[None])
        xf_out = self.transformer(xf_in.to(self.transformer_proj.weight.dtype))
        if self.final_ln is not None:
            xf_out = self.final_ln(xf_out)
        xf_proj = self.transformer_proj(xf_out[:, -1])
        return TextEmbedding(xf_proj, xf_out.permute(0, 2, 1))

    def build_input(self, x, low_res=None, inpaint_image=None, inpaint_mask=None) -> torch.Tensor:
        """Concatenate the variant's extra channels to x_t, as the first conv sees them."""
        c = self.config
        parts = [x]
        if c.inpaint:
            if inpaint_image is None or inpaint_mask is None:
                raise ValueError("an inpainting model needs inpaint_image [B,3,H,W] and inpaint_mask [B,1,H,W]")
            _check_image("inpaint_image", inpaint_image, x, 3)
            _check_image("inpaint_mask", inpaint_mask, x, 1)
            parts += [inpaint_image * inpaint_mask, inpaint_mask]
        if c.super_res:
            if low_res is None:
                raise ValueError("a super-resolution model needs low_res [B, 3, h, w]")
            if low_res.dim() != 4 or low_res.shape[1] != 3 or low_res.shape[0] != x.shape[0]:
                raise ValueError(f"low_res must be [{x.shape[0]}, 3, h, w], got {tuple(low_res.shape)}")
            parts.append(F.interpolate(low_res, x.shape[2:], mode="bilinear", align_corners=False))
        if c.coord_channels:
            parts.append(coordinate_maps(x))
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        text: TextEmbedding | None = None,
        low_res: torch.Tensor | None = None,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, 3, H, W] in [-1, 1]; timesteps: [B] original step indices -> [B, 6, H, W]."""
        c = self.config
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be [batch, 3, H, W], got {tuple(x.shape)}")
        h = self.build_input(x, low_res, inpaint_image, inpaint_mask)
        emb = self.embed_timesteps(timesteps)
        encoder_out = None
        if c.xf_width:
            if text is None:
                if tokens is None:
                    raise ValueError("pass tokens (and mask) or precomputed text= features")
                text = self.encode_text(tokens, mask)
            emb = emb + text.xf_proj.to(emb)
            encoder_out = text.xf_out.to(self.dtype)
        h, hs = self.run_encoder(h, emb, encoder_out)
        return self.run_decoder(h, hs, emb, encoder_out, out_dtype=x.dtype)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing in the text transformer and every U-Net block (training)."""
        super().set_grad_checkpointing(enabled)
        if self.config.xf_width:
            self.transformer.grad_checkpointing = enabled


def _check_image(name: str, value: torch.Tensor, x: torch.Tensor, channels: int) -> None:
    expected = (x.shape[0], channels, *x.shape[2:])
    if tuple(value.shape) != expected:
        raise ValueError(f"{name} must have shape {list(expected)}, got {list(value.shape)}")
