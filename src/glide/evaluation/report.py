"""Evaluating a set of images against their captions, and writing the results.

``evaluate_images`` is the one place where images, captions, the judge, the reference set and
the optional CLIP meet; ``glide eval samples`` and ``glide eval sweep`` call it and write what it
returns with ``write_results`` / ``save_grid`` / the plots in ``glide.evaluation.plots``.

Inputs come from ``load_image_folder`` (sorted file names; one size; every file readable),
``read_captions`` (one caption per line in file-name order, or JSONL ``{"file", "caption"}``)
and ``caption_set`` (``heldout:OBJECTS:COUNT[:SEED]`` or a captions file).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.common import IMAGE_EXTENSIONS
from ..data.shapes import heldout_captions, render_shapes, scene_for_caption
from ..images import image_grid, image_to_tensor, load_image, tensor_to_image
from .judge import ATTRIBUTES, judge_images, mean_scores, score_captions
from .metrics import FID_MIN_SAMPLES, Features, bootstrap_ci, clip_score, fid_with_ci, precision_recall

GRID_MAX_IMAGES = 64


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------
def load_image_folder(folder: str | Path) -> tuple[list[str], torch.Tensor]:
    """(file names, images ``[N, 3, H, W]`` in [-1, 1]) of the images in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"{folder} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    images = []
    for path in files:
        try:
            images.append(image_to_tensor(load_image(path)))
        except Exception as e:  # Pillow raises several types for a broken file
            raise ValueError(f"cannot read image {path}: {e}") from None
        if images[-1].shape != images[0].shape:
            raise ValueError(f"images of different sizes in {folder}: {files[0].name} is "
                             f"{_size(images[0])}, {path.name} is {_size(images[-1])}; resize them to one size")
    return [p.name for p in files], torch.stack(images)


def _size(image: torch.Tensor) -> str:
    return f"{image.shape[-1]}x{image.shape[-2]}"


def read_captions(path: str | Path, files: Sequence[str]) -> list[str]:
    """The caption of each of ``files``: a text file (one per line, in sorted file-name order) or
    a ``.jsonl`` of ``{"file": NAME, "caption": TEXT}``."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        table = {}
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                    table[Path(row["file"]).name] = str(row["caption"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{path}:{number}: expected a JSON object with 'file' and 'caption'") from None
        missing = [f for f in files if f not in table]
        if missing:
            raise ValueError(f"{path} has no caption for {len(missing)} of {len(files)} images (e.g. {missing[0]})")
        return [table[f] for f in files]
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    if len(captions) != len(files):
        raise ValueError(f"{path} has {len(captions)} captions for {len(files)} images; give one caption "
                         f"per line, in sorted file-name order")
    return captions


def caption_set(spec: str, seed: int = 0) -> tuple[list[str], list[list[dict[str, Any]]] | None]:
    """(captions, their scenes or None): ``heldout:OBJECTS:COUNT[:SEED]`` (held-out scenes of 1-3
    objects; e.g. ``heldout:1:200``) or a text file of captions, one per line."""
    if spec.startswith("heldout:"):
        parts = spec.split(":")[1:]
        try:
            objects, count, *rest = map(int, parts)
            if len(rest) > 1 or not 1 <= objects <= 3 or count < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"caption set {spec!r}: expected heldout:OBJECTS:COUNT[:SEED] with OBJECTS 1-3, "
                             f"e.g. heldout:1:200") from None
        pairs = heldout_captions(count, objects, rest[0] if rest else seed)
        return [c for c, _ in pairs], [s for _, s in pairs]
    path = Path(spec)
    if not path.is_file():
        raise ValueError(f"caption set {spec!r}: not a file, nor heldout:OBJECTS:COUNT (e.g. heldout:1:200)")
    captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not captions:
        raise ValueError(f"{path} holds no captions")
    return captions, None


def reference_renders(captions: Sequence[str], resolution: int, seed: int = 0,
                      scenes: Sequence[list[dict[str, Any]]] | None = None) -> torch.Tensor:
    """Real renders of ``captions`` (their ``scenes`` when known, else a random layout of each)."""
    rng = np.random.default_rng(seed)
    scenes = scenes if scenes is not None else [scene_for_caption(c, rng) for c in captions]
    return torch.stack([image_to_tensor(render_shapes(s, resolution)) for s in scenes])


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """``summary``: the numbers (JSON-able); ``rows``: one dict per image (file, caption, scores)."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)


def evaluate_images(images: torch.Tensor, captions: Sequence[str], judge: nn.Module, *,
                    reference: torch.Tensor | None = None, clip: nn.Module | None = None,
                    files: Sequence[str] | None = None, fid: bool = True, seed: int = 0) -> Evaluation:
    """Judge accuracy (per attribute, whole caption with a 95% bootstrap interval), shapes-FID
    (with its interval), precision and recall against ``reference`` (default: renders of the
    captions), and the CLIP score if ``clip`` is given. ``images``: ``[N, 3, H, W]`` in [-1, 1]."""
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images; give one caption per image")
    if fid and min(len(images), len(reference) if reference is not None else len(images)) < FID_MIN_SAMPLES:
        raise ValueError(f"FID needs at least {FID_MIN_SAMPLES} images per set, got {len(images)} samples"
                         + (f" and {len(reference)} references" if reference is not None else "")
                         + "; add images or turn FID off (--no-fid)")
    scenes, features = judge_images(judge, images)
    scores = score_captions(captions, scenes)
    summary: dict[str, Any] = {"images": len(images), "accuracy": mean_scores(scores)}
    summary["caption_accuracy_ci95"] = bootstrap_ci([s["caption"] for s in scores], seed=seed)
    if fid:
        if reference is None:
            reference = reference_renders(captions, images.shape[-1], seed)
        _, real = judge_images(judge, reference)
        real_f, fake_f = Features(real, "shapes-judge"), Features(features, "shapes-judge")
        value, interval = fid_with_ci(real_f, fake_f, seed=seed)
        precision, recall = precision_recall(real_f, fake_f)
        summary.update(fid=value, fid_ci95=interval, precision=precision, recall=recall,
                       reference_images=len(reference))
    clip_scores = clip_score(clip, images, captions) if clip is not None else None
    if clip_scores is not None:
        summary["clip_score"] = float(clip_scores.mean())
    files = list(files) if files is not None else [f"{i:05d}" for i in range(len(images))]
    rows = [{"file": f, "caption": c, **s, **({"clip_score": float(clip_scores[i])} if clip_scores is not None
                                             else {})}
            for i, (f, c, s) in enumerate(zip(files, captions, scores, strict=True))]
    return Evaluation(summary, rows)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def write_json(data: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """``rows`` (dicts with the same keys) as CSV; nested values are written as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list | tuple | dict) else v for k, v in row.items()})
    return path


def save_grid(images: torch.Tensor, path: str | Path) -> Path:
    """The first ``GRID_MAX_IMAGES`` images as one grid PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid([tensor_to_image(x) for x in images[:GRID_MAX_IMAGES]]).save(path)
    return path


def flat_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """One CSV row of a summary: ``accuracy`` spread into ``acc_<attribute>`` columns."""
    row = {k: v for k, v in summary.items() if k != "accuracy"}
    row.update({f"acc_{k}": summary["accuracy"][k] for k in ATTRIBUTES})
    return row
