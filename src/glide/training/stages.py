"""What each training stage feeds the model and which loss it takes.

A stage turns a collated batch (``{"image": [B, 3, H, W] in [-1, 1], "caption": [str], ...}``)
into model inputs and a loss:

=================  ==========================================================================
base               text -> image; hybrid loss (eps MSE + VLB for the learned variances)
upsample           + ``low_res``: the target downsampled (optionally blurred / noised)
inpaint            + ``inpaint_image`` / ``inpaint_mask`` (1 = known): random rectangles,
                   brush strokes, sometimes the whole image; the loss covers the whole image
upsample-inpaint   both of the above
clip               noised CLIP: image encoder on ``x_t`` at a random t, text encoder on the
                   caption, symmetric contrastive loss at the model's logit scale
classifier         noisy classifier on ``x_t``: cross-entropy on ``batch["label"]``
=================  ==========================================================================

Every random choice for sample ``i`` of a step (its timestep, noise, caption dropout, flip, mask,
low-res augmentation) is drawn from its own ``torch.Generator`` seeded by ``(seed, step, i)``,
``i`` its position in the *global* batch. The draws are therefore the same whatever the number of
ranks or accumulation micro-steps, and a resumed run repeats them exactly: the generator state
is a pure function of what the trainer state already stores.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import hard_negatives, make_low_res, random_mask
from ..diffusion import GaussianDiffusion
from .config import (
    CLEAN_TIMESTEPS,
    ConfigError,
    TrainConfig,
    parse_loss_weighting,
    parse_range,
    parse_timestep_sampling,
)

logger = logging.getLogger("glide.training")
Autocast = Callable[[], AbstractContextManager]
TEXT2IM_STAGES = {  # stage -> (super_res, inpaint)
    "base": (False, False),
    "upsample": (True, False),
    "inpaint": (False, True),
    "upsample-inpaint": (True, True),
}


def sample_seeds(seed: int, step: int, positions: list[int] | range) -> list[int]:
    """A 63-bit seed for each global batch position of optimizer step ``step``."""
    seeds = []
    for position in positions:
        words = np.random.SeedSequence([seed, step, position]).generate_state(2, dtype=np.uint32)
        # two 32-bit words -> one 63-bit seed: non-negative and within the int64 that manual_seed takes
        seeds.append((int(words[0]) << 31) ^ int(words[1]))
    return seeds


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _timesteps(gens: list[torch.Generator], num_timesteps: int, logit_normal: tuple[float, float] | str | None):
    """One t per sample: uniform, t/T = sigmoid(N(mean, std)) for ``logit_normal=(mean, std)``, or
    0 for ``CLEAN_TIMESTEPS`` (the generators are still drawn from, so the noise stays the same)."""
    if logit_normal == CLEAN_TIMESTEPS:
        return torch.cat([torch.randint(0, num_timesteps, (1,), generator=g) for g in gens]) * 0
    if logit_normal is None:
        return torch.cat([torch.randint(0, num_timesteps, (1,), generator=g) for g in gens])
    mean, std = logit_normal
    z = torch.cat([torch.randn((1,), generator=g, dtype=torch.float64) for g in gens])
    return (torch.sigmoid(mean + std * z) * num_timesteps).long().clamp_(0, num_timesteps - 1)


def loss_weights(diffusion: GaussianDiffusion, weighting: tuple[str, float | None]) -> torch.Tensor:
    """The weight of the noise-prediction MSE at each respaced step (``--loss-weighting``), [T].

    The plain eps MSE weighs an error in x_0 by SNR(t) = abar / (1 - abar), so the noisiest steps,
    where a caption decides the layout, barely train. ``min-snr:G`` (Hang et al. 2023) caps that at
    G by weighting the MSE min(SNR, G) / SNR; ``v:M`` weights it 1 / abar = (SNR + 1) / SNR, the
    v-prediction loss's weighting, capped at M because abar_T is ~1e-9."""
    kind, parameter = weighting
    abar = torch.as_tensor(diffusion.alphas_cumprod, dtype=torch.float64)
    if kind == "eps":
        weights = torch.ones_like(abar)
    elif kind == "min-snr":
        snr = abar / (1 - abar)
        weights = snr.clamp(max=parameter) / snr
    else:
        weights = (1 / abar).clamp(max=parameter)
    return weights.float()


