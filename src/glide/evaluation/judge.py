"""Caption accuracy in the shapes domain: the judge's reading of an image, compared with its caption.

``read_scenes`` turns a ``ShapesJudge`` output into scenes (the attribute dicts of
``glide.data.shapes``); ``score_caption`` compares one scene with a caption parsed by
``parse_caption``. A caption is right as a whole when every object is present with its colour,
shape and size, no other object is, and every relation holds between the predicted centres
(``shapes.relation``). The per-attribute scores match caption objects to detected ones first
(same shape and colour, then the most attributes in common) so that "a red square" read as an
orange square counts as a right shape and size and a wrong colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.shapes import COLOURS, SHAPES, SIZES, label_for, parse_caption, relation

BUNDLED_JUDGE = "bundled:shapes-judge"
ATTRIBUTES = ("object", "shape", "colour", "size", "relation", "count", "caption")
_SIZE_NAMES = tuple(SIZES)  # ("small", "large"): index 1 is large
_ATTRS = ("shape", "colour", "size")


def load_judge(spec: str | Path = BUNDLED_JUDGE, device: str | torch.device = "cpu") -> nn.Module:
    """The shapes judge of ``spec`` (default: the bundled one), checked to be a judge."""
    from ..checkpoints import load_model

    model = load_model(spec, device=device)
    if model.config.model_type != "shapes-judge":
        raise ValueError(f"{spec} is a {model.config.model_type} model, not a shapes judge (e.g. {BUNDLED_JUDGE})")
    return model


def scene_targets(scenes: Sequence[Sequence[dict[str, Any]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact labels of ``scenes``: presence ``[N, P]``, large ``[N, P]`` (0/1) and centre ``[N, P, 2]``."""
    n, pairs = len(scenes), len(SHAPES) * len(COLOURS)
    presence, large, centre = torch.zeros(n, pairs), torch.zeros(n, pairs), torch.zeros(n, pairs, 2)
    for i, scene in enumerate(scenes):
        for a in scene:
            k = label_for(a["shape"], a["colour"])
            presence[i, k] = 1.0
            large[i, k] = float(a["size"] == "large")
            centre[i, k] = torch.tensor([a["x"], a["y"]])
    return presence, large, centre


def read_scenes(output, threshold: float = 0.5) -> list[list[dict[str, Any]]]:
    """A judge output (``JudgeOutput``) -> one scene per image: the pairs whose presence
    probability exceeds ``threshold``, with their predicted size and centre."""
    present = torch.sigmoid(output.presence.float()) > threshold
    large = output.large.float() > 0
    centre = output.centre.float()
    scenes = []
    for i in range(len(present)):
        scene = []
        for k in present[i].nonzero().flatten().tolist():
            shape, colour = divmod(k, len(COLOURS))
            x, y = centre[i, k].tolist()
            scene.append({"shape": SHAPES[shape], "colour": list(COLOURS)[colour],
                          "size": _SIZE_NAMES[int(large[i, k])], "x": x, "y": y})
        scenes.append(scene)
    return scenes


@torch.no_grad()
def judge_images(judge: nn.Module, images: torch.Tensor, batch_size: int = 256) -> tuple[list, torch.Tensor]:
    """(scenes, penultimate features ``[N, D]``) of ``images`` ``[N, 3, H, W]`` in [-1, 1]."""
    scenes, features = [], []
    device = next(judge.parameters()).device
    for chunk in images.split(batch_size):
        out = judge(chunk.to(device))
        scenes += read_scenes(out)
        features.append(out.features.float().cpu())
    return scenes, torch.cat(features) if features else torch.zeros(0, judge.config.feature_dim)


def _match(wanted: list[dict[str, Any]], found: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """For each wanted object, the detected object it is compared with (None if none is left)."""
    left = list(found)
    matched: list[dict[str, Any] | None] = [None] * len(wanted)
    exact = [i for i, w in enumerate(wanted) if any(_same_pair(w, f) for f in left)]
    for i in exact:  # exact (shape, colour) pairs first: they are unique per scene
        matched[i] = next(f for f in left if _same_pair(wanted[i], f))
        left.remove(matched[i])
    for i, w in enumerate(wanted):
        if matched[i] is None and left:
            matched[i] = max(left, key=lambda f: sum(f[k] == w[k] for k in _ATTRS))
            left.remove(matched[i])
    return matched


def _same_pair(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["shape"] == b["shape"] and a["colour"] == b["colour"]


def score_caption(caption: str, scene: list[dict[str, Any]]) -> dict[str, float]:
    """How well ``scene`` (what the judge read) shows ``caption``: a score in [0, 1] per ``ATTRIBUTES``.

    ``object``: caption objects found with the right shape and colour; ``shape`` / ``colour`` /
    ``size``: right attributes of the matched objects; ``relation``: relations that hold (1 when
    the caption has none); ``count``: 1 if exactly as many objects; ``caption``: 1 if all is right.
    Raises ``ValueError`` for a caption outside the shapes grammar.
    """
    parsed = parse_caption(caption)
    wanted, relations = parsed["objects"], parsed["relations"]
    matched = _match(wanted, scene)
    scores = {"object": _mean([m is not None and _same_pair(w, m) for w, m in zip(wanted, matched, strict=True)])}
    for key in _ATTRS:
        scores[key] = _mean([m is not None and m[key] == w[key] for w, m in zip(wanted, matched, strict=True)])
    exact = [m if m is not None and _same_pair(w, m) else None for w, m in zip(wanted, matched, strict=True)]
    held = [exact[i] is not None and exact[j] is not None and relation(exact[i], exact[j]) == rel
            for i, rel, j in relations]
    scores["relation"] = _mean(held) if held else 1.0
    scores["count"] = float(len(scene) == len(wanted))
    scores["caption"] = float(scores["object"] == scores["size"] == scores["relation"] == scores["count"] == 1.0)
    return scores


def _mean(values: Sequence[bool]) -> float:
    return sum(map(float, values)) / len(values)


def score_captions(captions: Sequence[str], scenes: Sequence[list[dict[str, Any]]]) -> list[dict[str, float]]:
    """``score_caption`` for each (caption, scene) pair; the lengths must match."""
    if len(captions) != len(scenes):
        raise ValueError(f"{len(captions)} captions for {len(scenes)} images; give one caption per image")
    return [score_caption(c, s) for c, s in zip(captions, scenes, strict=True)]


def mean_scores(scores: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each attribute's score over images (``caption``: whole-caption accuracy)."""
    if not scores:
        raise ValueError("no scores to average")
    return {key: sum(s[key] for s in scores) / len(scores) for key in ATTRIBUTES}
