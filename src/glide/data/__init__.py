"""Datasets, transforms and masks for training.

Every dataset yields dicts ``{"image": FloatTensor [3, R, R] in [-1, 1], "caption": str, ...}``
(optionally ``"label": int`` and JSON-able extras); ``collate`` batches them for a DataLoader and
the trainer tokenises the captions with the model's tokenizer. ``build_dataset(spec, resolution)``
turns a command-line string into the right dataset.
"""

from __future__ import annotations

import os
import re
from typing import Any

from torch.utils.data import Dataset

from glide.data.common import IMAGE_EXTENSIONS, DataStats, collate
from glide.data.emoji import EmojiDataset, find_emoji_font
from glide.data.folder import CaptionTableDataset, ImageFolderDataset
from glide.data.masks import random_mask, random_masks
from glide.data.shapes import (
    COLOURS,
    HELD_OUT_OBJECTS,
    NUM_CLASSES,
    SHAPES,
    CaptionedShapes,
    caption_for,
    hard_negatives,
    heldout_captions,
    parse_caption,
)
from glide.data.transforms import ImageTransform, clean_caption, make_low_res
from glide.data.webdataset import WebDatasetSource
from glide.images import load_image

__all__ = [
    "COLOURS", "HELD_OUT_OBJECTS", "IMAGE_EXTENSIONS", "NUM_CLASSES", "SHAPES",
    "CaptionTableDataset", "CaptionedShapes", "DataStats", "EmojiDataset", "ImageFolderDataset",
    "ImageTransform", "WebDatasetSource",
    "build_dataset", "caption_for", "clean_caption", "collate", "find_emoji_font", "hard_negatives", "heldout_captions",
    "is_webdataset_spec",
    "load_image", "make_low_res", "parse_caption", "random_mask", "random_masks",
]

_BRACES = re.compile(r"\{[^{}]*\.\.[^{}]*\}")


def is_webdataset_spec(spec: str) -> bool:
    """True for tar shard URLs: ending in ``.tar`` or using brace ranges like ``{000..009}``."""
    return spec.endswith(".tar") or bool(_BRACES.search(spec)) or spec.startswith("pipe:")


def build_dataset(spec: str, resolution: int, **kwargs: Any) -> Dataset:
    """A dataset from a short string; ``kwargs`` go to the dataset's constructor.

    ``"shapes"`` / ``"shapes:N"`` (N samples) / ``"shapes:N:K"`` or ``"shapes:N:J-K"`` (J to K shapes
    per scene, default 1-3) -> CaptionedShapes; ``shapes-train`` / ``shapes-heldout`` (same
    arguments) -> its split without / with the held-out objects (``HELD_OUT_OBJECTS``); ``"emoji"`` -> EmojiDataset;
    ``*.tar`` or a brace pattern ``data-{000..009}.tar`` -> WebDatasetSource; ``*.csv`` /
    ``*.jsonl`` -> CaptionTableDataset; a directory -> ImageFolderDataset.
    """
    spec = str(spec)
    name, _, arg = spec.partition(":")
    if name in _SHAPES_SPLITS:
        kwargs.update(_shapes_options(spec, arg))
        split = _SHAPES_SPLITS[name]
        if split is not None:
            if kwargs.get("split", split) != split:
                raise ValueError(f"dataset spec {spec!r} is the {split!r} split; "
                                 f"do not also pass split={kwargs['split']!r}")
            kwargs["split"] = split
        return CaptionedShapes(resolution, **kwargs)
    if spec == "emoji":
        return EmojiDataset(resolution, **kwargs)
    if is_webdataset_spec(spec):
        return WebDatasetSource(spec, resolution, **kwargs)
    if spec.lower().endswith((".csv", ".jsonl", ".ndjson")):
        return CaptionTableDataset(spec, resolution, **kwargs)
    if os.path.isdir(spec):
        return ImageFolderDataset(spec, resolution, **kwargs)
    reason = "no such file or directory" if not os.path.exists(spec) else "not a recognised dataset file"
    raise ValueError(
        f"cannot build a dataset from {spec!r} ({reason}); expected 'shapes', 'shapes:N', 'shapes-train:N', "
        f"'shapes-heldout:N', 'emoji', an image "
        f"folder, a .csv/.jsonl caption table, or webdataset shards ('data-{{000..009}}.tar')")


_SHAPES_SPLITS = {"shapes": None, "shapes-train": "train", "shapes-heldout": "heldout"}  # None: split= or "all"
_SHAPES_SPEC = re.compile(r"(?P<length>\d+)(?::(?:(?P<min>\d+)-)?(?P<max>\d+))?")


def _shapes_options(spec: str, arg: str) -> dict[str, int]:
    """``N`` -> length; ``N:K`` -> up to K shapes per scene; ``N:J-K`` -> J to K shapes."""
    if not arg:
        return {}
    m = _SHAPES_SPEC.fullmatch(arg)
    if m is None or int(m["length"]) <= 0:
        name = spec.partition(":")[0]
        raise ValueError(f"dataset spec {spec!r}: expected '{name}:N' with N a positive integer, optionally "
                         f"followed by ':K' or ':J-K' shapes per scene (e.g. '{name}:20000:1')")
    options = {"length": int(m["length"])}
    if m["max"] is not None:
        options["max_shapes"] = int(m["max"])
        options["min_shapes"] = int(m["min"]) if m["min"] is not None else 1
    return options
