"""Noised CLIP: the image/text encoders GLIDE uses for CLIP guidance.

The image encoder sees a *noisy* image ``x_t`` together with its timestep: the first token of
the sequence is a learned per-timestep vector (row ``t`` of ``w_t``, ``t`` an index of the
original 1000-step process). Both encoders are pre-LN transformers whose ``state_dict`` keys and
shapes are exactly those of the official ``glide_text2im/clip`` checkpoints
(``clip_image_enc.pt`` / ``clip_text_enc.pt``), so those load with ``strict=True``.

Flow: ``tokens, lens -> ClipTextEncoder -> z_text``; ``x_t, t -> ClipImageEncoder -> z_image``;
the guidance gradient (``glide.guidance.clip_cond_fn``) is
``d/dx_t [exp(logit_scale) * sum(z_text * z_image)] * grad_scale`` with both embeddings L2-normalised.

Attention padding: the official code pads every sequence to a multiple of 32 and hides the
padded keys with an additive -1e10 bias (plus a causal mask in the text encoder). Masked keys get
exactly zero softmax weight in float32 and padded queries are discarded, so here the padding is
skipped and attention runs on the real tokens only (causal for text): the same result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .clip_blocks import FeatureHead, LayerNorm, TransformerBlock
from .config import ModelConfig

# Per-channel pixel statistics of the original CLIP, for pixels in [0, 255].
CLIP_CHANNEL_MEANS = (122.77093945, 116.74601272, 104.09373519)
CLIP_CHANNEL_STDS = (68.50053285, 66.63215831, 70.32316309)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class ClipConfig(ModelConfig):
    """Noised-CLIP hyperparameters; field names are the keys of the official ``clip/config.yaml``
    but for ``noise_schedule`` / ``diffusion_steps`` (its ``beta_schedule`` / ``n_timesteps``,
    which ``from_dict`` and ``from_file`` accept).

    Defaults are the official full-size model. ``n_state = n_head * n_head_state`` is each
    transformer's width; ``n_embd`` is the joint embedding size. ``diffusion_steps = 0`` gives an
    ordinary (un-noised) CLIP image encoder with a single learned ``pred_state`` first token.
    ``noise_schedule`` records the diffusion the model was trained for; it is not used here.
    ``model_type`` says which module the config builds: the image encoder, the text encoder or
    the pair (``clip``); each module sets it on the config it keeps.
    """

    logit_scale: float = 100.0
    noise_schedule: str = "squaredcos_cap_v2"
    diffusion_steps: int = 1000
    image_size: int = 64
    patch_size: int = 4
    n_vocab: int = 65536
    max_text_len: int = 77
    n_embd: int = 512
    n_head_state_text: int = 64
    n_head_text: int = 8
    n_xf_blocks_text: int = 12
    n_head_state_image: int = 64
    n_head_image: int = 12
    n_xf_blocks_image: int = 12
    tokenizer: dict = field(default_factory=lambda: {"kind": "clip-bpe"})
    model_type: str = field(default="clip", compare=False)

    MODEL_TYPES = ("clip", "clip-image-enc", "clip-text-enc")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = [f.name for f in fields(self) if f.type == "int" and f.name != "diffusion_steps"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ClipConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.diffusion_steps, int) or self.diffusion_steps < 0:
            raise ValueError(f"ClipConfig.diffusion_steps must be an integer >= 0, got {self.diffusion_steps!r}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"ClipConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if not self.logit_scale > 0:
            raise ValueError(f"ClipConfig.logit_scale must be > 0, got {self.logit_scale!r}")
        self.logit_scale = float(self.logit_scale)
        if not isinstance(self.tokenizer, Mapping) or "kind" not in self.tokenizer:
            raise ValueError(f"ClipConfig.tokenizer must be a dict with a 'kind', got {self.tokenizer!r}")
        self.tokenizer = dict(self.tokenizer)

    @property
    def text_n_state(self) -> int:
        return self.n_head_text * self.n_head_state_text

    @property
    def image_n_state(self) -> int:
        return self.n_head_image * self.n_head_state_image

    @property
    def image_n_context(self) -> int:
        """Image sequence length: one timestep token plus one token per patch."""
        return 1 + (self.image_size // self.patch_size) ** 2

    def as_type(self, model_type: str) -> ClipConfig:
        """This config for another of the three CLIP modules (the same config if it already is)."""
        return self if self.model_type == model_type else self.replace(model_type=model_type)

    def describe(self) -> str:
        if self.model_type == "clip-text-enc":
            return f"noised CLIP text encoder, {self.n_embd}-d embeddings"
        what = "image encoder" if self.model_type == "clip-image-enc" else "image + text encoders"
        return f"noised CLIP {what}, {self.image_size} px, {self.n_embd}-d embeddings"

    @classmethod
    def from_file(cls, path: str | Path) -> ClipConfig:
        """Read a config file with the official keys: JSON (``.json``) or YAML (anything else)."""
        path = Path(path)
        with open(path) as f:
            if path.suffix.lower() == ".json":
                d = json.load(f)
            else:
                import yaml

                d = yaml.safe_load(f)
        if not isinstance(d, Mapping):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(d).__name__}")
        return cls.from_dict(d)


def official_clip_config() -> ClipConfig:
    """The official noised CLIP pair (``clip_image_enc`` / ``clip_text_enc`` checkpoints): preset ``clip``."""
    from .presets import preset_config

    return preset_config("clip")


# --------------------------------------------------------------------------------------------
# Embeddings (the transformer blocks are in clip_blocks.py)
# --------------------------------------------------------------------------------------------


class ImageEmbedding(nn.Module):
    """``x`` in [-1, 1] -> ``[B, 1 + n_patch, n_state]`` tokens (timestep token, patches), LayerNormed."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        n_state, p = config.image_n_state, config.patch_size
        self.image_size, self.patch_size, self.diffusion_steps = config.image_size, p, config.diffusion_steps
        if self.diffusion_steps > 0:
            self.w_t = nn.Parameter(torch.empty(self.diffusion_steps, n_state))
            nn.init.normal_(self.w_t, std=1 / math.sqrt(n_state))
        else:
            self.pred_state = nn.Parameter(torch.empty(n_state))
            nn.init.normal_(self.pred_state, std=1 / math.sqrt(n_state))
        self.patch_proj = nn.Parameter(torch.empty(n_state, 3, p, p))
        nn.init.normal_(self.patch_proj, std=math.sqrt(2 / (n_state * p * p)))
        self.w_pos = nn.Parameter(torch.empty(config.image_n_context, n_state))
        nn.init.normal_(self.w_pos, std=1 / math.sqrt(n_state))
        self.ln = LayerNorm(n_state)
        self.register_buffer("channel_means", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("channel_stds", torch.empty(1, 3, 1, 1), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        """(Re)fill the constant pixel statistics (not in the state dict; needed after meta init)."""
        with torch.no_grad():
            self.channel_means.copy_(torch.tensor(CLIP_CHANNEL_MEANS).view(1, 3, 1, 1))
            self.channel_stds.copy_(torch.tensor(CLIP_CHANNEL_STDS).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
        pixels = (x + 1) * 127.5
        h = (pixels - self.channel_means) / self.channel_stds
        h = F.conv2d(h.to(self.patch_proj.dtype), self.patch_proj, stride=self.patch_size)
        h = h.flatten(2).transpose(1, 2)  # [B, n_patch, n_state], patches in row-major order
        if self.diffusion_steps > 0:
            first = F.embedding(t, self.w_t)[:, None]
        else:
            first = self.pred_state.expand(h.shape[0], 1, -1)
        return self.ln(torch.cat([first, h], dim=1) + self.w_pos)


class TextEmbedding(nn.Module):
    """Token ids ``[B, L]`` -> ``w_voc[tokens] + w_pos[:L]``."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        n_state = config.text_n_state
        self.w_voc = nn.Parameter(torch.empty(config.n_vocab, n_state))
        nn.init.normal_(self.w_voc, std=0.02)
        self.w_pos = nn.Parameter(torch.empty(config.max_text_len, n_state))
        nn.init.normal_(self.w_pos, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.w_voc) + self.w_pos[: tokens.shape[1]]


def _transformer(embedding: nn.Module, config: ClipConfig, text: bool) -> nn.ModuleDict:
    """``blocks`` = {input, block_0..block_{n-1}, output}, the official module layout."""
    if text:
        n_state, n_head, n_blocks = config.text_n_state, config.n_head_text, config.n_xf_blocks_text
    else:
        n_state, n_head, n_blocks = config.image_n_state, config.n_head_image, config.n_xf_blocks_image
    blocks: dict[str, nn.Module] = {"input": embedding}
    for i in range(n_blocks):
        blocks[f"block_{i}"] = TransformerBlock(n_state, n_head, 2 * n_blocks, causal=text)
    blocks["output"] = FeatureHead(n_state, config.n_embd)
    return nn.ModuleDict(blocks)


# --------------------------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------------------------


class ClipImageEncoder(nn.Module):
    """Noisy image and timestep -> raw (unnormalised) image features ``[B, n_embd]``.

    State-dict compatible with the official ``clip_image_enc`` checkpoint. Unlike the official
    module (which takes pixels in [0, 255]) ``forward`` takes the house convention
    ``x_t: [B, 3, S, S] in [-1, 1]`` and maps it to ``(x_t + 1) * 127.5`` itself.
    """

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config.as_type("clip-image-enc")
        self.blocks = _transformer(ImageEmbedding(config), config, text=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        """x_t: ``[B, 3, S, S]`` in [-1, 1]; t: int64 ``[B]`` original timesteps -> ``[B, n_embd]``."""
        self._check_inputs(x_t, t)
        h = self.blocks["input"](x_t, t)
        for i in range(self.config.n_xf_blocks_image):
            h = self.blocks[f"block_{i}"](h)
        return self.blocks["output"](h[:, 0])

    def _check_inputs(self, x_t: torch.Tensor, t: torch.Tensor | None) -> None:
        s = self.config.image_size
        if x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"CLIP image encoder expects images [B, 3, {s}, {s}], got {list(x_t.shape)}")
        if x_t.shape[2] != s or x_t.shape[3] != s:
            raise ValueError(
                f"CLIP image encoder expects {s}x{s} images, got {x_t.shape[2]}x{x_t.shape[3]} "
                "(the official noised CLIP does not resize; resize before calling it)"
            )
        if self.config.diffusion_steps == 0:
            if t is not None:
                raise ValueError("this CLIP image encoder has no timestep input (diffusion_steps=0)")
            return
        if t is None:
            raise ValueError("the noised CLIP image encoder needs timesteps t [B]")
        if t.ndim != 1 or t.shape[0] != x_t.shape[0]:
            raise ValueError(f"t must have shape [{x_t.shape[0]}], got {list(t.shape)}")
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"t must hold integer timesteps, got {t.dtype}")


class ClipTextEncoder(nn.Module):
    """CLIP tokens -> raw (unnormalised) text features ``[B, n_embd]``, read at the end token.

    State-dict compatible with the official ``clip_text_enc`` checkpoint. Attention is causal, so
    the feature at ``lens - 1`` depends only on the tokens before it (padding is never seen).
    """

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config.as_type("clip-text-enc")
        self.blocks = _transformer(TextEmbedding(config), config, text=True)

    def forward(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """tokens: int64 ``[B, L]`` (L <= max_text_len); lens: int64 ``[B]`` counting start/end tokens."""
        self._check_inputs(tokens, lens)
        h = self.blocks["input"](tokens)
        for i in range(self.config.n_xf_blocks_text):
            h = self.blocks[f"block_{i}"](h)
        last = h[torch.arange(h.shape[0], device=h.device), lens - 1]
        return self.blocks["output"](last)

    def _check_inputs(self, tokens: torch.Tensor, lens: torch.Tensor) -> None:
        if tokens.ndim != 2 or tokens.shape[1] > self.config.max_text_len:
            raise ValueError(
                f"CLIP tokens must be [B, L] with L <= {self.config.max_text_len}, got {list(tokens.shape)}"
            )
        if lens.ndim != 1 or lens.shape[0] != tokens.shape[0]:
            raise ValueError(f"lens must have shape [{tokens.shape[0]}], got {list(lens.shape)}")
        if lens.numel() and (int(lens.min()) < 1 or int(lens.max()) > tokens.shape[1]):
            raise ValueError(f"lens must lie in [1, {tokens.shape[1]}], got {lens.tolist()}")


# --------------------------------------------------------------------------------------------
# The pair: embeddings and scores
# --------------------------------------------------------------------------------------------


def _normalize(z: torch.Tensor) -> torch.Tensor:
    return z / (torch.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


class NoisedClip(nn.Module):
    """Noised CLIP: ``image_encoder``, ``text_encoder`` and ``logit_scale``.

    ``logit_scale`` = float32 ``log(config.logit_scale)``, a non-persistent buffer derived from
    the config (the official checkpoints store only the two encoders). The state dict is
    ``image_encoder.*`` + ``text_encoder.*``; each encoder loads its official file directly.
    """

    def __init__(self, config: ClipConfig | None = None):
        super().__init__()
        self.config = config.as_type("clip") if config is not None else ClipConfig()
        self.image_encoder = ClipImageEncoder(self.config)
        self.text_encoder = ClipTextEncoder(self.config)
        self.register_buffer("logit_scale", torch.empty((), dtype=torch.float32), persistent=False)
        self.reset_buffers()
        self._tokenizer = None

    def reset_buffers(self) -> None:
        """(Re)fill the buffers derived from the config, which no state dict carries.

        Call this after building on the ``meta`` device and materialising (``to_empty`` or
        ``load_state_dict(..., assign=True)`` followed by moving the buffers to a real device).
        """
        with torch.no_grad():
            self.logit_scale.copy_(torch.tensor(math.log(self.config.logit_scale), dtype=torch.float32))
        self.image_encoder.blocks["input"].reset_buffers()

    @property
    def tokenizer(self):
        """The CLIP BPE tokenizer named by ``config.tokenizer`` (built on first use)."""
        if self._tokenizer is None:
            from glide.tokenizer import tokenizer_from_config

            self._tokenizer = tokenizer_from_config(self.config.tokenizer)
        return self._tokenizer

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts -> (tokens int64 ``[B, max_text_len]``, lens int64 ``[B]``) on the model's device."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not a single string")
        tokens, lens = self.tokenizer.tokenize(list(prompts), context_length=self.config.max_text_len)
        device = self.logit_scale.device
        return tokens.to(device), lens.to(device)

    # -- embeddings ---------------------------------------------------------------------------

    def text_features(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Raw text features ``[B, n_embd]`` (tokens/lens are moved to the model's device)."""
        device = self.logit_scale.device
        return self.text_encoder(tokens.to(device), lens.to(device))

    def embed_text(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings ``[B, n_embd]``."""
        return _normalize(self.text_features(tokens, lens))

    def image_features(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Raw image features ``[B, n_embd]`` of ``x_t: [B, 3, S, S] in [-1, 1]`` at original step ``t``."""
        return self.image_encoder(x_t, self._timesteps(t, x_t))

    def embed_image(self, x_t: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, n_embd]``."""
        return _normalize(self.image_features(x_t, t))

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor | int, tokens: torch.Tensor, lens: torch.Tensor
    ) -> torch.Tensor:
        """Contrastive logits ``[B_image, B_text]`` = ``exp(logit_scale) * z_image @ z_text.T``."""
        z_image, z_text = self.embed_image(x_t, t), self.embed_text(tokens, lens)
        return self.logit_scale.exp() * z_image @ z_text.t()

    def score(
        self, images: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor, t: torch.Tensor | int = 0
    ) -> torch.Tensor:
        """Cosine similarity ``[B]`` of ``images: [B, 3, S, S] in [-1, 1]`` with their texts.

        ``tokens``/``lens`` hold B texts (row i scores image i) or one text for every image.
        ``t=0`` treats the images as clean (for reranking final samples).
        """
        z_text = self.embed_text(tokens, lens)
        check_pairing(z_text.shape[0], images.shape[0])
        return (self.embed_image(images, t) * z_text).sum(dim=-1)

    def _timesteps(self, t: torch.Tensor | int, x_t: torch.Tensor) -> torch.Tensor | None:
        if self.config.diffusion_steps == 0:
            return None if isinstance(t, int) and t == 0 else t
        if isinstance(t, int):
            return torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return t.to(x_t.device)


def check_pairing(n_text: int, n_image: int) -> None:
    """Texts pair with images one to one, or one text serves every image."""
    if n_text not in (1, n_image):
        raise ValueError(f"got {n_text} texts for {n_image} images: give one text per image, or one for all")
