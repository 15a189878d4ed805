"""CaptionedShapes: a procedural text-to-image dataset that needs no downloads.

Each sample shows 1-3 non-overlapping coloured shapes on a plain background, with a caption such as
``"a small red circle above a large blue square, and a large green star to the right of the blue
square"``. Everything is a pure function of ``(seed, index)``, and the exact scene is kept in the
sample, so evaluation can check a generated image against its prompt:

- ``"attributes"``: one dict per shape, ``{"shape", "colour", "size", "x", "y"}`` with the centre
  ``x, y`` as fractions of the width / height (``y`` grows downwards, as in the image).
- ``"label"``: ``SHAPES.index(shape) * len(COLOURS) + COLOURS.index(colour)`` of the *first* shape
  (the caption's subject), in ``range(NUM_CLASSES)``; ``label_name(label)`` inverts it.

Caption grammar (what ``parse_caption`` reads back)::

    1 shape:   "a {size} {colour} {shape}"
    2 shapes:  "a {size} {colour} {shape} {relation} a {size} {colour} {shape}"
    n shapes:  ... ", a {size} {colour} {shape} {relation} the {colour} {shape}" for shape i > 1,
               relative to shape i - 1, the last clause joined with ", and "

``relation`` is "above", "below", "to the left of" or "to the right of", chosen from the larger of
the horizontal and vertical offsets between the two centres. No two shapes in a scene share both
shape and colour, so "the blue square" is unambiguous.

Held-out split: ``HELD_OUT_OBJECTS`` fixes 12 (size, colour, shape) triples, two per shape, that
``split="train"`` never shows; ``split="heldout"`` shows only scenes with at least one of them, so a
model trained on ``shapes-train`` is evaluated on attribute combinations it never saw. Every
colour, shape and size still occurs in training, in other combinations.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from glide.images import image_to_tensor

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 130, 10),
    "yellow": (240, 205, 0),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "purple": (130, 45, 175),
    "pink": (240, 110, 190),
}
SIZES: dict[str, float] = {"small": 0.10, "large": 0.17}  # nominal radius, fraction of the image side
RELATIONS: tuple[str, ...] = ("above", "below", "to the left of", "to the right of")
NUM_CLASSES = len(SHAPES) * len(COLOURS)
SPLITS: tuple[str, ...] = ("all", "train", "heldout")

# Two per shape: shape i is held out small in colour 2i (mod 7) and large in colour 2i + 3 (mod 7).
HELD_OUT_OBJECTS: frozenset[tuple[str, str, str]] = frozenset(
    triple for i, shape in enumerate(SHAPES) for triple in (
        ("small", list(COLOURS)[(2 * i) % len(COLOURS)], shape),
        ("large", list(COLOURS)[(2 * i + 3) % len(COLOURS)], shape),
    )
)


def is_held_out(a: dict[str, Any]) -> bool:
    """True if the object ``a`` (a dict with size, colour, shape) is one of ``HELD_OUT_OBJECTS``."""
    return (a["size"], a["colour"], a["shape"]) in HELD_OUT_OBJECTS


def in_split(scene: list[dict[str, Any]], split: str) -> bool:
    """Whether ``scene`` belongs to ``split``: "train" has no held-out object, "heldout" at least one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if split == "all":
        return True
    return any(map(is_held_out, scene)) == (split == "heldout")

_EXTENT = 1.15  # every shape fits in a circle of _EXTENT * radius
_GAP = 0.03  # minimum empty space between two shapes' bounding circles (fraction of the side)
_AMBIGUITY = 0.06  # related centres must differ by this much more along the dominant axis
_SUPERSAMPLE = 4


