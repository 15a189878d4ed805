"""Pieces every dataset shares: the skip counters, warn-once logging, and ``collate``.

A sample is a dict ``{"image": FloatTensor [3, H, W] in [-1, 1], "caption": str, ...}`` with
optional ``"label": int`` and dataset-specific JSON-able extras (``"attributes"``, ``"key"``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger("glide.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


# What a dataset may have to skip or patch up, and why.
STAT_NAMES = (
    "skipped_images",  # unreadable / corrupt / missing image: sample skipped
    "skipped_captions",  # caption not UTF-8 or unreadable: sample skipped
    "missing_captions",  # no caption: sample kept with caption ""
    "read_errors",  # webdataset: a shard or tar member that could not be opened or read
)


@dataclass
class DataStats:
    """The samples a dataset had to skip or patch up: the keys (file paths, ``shard:key``) behind
    each count, so that a file read again (next epoch, another worker, another rank) counts once.

    Each DataLoader worker keeps its own copy; ``take_new()`` hands over what it found since the
    last call, and the reader merges those into one set per name (``glide.training.loader``).
    """

    keys: dict[str, set[str]] = field(default_factory=lambda: {name: set() for name in STAT_NAMES})
    _new: dict[str, set[str]] = field(default_factory=dict, repr=False, compare=False)

    def add(self, name: str, key: str, warning: str | None = None) -> None:
        """Record ``key`` under ``name``; log ``warning`` the first time this copy sees it there."""
        if key in self.keys[name]:
            return
        self.keys[name].add(key)
        self._new.setdefault(name, set()).add(key)
        if warning is not None:
            logger.warning(warning)

    def take_new(self) -> dict[str, set[str]]:
        """The keys recorded since the last call (empty when nothing is new)."""
        new, self._new = self._new, {}
        return new

    def merge(self, keys: Mapping[str, Iterable[str]]) -> None:
        """Add keys found elsewhere (another worker's or rank's ``take_new()``)."""
        for name, found in keys.items():
            self.keys[name].update(found)

    def counts(self) -> dict[str, int]:
        return {name: len(found) for name, found in self.keys.items()}

    def __getattr__(self, name: str) -> int:
        """``stats.skipped_images`` and the other names of ``STAT_NAMES``: how many keys each holds."""
        if name in STAT_NAMES:
            return len(self.keys[name])
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def report(self) -> str:
        return "data stats: " + ", ".join(f"{name}={count}" for name, count in self.counts().items())


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch a list of samples: images stacked to ``[B, 3, H, W]``, ``label`` to LongTensor [B].

    Other tensors are stacked, everything else (captions, attributes, keys) stays a list.
    A key missing from some samples is dropped, so mixed batches never crash.
    """
    if not batch:
        raise ValueError("collate() got an empty batch")
    keys = set(batch[0]).intersection(*batch[1:])
    out: dict[str, Any] = {}
    for key in sorted(keys):
        values = [sample[key] for sample in batch]
        if key == "label":
            out[key] = torch.as_tensor(values, dtype=torch.long)
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        else:
            out[key] = values
    return out
