"""A caption probe: does a text-to-image base model tell the words of its captions apart?

A diffusion model is also a classifier (Li et al. 2023, "Your diffusion model is secretly a
zero-shot classifier"): for an image ``x_0`` and candidate captions ``c_k``, the caption with
the lowest denoising loss ``sum_j |eps_j - eps_theta(x_t_j, t_j, c_k)|^2`` is the model's guess.
On renders of a single shape of the ``shapes`` data, the probe asks which of the 7 colour words
(shape and size kept), which of the 6 shape words (colour and size kept) and which of the 2 size
words gives the lowest loss over fixed ``(t, noise)`` pairs shared by every candidate of an image.
The accuracies rise long before the samples follow their captions, so a run shows early whether
it learns its text; chance is 1/7, 1/6 and 1/2.

The binding probe (``binding_probe``) asks the same of two-object scenes: which of the 4 relation
words (objects kept), and the true caption or the one with the two colours swapped ("a red circle
above a blue square" vs "a blue circle above a red square"). Chance is 1/4 and 1/2; a model that
reads its captions as a bag of words stays at chance on both.

    python -m glide.training.probe RUN --all          # every checkpoint of a run, one JSON line each
    python -m glide.training.probe RUN --binding      # relations and colour binding instead
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.shapes import COLOURS, RELATIONS, SHAPES, SIZES, CaptionedShapes, caption_for, relation, render_shapes
from ..data.transforms import image_to_tensor
from ..diffusion import GaussianDiffusion
from ..models.text2im import TextEmbedding

ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": tuple(SIZES)}


@dataclass
class ProbeResult:
    """Accuracy of each attribute (fraction of images whose true word gave the lowest loss)."""

    colour_accuracy: float
    shape_accuracy: float
    size_accuracy: float
    all_accuracy: float  # colour, shape and size all right
    images: int
    pairs: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def probe_scenes(count: int, seed: int = 0) -> list[dict]:
    """``count`` single-shape scenes cycling through every (shape, colour) pair; random size and
    position from ``seed`` (kept inside the image as the ``shapes`` data does)."""
    if count < 1:
        raise ValueError(f"the probe needs at least 1 image, got {count}")
    rng = np.random.default_rng([seed, 7])
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    order = rng.permutation(len(pairs))
    scenes = []
    for i in range(count):
        shape, colour = pairs[order[i % len(pairs)]]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        margin = 1.15 * SIZES[size] + 0.02
        x, y = (round(float(v), 4) for v in rng.uniform(margin, 1 - margin, size=2))
        scenes.append({"shape": shape, "colour": colour, "size": size, "x": x, "y": y})
    return scenes


def probe_timesteps(num_timesteps: int, pairs: int) -> torch.Tensor:
    """``pairs`` timesteps spread evenly over the process (midpoints of equal bins): LongTensor."""
    return ((torch.arange(pairs, dtype=torch.float64) + 0.5) * num_timesteps / pairs).long()


def _candidates(scene: dict) -> dict[str, list[str]]:
    """Per attribute, the captions with each of its words (the true one included)."""
    out = {}
    for name, words in ATTRIBUTES.items():
        out[name] = [caption_for([{**scene, name: word}]) for word in words]
    return out


@torch.no_grad()
def caption_probe(model: nn.Module, *, images: int = 42, pairs: int = 12, seed: int = 0,
                  batch_size: int = 64) -> ProbeResult:
    """Run the probe on a text-conditional base model (``Text2ImUNet`` without low-res or
    inpainting inputs) at its own ``image_size``. Deterministic for a given model and ``seed``;
    the model's train/eval mode is restored afterwards."""
    _check_base(model, "caption probe")
    if pairs < 1 or batch_size < 1:
        raise ValueError(f"pairs and batch_size must be >= 1, got {pairs}, {batch_size}")
    hits = {name: [] for name in ATTRIBUTES}

    def captions_of(scene: list[dict]) -> list[str]:
        return sorted({c for group in _candidates(scene[0]).values() for c in group})

    for scene, captions, losses in _scene_losses(model, [[s] for s in probe_scenes(images, seed)], captions_of,
                                                 pairs, seed, batch_size):
        by_caption = dict(zip(captions, losses, strict=True))
        truth = caption_for(scene)
        for name, group in _candidates(scene[0]).items():
            best = min(group, key=lambda c: (by_caption[c], c))
            hits[name].append(best == truth)
    correct = {name: np.array(v) for name, v in hits.items()}
    everything = correct["colour"] & correct["shape"] & correct["size"]
    return ProbeResult(colour_accuracy=float(correct["colour"].mean()), shape_accuracy=float(correct["shape"].mean()),
                       size_accuracy=float(correct["size"].mean()), all_accuracy=float(everything.mean()),
                       images=images, pairs=pairs)


@dataclass
class BindingResult:
    """On two-object scenes: the share whose true relation word, and whose true colour binding
    (against the colours swapped), gave the lowest loss."""

    relation_accuracy: float
    binding_accuracy: float
    images: int
    pairs: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _check_base(model: nn.Module, probe: str) -> None:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "text2im" or not config.xf_width:
        raise ValueError(f"the {probe} needs a text-conditional text2im model (a base checkpoint)")
    if config.super_res or config.inpaint:
        raise ValueError(f"the {probe} takes a base model, not an upsampler or inpainting model")


