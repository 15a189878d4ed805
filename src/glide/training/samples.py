"""Sample grids during training: fixed prompts (and, for upsampling / inpainting, fixed source
images and masks) sampled with classifier-free guidance every ``--sample-every`` steps.

The noise comes from a generator seeded with ``--seed``, so successive grids differ only by the
weights, and sampling never touches the global RNG (a resumed run stays bit-identical).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import random_mask
from ..images import make_grid, tensor_to_image
from ..pipelines import StageOptions, paste_known, run_stage
from .config import TrainConfig
from .ema import EMA
from .stages import Text2ImStage


class SampleGrid:
    """Renders ``RUN/samples/step-XXXXXXXX.png`` for a text-to-image stage."""

    def __init__(self, config: TrainConfig, stage: Text2ImStage, references: list[dict[str, Any]]):
        self.config, self.stage = config, stage
        # Built now, so a bad sampler name or guidance scale fails before training starts.
        self.options = StageOptions(config.sample_sampler, config.sample_steps, config.sample_guidance,
                                    strength=config.sample_strength)
        n = config.num_samples
        prompts = list(config.sample_prompts) or [r.get("caption", "") for r in references]
        self.prompts = [prompts[i % len(prompts)] for i in range(n)]
        images = [references[i % len(references)]["image"] for i in range(n)]
        self.images = torch.stack(images)  # [n, 3, S, S] in [-1, 1]
        generator = torch.Generator().manual_seed(config.seed)
        h, w = self.images.shape[2:]
        self.masks = torch.stack([random_mask(h, w, generator, full_prob=0.0) for _ in range(n)])
        # A base model's grid of shapes captions is scored by the bundled shapes judge.
        self.judged = not (stage.super_res or stage.inpaint) and all(map(_is_shapes_caption, self.prompts))
        self._judge: nn.Module | None = None

    @torch.no_grad()
    def render(self, bare: nn.Module, ema: EMA, step: int, run_dir: Path,
               autocast=nullcontext) -> tuple[Path, torch.Tensor, float | None]:
        """Sample the grid with ``--sample-weights`` and save it; returns (path, grid [3, H, W],
        whole-caption accuracy of its samples by the shapes judge, or None when not judged)."""
        model = sampling_weights(bare, ema, self.config.sample_weights)
        was_training = model.training
        model.eval()
        try:
            grid, samples = self._sample(model, autocast)
        finally:
            model.train(was_training)
        path = Path(run_dir) / "samples" / f"step-{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        tensor_to_image(grid).save(path)
        return path, grid, self.caption_accuracy(samples) if self.judged else None

    def caption_accuracy(self, samples: torch.Tensor) -> float:
        """The share of ``samples`` (one per prompt) that show their whole caption, by the judge."""
        from ..evaluation.judge import judge_images, load_judge, mean_scores, score_captions

        if self._judge is None:
            self._judge = load_judge()
        scenes, _ = judge_images(self._judge, samples.float().cpu())
        return mean_scores(score_captions(self.prompts, scenes))["caption"]

    def _sample(self, model: nn.Module, autocast) -> torch.Tensor:
        config, stage = self.config, self.stage
        device = next(model.parameters()).device
        tokens, mask = stage.tokenize(model, self.prompts)
        images = self.images.to(device)
        kwargs: dict[str, torch.Tensor] = {}
        rows = []
        if stage.super_res:
            low_res = F.interpolate(images, size=stage.low_res_size, mode="bicubic", antialias=True).clamp(-1, 1)
            kwargs["low_res"] = low_res
            rows.append(F.interpolate(low_res, size=images.shape[2:], mode="nearest"))
        denoised_fn = None
        if stage.inpaint:
            inpaint_mask = self.masks.to(device)
            kwargs.update(inpaint_image=images, inpaint_mask=inpaint_mask)
            rows.append(images * inpaint_mask)  # unknown pixels shown as grey (0)
            denoised_fn = paste_known(images, inpaint_mask)
        samples = run_stage(model, self.prompts, self.options, torch.Generator().manual_seed(config.seed),
                            tokens=(tokens, mask), denoised_fn=denoised_fn, autocast=autocast, check_finite=False,
                            progress=False, **kwargs)
        rows.append(samples)
        if stage.super_res or stage.inpaint:
            rows.append(images)
        return make_grid(torch.cat(rows), columns=len(self.prompts)), samples


def _is_shapes_caption(prompt: str) -> bool:
    from ..data.shapes import parse_caption

    try:
        parse_caption(prompt)
    except ValueError:
        return False
    return True


def sampling_weights(bare: nn.Module, ema: EMA, sample_weights: str) -> nn.Module:
    """The model with ``--sample-weights``: ``bare`` itself, or a copy holding an EMA's weights."""
    if sample_weights == "model":
        return bare
    rate = float(sample_weights.split("-", 1)[1])
    if rate not in ema.rates:
        raise ValueError(f"--sample-weights {sample_weights}: no such EMA (rates {list(ema.rates)})")
    model = copy.deepcopy(bare)
    ema.copy_to(rate, model)
    return model
