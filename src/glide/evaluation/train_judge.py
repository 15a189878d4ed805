"""Train the shapes judge on fresh renders with exact labels; measure it on held-out renders.

Reproduces the bundled judge (one thread, a fixed seed; about ten minutes on one CPU core)::

    python -m glide.evaluation.train_judge --out src/glide/bundled/shapes-judge.safetensors

Every batch is new: scenes of 0-3 objects from every split (the judge may see everything), drawn
from ``(seed, step)``, rendered at the judge's size, then lightly degraded (blur, noise, colour
jitter, off-white backgrounds) so that generated images, which are never as clean as renders, are
judged fairly. The weights are stored in float16 (about 1 MB). ``heldout_accuracy`` is the check
the tests run on the bundled file.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.shapes import heldout_captions, render_shapes, sample_scene
from ..images import image_to_tensor
from .judge import mean_scores, read_scenes, scene_targets, score_captions

BLANK_FRACTION = 0.03  # empty images teach "nothing here" (a failed sample still has a score)


def render_batch(scenes, resolution: int, backgrounds=None) -> torch.Tensor:
    """``scenes`` rendered as ``[N, 3, R, R]`` in [-1, 1] (white backgrounds unless given)."""
    backgrounds = backgrounds or [(255, 255, 255)] * len(scenes)
    return torch.stack([image_to_tensor(render_shapes(s, resolution, b)) for s, b in zip(scenes, backgrounds,
                                                                                         strict=True)])


def training_batch(seed: int, step: int, batch_size: int, resolution: int):
    """(images, scenes) of one training step: a pure function of ``(seed, step)``."""
    rng = np.random.default_rng([seed, step])
    scenes = [[] if rng.random() < BLANK_FRACTION else sample_scene(rng, 1, 3) for _ in range(batch_size)]
    tints = [tuple(int(255 - v) for v in rng.uniform(0, 30, 3)) if rng.random() < 0.3 else (255, 255, 255)
             for _ in range(batch_size)]
    images = render_batch(scenes, resolution, tints)
    return augment(images, torch.Generator().manual_seed(seed * 1_000_003 + step)), scenes


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Slight per-image blur, colour gain / offset and Gaussian noise; stays in [-1, 1]."""
    n = len(images)
    u = lambda *shape: torch.rand(*shape, generator=generator)
    blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    amount = u(n, 1, 1, 1) * (u(n, 1, 1, 1) < 0.5)
    images = images + amount * (blurred - images)
    images = images * (1 + 0.12 * (u(n, 3, 1, 1) - 0.5)) + 0.12 * (u(n, 3, 1, 1) - 0.5)
    images = images + 0.08 * u(n, 1, 1, 1) * torch.randn(images.shape, generator=generator)
    return images.clamp(-1, 1)


def judge_loss(judge: nn.Module, images: torch.Tensor, scenes) -> torch.Tensor:
    """Presence BCE over every pair, plus size BCE and centre L1 over the pairs present."""
    presence, large, centre = scene_targets(scenes)
    out = judge(images)
    mask = presence.bool()
    loss = F.binary_cross_entropy_with_logits(out.presence, presence)
    if mask.any():
        loss = loss + F.binary_cross_entropy_with_logits(out.large[mask], large[mask])
        loss = loss + 10 * F.l1_loss(out.centre[mask], centre[mask])
    return loss


@torch.no_grad()
def heldout_accuracy(judge: nn.Module, count: int = 200, num_shapes: int = 1, seed: int = 1234,
                     resolution: int | None = None) -> dict[str, float]:
    """Mean scores (``caption``: whole-caption accuracy) on ``count`` fresh held-out renders."""
    pairs = heldout_captions(count, num_shapes, seed)
    images = render_batch([scene for _, scene in pairs], resolution or judge.config.image_size)
    scenes = read_scenes(judge(images))
    return mean_scores(score_captions([caption for caption, _ in pairs], scenes))


def train_judge(out: str | Path, steps: int = 6000, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                log_every: int = 250) -> nn.Module:
    """Train a ``shapes-judge`` preset from scratch and save its float16 weights to ``out``."""
    from ..checkpoints import save_model
    from ..models import build_preset

    torch.manual_seed(seed)
    judge = build_preset("shapes-judge")
    optimizer = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    # Linear warm-up, then cosine decay to zero.
    schedule = lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * s / steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = time.time()
    for step in range(steps):
        judge.train()
        loss = judge_loss(judge, *training_batch(seed, step, batch_size, judge.config.image_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            judge.eval()
            acc = {n: heldout_accuracy(judge, 100, n, seed=99)["caption"] for n in (1, 2, 3)}
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}  held-out caption acc "
                  + "  ".join(f"{n}-obj {a:.3f}" for n, a in acc.items()) + f"  ({time.time() - start:.0f} s)",
                  flush=True)
    judge.eval()
    save_model(judge, out, state_dict={k: v.half() for k, v in judge.state_dict().items()},
               metadata={"glide_trained_by": f"python -m glide.evaluation.train_judge --steps {steps} "
                                             f"--batch-size {batch_size} --lr {lr} --seed {seed}"})
    return judge


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 reproduces the bundled file)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    train_judge(args.out, args.steps, args.batch_size, args.lr, args.seed)
    from ..checkpoints import load_model

    judge = load_model(args.out)  # what was saved (float16 weights), measured on fresh held-out renders
    for resolution in (32, 64):
        for n in (1, 2, 3):
            scores = heldout_accuracy(judge, 1000, n, seed=2024, resolution=resolution)
            print(f"held-out renders, {resolution} px, {n} object(s), 1000 captions: "
                  + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