def _noise(gens: list[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def _bernoulli(gens: list[torch.Generator], p: float) -> list[bool]:
    return [bool(torch.rand((), generator=g) < p) for g in gens]


class Stage:
    """Base class: ``loss(model, bare, batch, seeds, autocast)`` -> (scalar loss, per-sample metrics)."""

    name: str
    needs_labels = False

    def __init__(self, config: TrainConfig, bare: nn.Module):
        self.config = config
        self.check_model(bare)
        self.diffusion = self.make_diffusion(bare)
        self.logit_normal = parse_timestep_sampling(config.timestep_sampling)
        self.mse_weights = loss_weights(self.diffusion, parse_loss_weighting(config.loss_weighting))

    def check_model(self, bare: nn.Module) -> None:
        raise NotImplementedError

    def make_diffusion(self, bare: nn.Module) -> GaussianDiffusion:
        c = bare.config
        return GaussianDiffusion.from_schedule(c.noise_schedule, c.diffusion_steps)

    def loss(self, model: nn.Module, bare: nn.Module, batch: dict[str, Any], seeds: list[int],
             autocast: Autocast = nullcontext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def noised(self, x_start: torch.Tensor, gens: list[torch.Generator]):
        """Random t (``--timestep-sampling``) and noise per sample; returns (t, noise, x_t) on x_start's device."""
        t = _timesteps(gens, self.diffusion.num_timesteps, self.logit_normal).to(x_start.device)
        noise = _noise(gens, tuple(x_start.shape[1:])).to(x_start.device)
        return t, noise, self.diffusion.q_sample(x_start, t, noise)

    def flip(self, x: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
        if not self.config.random_flip:
            return x
        flips = torch.tensor(_bernoulli(gens, 0.5), device=x.device)
        return torch.where(flips[:, None, None, None], x.flip(-1), x)

    def t_fraction(self, t: torch.Tensor) -> torch.Tensor:
        return t.float() / self.diffusion.num_timesteps


class Text2ImStage(Stage):
    """base / upsample / inpaint / upsample-inpaint: the hybrid diffusion loss."""

    def __init__(self, config: TrainConfig, bare: nn.Module):
        self.name = config.stage
        super().__init__(config, bare)
        image_size = bare.config.image_size
        self.low_res_size = config.low_res_size or image_size // 4
        if self.super_res and not 1 <= self.low_res_size <= image_size:
            raise ConfigError(f"--low-res-size {self.low_res_size} must be between 1 and the image size {image_size}")
        self.low_res_blur = parse_range(config.low_res_blur, "low_res_blur")
        self.low_res_noise = parse_range(config.low_res_noise, "low_res_noise")
        self._warned_truncation = False

    def tokenize(self, bare: nn.Module, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``bare.tokenize``; caption truncation is reported once per run, not every step."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokens, mask = bare.tokenize(captions)
        if caught and not self._warned_truncation:
            self._warned_truncation = True
            logger.warning(f"some captions are longer than text_ctx={bare.config.text_ctx} tokens and are truncated "
                           f"(first: {caught[0].message}); reported once")
        return tokens, mask

    @property
    def super_res(self) -> bool:
        return TEXT2IM_STAGES[self.name][0]

    @property
    def inpaint(self) -> bool:
        return TEXT2IM_STAGES[self.name][1]

    def check_model(self, bare: nn.Module) -> None:
        from ..models import Text2ImUNet

        if not isinstance(bare, Text2ImUNet):
            raise ConfigError(f"stage {self.name!r} trains a text-to-image U-Net, got {type(bare).__name__}; "
                              f"pick a text2im preset (base, upsample, base-inpaint, upsample-inpaint, tiny-*)")
        want_sr, want_inpaint = TEXT2IM_STAGES[self.name]
        c = bare.config
        if (c.super_res, c.inpaint) != (want_sr, want_inpaint):
            raise ConfigError(
                f"stage {self.name!r} needs a model with super_res={want_sr}, inpaint={want_inpaint}; this model has "
                f"super_res={c.super_res}, inpaint={c.inpaint} (presets: base, upsample, base-inpaint, "
                f"upsample-inpaint and their tiny-* versions)")

    def conditioning(self, x_start: torch.Tensor, gens: list[torch.Generator]) -> dict[str, torch.Tensor]:
        """The variant's extra inputs: ``low_res`` and/or ``inpaint_image`` + ``inpaint_mask``."""
        extra: dict[str, torch.Tensor] = {}
        if self.super_res:
            extra["low_res"] = torch.cat([
                make_low_res(x_start[i:i + 1].cpu(), self.low_res_size, self.low_res_blur, self.low_res_noise, g)
                for i, g in enumerate(gens)
            ]).to(x_start.device)
        if self.inpaint:
            h, w = x_start.shape[2:]
            masks = torch.stack([random_mask(h, w, g, full_prob=self.config.mask_full_prob) for g in gens])
            extra["inpaint_image"] = x_start
            extra["inpaint_mask"] = masks.to(x_start.device)
        return extra

    def loss(self, model, bare, batch, seeds, autocast=nullcontext):
        device = bare.positional_embedding.device if bare.config.xf_width else next(bare.parameters()).device
        gens = generators(seeds)
        x_start = self.flip(batch["image"].to(device, non_blocking=True), gens)
        dropped = _bernoulli(gens, self.config.caption_dropout)
        captions = ["" if drop else caption for drop, caption in zip(dropped, batch["caption"], strict=True)]
        extra = self.conditioning(x_start, gens)
        t, noise, x_t = self.noised(x_start, gens)
        tokens, mask = self.tokenize(bare, captions)
        with autocast():
            output = model(x_t, self.diffusion.original_timesteps(t, x_t), tokens, mask, **extra)
        terms = self.diffusion.hybrid_losses(output.float(), x_start, x_t, t, noise)
        metrics = {k: v.detach() for k, v in terms.items()}
        metrics["t"] = self.t_fraction(t)
        # the weights (all 1 by default) apply to the MSE only; vb trains the variance at Improved DDPM's scale
        weighted = self.mse_weights.to(t.device)[t] * terms["mse"] + terms["vb"]
        return weighted.mean(), metrics


class ClipStage(Stage):
    """Noised CLIP: contrastive loss between image embeddings of ``x_t`` and caption embeddings."""

    name = "clip"

    def check_model(self, bare: nn.Module) -> None:
        from ..models.clip import NoisedClip

        if not isinstance(bare, NoisedClip):
            raise ConfigError(f"stage 'clip' trains a NoisedClip (presets clip, tiny-clip), got {type(bare).__name__}")
        if bare.config.diffusion_steps < 1:
            raise ConfigError("stage 'clip' trains a *noised* CLIP: the model config needs diffusion_steps >= 1")

    def make_diffusion(self, bare: nn.Module) -> GaussianDiffusion:
        return GaussianDiffusion.from_schedule(bare.config.noise_schedule, bare.config.diffusion_steps)

    def loss(self, model, bare, batch, seeds, autocast=nullcontext):
        device = bare.logit_scale.device
        gens = generators(seeds)
        x_start = self.flip(batch["image"].to(device, non_blocking=True), gens)
        t, _, x_t = self.noised(x_start, gens)
        captions = list(batch["caption"])
        negatives = [n for c in captions for n in hard_negatives(c)] if self.config.hard_negatives else []
        tokens, lens = bare.tokenize(captions + negatives)
        with autocast():
            logits = model(x_t, t, tokens, lens)  # [B images, B captions + negatives]
        logits = logits.float()
        if negatives:  # a negative that is another image's own caption is not a negative for that image
            own = torch.tensor([[n == c for n in negatives] for c in captions], device=device)
            logits = torch.cat([logits[:, :len(captions)], logits[:, len(captions):].masked_fill(own, -torch.inf)], 1)
        target = torch.arange(logits.shape[0], device=device)
        per_image = F.cross_entropy(logits, target, reduction="none")
        per_text = F.cross_entropy(logits[:, :len(captions)].t(), target, reduction="none")
        per_sample = (per_image + per_text) / 2
        accuracy = (logits.argmax(dim=1) == target).float()
        return per_sample.mean(), {"loss": per_sample.detach(), "accuracy": accuracy, "t": self.t_fraction(t)}


class ClassifierStage(Stage):
    """Noisy classifier: cross-entropy of ``label`` from ``x_t`` and t."""

    name = "classifier"
    needs_labels = True

    def check_model(self, bare: nn.Module) -> None:
        from ..models.classifier import NoisyClassifier

        if not isinstance(bare, NoisyClassifier):
            raise ConfigError(f"stage 'classifier' trains a NoisyClassifier (presets classifier, tiny-classifier), "
                              f"got {type(bare).__name__}")

    def loss(self, model, bare, batch, seeds, autocast=nullcontext):
        if "label" not in batch:
            raise ConfigError(
                "stage 'classifier' needs class labels, but the data has none: use 'shapes', a folder with one "
                "subfolder per class, or a .csv/.jsonl table with a 'label' column")
        device = next(bare.parameters()).device
        gens = generators(seeds)
        x_start = self.flip(batch["image"].to(device, non_blocking=True), gens)
        labels = batch["label"].to(device)
        num_classes = bare.config.num_classes
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ConfigError(f"label {int(labels.max())} is out of range for a classifier with {num_classes} classes "
                              f"(set --model-overrides num_classes=N)")
        t, _, x_t = self.noised(x_start, gens)
        with autocast():
            logits = model(x_t, self.diffusion.original_timesteps(t, x_t))
        per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
        accuracy = (logits.argmax(dim=1) == labels).float()
        return per_sample.mean(), {"loss": per_sample.detach(), "accuracy": accuracy, "t": self.t_fraction(t)}


def make_stage(config: TrainConfig, bare: nn.Module) -> Stage:
    if config.stage in TEXT2IM_STAGES:
        return Text2ImStage(config, bare)
    if config.stage == "clip":
        return ClipStage(config, bare)
    return ClassifierStage(config, bare)


@torch.no_grad()
def evaluate_loss(stage: Stage, model: nn.Module, batch: dict[str, Any], seed: int = 1234) -> float:
    """The stage's mean loss on ``batch`` with fixed draws (for comparing weights; eval mode)."""
    was_training = model.training
    model.eval()
    try:
        loss, _ = stage.loss(model, model, batch, sample_seeds(seed, 0, range(batch["image"].shape[0])))
    finally:
        model.train(was_training)
    return float(loss)