def relation(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Where shape ``a`` is relative to shape ``b``, from their centres (image coords, y down)."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def _noun_phrase(a: dict[str, Any]) -> str:
    return f"a {a['size']} {a['colour']} {a['shape']}"


def _reference(a: dict[str, Any]) -> str:
    return f"the {a['colour']} {a['shape']}"


def caption_for(attributes: list[dict[str, Any]]) -> str:
    """The caption of a scene, following the grammar in the module docstring."""
    if not attributes:
        raise ValueError("caption_for needs at least one shape")
    relations = [relation(attributes[0], attributes[1])] if len(attributes) > 1 else []
    relations += [relation(cur, prev) for prev, cur in zip(attributes[1:], attributes[2:], strict=False)]
    return _render(attributes, relations)


def _render(objects: list[dict[str, Any]], relations: list[str]) -> str:
    """The grammar's text for ``objects`` where relation k links object k + 1 to object k (the
    first reads "object 0 is <rel> object 1", the others "object k + 1 is <rel> object k")."""
    if len(objects) == 1:
        return _noun_phrase(objects[0])
    first, second = objects[0], objects[1]
    clauses = [f"{_noun_phrase(first)} {relations[0]} {_noun_phrase(second)}"]
    for prev, cur, rel in zip(objects[1:-1], objects[2:], relations[1:], strict=True):
        clauses.append(f"{_noun_phrase(cur)} {rel} {_reference(prev)}")
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + ", and " + clauses[-1]


OPPOSITE: dict[str, str] = {"above": "below", "below": "above",
                            "to the left of": "to the right of", "to the right of": "to the left of"}


def hard_negatives(caption: str) -> list[str]:
    """Captions one edit away from ``caption`` that describe another scene: each relation reversed,
    and the colours, shapes or sizes of two neighbouring objects swapped (same words, other
    bindings). A model that reads a caption as a bag of words cannot tell the swaps apart (``[]``
    for one object, or for a caption outside the grammar)."""
    try:
        parsed = parse_caption(caption)
    except ValueError:
        return []
    objects, relations = parsed["objects"], [rel for _, rel, _ in parsed["relations"]]
    original = _render(objects, relations)
    found: list[str] = []
    for k in range(len(relations)):
        found.append(_render(objects, [*relations[:k], OPPOSITE[relations[k]], *relations[k + 1:]]))
    for k in range(len(objects) - 1):
        for attribute in ("colour", "shape", "size"):
            swapped = [dict(o) for o in objects]
            swapped[k][attribute], swapped[k + 1][attribute] = objects[k + 1][attribute], objects[k][attribute]
            if len({(o["shape"], o["colour"]) for o in swapped}) == len(swapped):  # still unambiguous
                found.append(_render(swapped, relations))
    return [text for text in dict.fromkeys(found) if text != original]


_ALT = lambda words: "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
_NP = rf"a (?P<size{{i}}>{_ALT(SIZES)}) (?P<colour{{i}}>{_ALT(COLOURS)}) (?P<shape{{i}}>{_ALT(SHAPES)})"
_REL = rf"(?P<rel{{i}}>{_ALT(RELATIONS)})"
_REF = rf"the (?P<refcolour{{i}}>{_ALT(COLOURS)}) (?P<refshape{{i}}>{_ALT(SHAPES)})"


def parse_caption(caption: str) -> dict[str, list]:
    """Invert ``caption_for``: ``{"objects": [{shape, colour, size}], "relations": [(i, rel, j)]}``.

    ``(i, rel, j)`` reads "object i is <rel> object j". Raises ``ValueError`` if the text does not
    follow the grammar (e.g. a free-form prompt).
    """
    text = " ".join(caption.strip().lower().rstrip(".").split())
    clauses = re.split(r", (?:and )?", text)
    first = re.fullmatch(_NP.format(i=0) + "(?: " + _REL.format(i=0) + " " + _NP.format(i=1) + ")?", clauses[0])
    if first is None:
        raise ValueError(f"caption does not follow the shapes grammar: {caption!r}")
    obj = lambda m, i: {k: m.group(f"{k}{i}") for k in ("shape", "colour", "size")}
    objects = [obj(first, 0)]
    relations: list[tuple[int, str, int]] = []
    if first.group("rel0"):
        objects.append(obj(first, 1))
        relations.append((0, first.group("rel0"), 1))
    elif len(clauses) > 1:
        raise ValueError(f"caption does not follow the shapes grammar: {caption!r}")
    for clause in clauses[1:]:
        m = re.fullmatch(_NP.format(i=0) + " " + _REL.format(i=0) + " " + _REF.format(i=0), clause)
        prev = objects[-1]
        if m is None or (m.group("refcolour0"), m.group("refshape0")) != (prev["colour"], prev["shape"]):
            raise ValueError(f"caption does not follow the shapes grammar: {caption!r}")
        objects.append(obj(m, 0))
        relations.append((len(objects) - 1, m.group("rel0"), len(objects) - 2))
    return {"objects": objects, "relations": relations}


def label_for(shape: str, colour: str) -> int:
    return SHAPES.index(shape) * len(COLOURS) + list(COLOURS).index(colour)


def label_name(label: int) -> str:
    """``label`` -> "{colour} {shape}", e.g. "red circle"."""
    shape, colour = divmod(label, len(COLOURS))
    return f"{list(COLOURS)[colour]} {SHAPES[shape]}"


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices (pixels) of ``shape`` centred at (cx, cy) with nominal radius r."""
    def ring(n: int, radii: list[float], start: float = -math.pi / 2):
        step = 2 * math.pi / (n * len(radii))
        return [(cx + radii[k % len(radii)] * math.cos(start + k * step),
                 cy + radii[k % len(radii)] * math.sin(start + k * step)) for k in range(n * len(radii))]

    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # equilateral, pointing up, nudged down so it looks centred
        return [(x, y + 0.15 * r) for x, y in ring(3, [0.95 * _EXTENT * r])]
    if shape == "star":
        return ring(5, [_EXTENT * r, 0.45 * _EXTENT * r])
    if shape == "diamond":
        return [(cx, cy - 1.1 * r), (cx + 0.75 * r, cy), (cx, cy + 1.1 * r), (cx - 0.75 * r, cy)]
    if shape == "cross":
        a, b = 0.95 * r, 0.33 * r
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_shapes(attributes: list[dict[str, Any]], resolution: int,
                  background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Draw a scene (anti-aliased: drawn at 4x, then box-downsampled) as an RGB PIL image."""
    big = resolution * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(image)
    for a in attributes:
        cx, cy, r = a["x"] * big, a["y"] * big, SIZES[a["size"]] * big
        colour = COLOURS[a["colour"]]
        if a["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.polygon(_outline(a["shape"], cx, cy, r), fill=colour)
    return image.reduce(_SUPERSAMPLE)


def sample_scene(rng: np.random.Generator, min_shapes: int = 1, max_shapes: int = 3,
                 max_tries: int = 200) -> list[dict[str, Any]]:
    """Random non-overlapping shapes with distinct (shape, colour) and unambiguous relations."""
    n = int(rng.integers(min_shapes, max_shapes + 1))
    pairs = rng.permutation(len(SHAPES) * len(COLOURS))[:n]
    scene: list[dict[str, Any]] = []
    for pair in pairs:
        shape, colour = SHAPES[pair // len(COLOURS)], list(COLOURS)[pair % len(COLOURS)]
        size = list(SIZES)[int(rng.integers(len(SIZES)))]
        extent = _EXTENT * SIZES[size]
        for _ in range(max_tries):
            x, y = (float(v) for v in rng.uniform(extent + 0.02, 1 - extent - 0.02, size=2))
            x, y = round(x, 4), round(y, 4)
            candidate = {"shape": shape, "colour": colour, "size": size, "x": x, "y": y}
            if all(_compatible(candidate, other) for other in scene) and (
                not scene or _unambiguous(candidate, scene[-1])
            ):
                scene.append(candidate)
                break
        # a shape that found no room is dropped; scenes stay valid (never fewer than 1 shape)
    return scene


def scene_for_caption(caption: str, rng: np.random.Generator, max_tries: int = 200) -> list[dict[str, Any]]:
    """A random scene that ``caption`` describes (its objects, relations that hold, no overlap).

    For real renders "of the same captions" (FID references). Raises ``ValueError`` for a caption
    outside the grammar, or one whose layout is not found in ``max_tries`` attempts.
    """
    parsed = parse_caption(caption)
    for _ in range(max_tries):  # a whole new layout whenever one object finds no room
        scene = _place(parsed, rng, tries_per_object=50)
        if scene is not None:
            return scene
    raise ValueError(f"found no layout for {caption!r} in {max_tries} tries")


def _place(parsed: dict[str, list], rng: np.random.Generator, tries_per_object: int) -> list[dict[str, Any]] | None:
    scene: list[dict[str, Any]] = []
    for i, obj in enumerate(parsed["objects"]):
        extent = _EXTENT * SIZES[obj["size"]]
        wanted = [(a, rel, b) for a, rel, b in parsed["relations"] if max(a, b) == i]
        for _ in range(tries_per_object):
            x, y = (round(float(v), 4) for v in rng.uniform(extent + 0.02, 1 - extent - 0.02, size=2))
            placed = [*scene, {**obj, "x": x, "y": y}]
            if all(_compatible(placed[-1], other) for other in scene) and all(
                relation(placed[a], placed[b]) == rel and _unambiguous(placed[a], placed[b]) for a, rel, b in wanted
            ):
                scene = placed
                break
        else:
            return None
    return scene


def _compatible(a: dict[str, Any], b: dict[str, Any]) -> bool:
    distance = math.hypot(a["x"] - b["x"], a["y"] - b["y"])
    return distance >= _EXTENT * (SIZES[a["size"]] + SIZES[b["size"]]) + _GAP


def _unambiguous(a: dict[str, Any], b: dict[str, Any]) -> bool:
    dx, dy = abs(a["x"] - b["x"]), abs(a["y"] - b["y"])
    return abs(dx - dy) >= _AMBIGUITY


class CaptionedShapes(Dataset):
    """Procedural map-style dataset of shape scenes; sample ``i`` depends only on ``(seed, i)``.

    Returns ``{"image": [3, R, R] in [-1, 1], "caption": str, "label": int, "attributes": list}``.
    ``split``: "all" (every scene), "train" (no held-out object) or "heldout" (at least one); a
    split redraws from the same ``(seed, index)`` stream until the scene belongs to it.
    """

    def __init__(self, resolution: int = 64, length: int = 10_000, seed: int = 0, min_shapes: int = 1,
                 max_shapes: int = 3, background: tuple[int, int, int] = (255, 255, 255), split: str = "all"):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if not 1 <= min_shapes <= max_shapes:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes, got {min_shapes}, {max_shapes}")
        if length <= 0:
            raise ValueError(f"length must be positive, got {length}")
        self.resolution, self.length, self.seed = resolution, length, seed
        self.min_shapes, self.max_shapes = min_shapes, max_shapes
        self.background = background
        self.split = split

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> list[dict[str, Any]]:
        """The attributes of sample ``index`` without rendering it."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, index])
        while True:  # "all" keeps the first draw; a split accepts 1 in 7 draws or more, never a short scene
            scene = sample_scene(rng, self.min_shapes, self.max_shapes)
            if self.split == "all" or (in_split(scene, self.split) and len(scene) >= self.min_shapes):
                return scene

    def __getitem__(self, index: int) -> dict[str, Any]:
        attributes = self.scene(index)
        image: torch.Tensor = image_to_tensor(render_shapes(attributes, self.resolution, self.background))
        return {
            "image": image,
            "caption": caption_for(attributes),
            "label": label_for(attributes[0]["shape"], attributes[0]["colour"]),
            "attributes": attributes,
        }


def heldout_captions(count: int, num_shapes: int = 1, seed: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
    """``count`` evaluation captions of held-out scenes with ``num_shapes`` objects, with their scenes.

    A pure function of ``(count, num_shapes, seed)``: ``[(caption, attributes), ...]``.
    """
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    data = CaptionedShapes(length=count, seed=seed, min_shapes=num_shapes, max_shapes=num_shapes, split="heldout")
    return [(caption_for(scene), scene) for scene in map(data.scene, range(count))]