def binding_scenes(count: int, seed: int = 0, split: str = "train") -> list[list[dict]]:
    """The binding probe's ``count`` two-object scenes of ``split``, a pure function of its arguments."""
    data = CaptionedShapes(32, length=count, seed=seed + 123, min_shapes=2, max_shapes=2, split=split)
    return [data.scene(index) for index in range(count)]


@torch.no_grad()
def binding_probe(model: nn.Module, *, images: int = 40, pairs: int = 12, seed: int = 0, split: str = "train",
                  batch_size: int = 64) -> BindingResult:
    """The binding probe (module doc) on ``images`` two-object scenes of the ``split`` (``train``:
    scenes like the training data's, so a miss is not about unseen combinations)."""
    _check_base(model, "binding probe")
    if images < 1 or pairs < 1:
        raise ValueError(f"images and pairs must be >= 1, got {images}, {pairs}")
    relations, bindings = [], []

    def captions_of(scene: list[dict]) -> list[str]:
        a, b = scene
        true_relation = relation(a, b)
        candidates = [caption_for(scene).replace(f" {true_relation} ", f" {word} ", 1) for word in RELATIONS]
        return candidates + [caption_for([{**a, "colour": b["colour"]}, {**b, "colour": a["colour"]}])]

    for (a, b), _, losses in _scene_losses(model, binding_scenes(images, seed, split), captions_of, pairs, seed,
                                           batch_size):
        truth = RELATIONS.index(relation(a, b))
        relations.append(min(range(len(RELATIONS)), key=lambda k: (losses[k], k)) == truth)
        bindings.append(losses[truth] < losses[-1])  # the true binding against the colours swapped
    return BindingResult(relation_accuracy=float(np.mean(relations)), binding_accuracy=float(np.mean(bindings)),
                         images=images, pairs=pairs)


def _scene_losses(model: nn.Module, scenes: list[list[dict]], captions_of, pairs: int, seed: int, batch_size: int):
    """For each scene: (scene, its candidate captions, their denoising losses) over ``pairs`` fixed
    (t, noise) pairs shared by the candidates; the model runs in eval mode, then is restored."""
    config = model.config
    diffusion = GaussianDiffusion.from_schedule(config.noise_schedule, config.diffusion_steps)
    device = next(model.parameters()).device
    timesteps = probe_timesteps(diffusion.num_timesteps, pairs).to(device)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for scene in scenes:
            x_start = image_to_tensor(render_shapes(scene, config.image_size))
            noise = torch.randn((pairs, *x_start.shape), generator=generator).to(device)
            x_t = diffusion.q_sample(x_start.to(device).expand(pairs, -1, -1, -1), timesteps, noise)
            captions = captions_of(scene)
            yield scene, captions, _denoising_losses(model, captions, x_t, timesteps, noise, batch_size)
    finally:
        model.train(was_training)


def _denoising_losses(model: nn.Module, captions: list[str], x_t: torch.Tensor, timesteps: torch.Tensor,
                      noise: torch.Tensor, batch_size: int) -> list[float]:
    """Sum over the pairs of the eps MSE, for each caption: ``[len(captions)]``."""
    tokens, mask = model.tokenize(captions)
    text = model.encode_text(tokens, mask)
    pairs = x_t.shape[0]
    # every (caption, pair) combination, caption-major, run in chunks of batch_size
    index = torch.arange(len(captions) * pairs, device=x_t.device)
    per_item = []
    for chunk in index.split(batch_size):
        c, p = chunk // pairs, chunk % pairs
        chunk_text = TextEmbedding(text.xf_proj[c], text.xf_out[c])
        eps = model(x_t[p], timesteps[p], text=chunk_text)[:, :3].float()
        per_item.append(((eps - noise[p]) ** 2).mean(dim=(1, 2, 3)))
    return torch.cat(per_item).view(len(captions), pairs).sum(dim=1).tolist()


# --------------------------------------------------------------------------------------------
# Command line: a checkpoint, or every checkpoint of a run


def _checkpoint_folders(path: Path, every: bool) -> list[Path]:
    from .state import list_step_dirs

    found = list_step_dirs(path)
    if not found:
        return [path]
    return found if every else found[-1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glide.training.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a run folder, a checkpoint folder or a .safetensors file")
    parser.add_argument("--all", action="store_true", help="every checkpoint of the run (default: the latest)")
    parser.add_argument("--weights", default="ema", help="'ema' (slowest EMA), 'model' or 'ema-<rate>'")
    parser.add_argument("--images", type=int, default=42, help="single-shape renders to classify")
    parser.add_argument("--pairs", type=int, default=12, help="(t, noise) pairs per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--binding", action="store_true",
                        help="the binding probe on two-object scenes (relation words, colour swaps) instead")
    args = parser.parse_args(argv)

    from ..checkpoints import CheckpointError, load_model

    path = Path(args.path)
    if not path.exists():
        print(f"error: {path}: no such file or folder", file=sys.stderr)
        return 2
    for folder in _checkpoint_folders(path, args.all):
        try:
            model = load_model(folder, weights=args.weights)
            probe = binding_probe if args.binding else caption_probe
            result = probe(model, images=args.images, pairs=args.pairs, seed=args.seed)
        except (CheckpointError, ValueError) as exc:
            print(f"error: {folder}: {exc}", file=sys.stderr)
            return 2
        step = int(folder.name.split("-")[1]) if folder.name.startswith("step-") else None
        print(json.dumps({"checkpoint": str(folder), "step": step, "weights": args.weights, **result.to_dict()}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
