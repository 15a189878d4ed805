"""Pieces every dataset shares: the skip counters, warn-once logging, and ``collate``.

A sample is a dict ``{"image": FloatTensor [3, H, W] in [-1, 1], "caption": str, ...}`` with
optional ``"label": int`` and dataset-specific JSON-able extras (``"attributes"``, ``"key"``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

import torch

logger = logging.getLogger("glide.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


@dataclass
class DataStats:
    """How many samples a dataset had to skip or patch up, and why.

    Counts are per process: with DataLoader workers each worker keeps its own copy.
    """

    skipped_images: int = 0  # unreadable / corrupt / missing image: sample skipped
    skipped_captions: int = 0  # caption not UTF-8: sample skipped
    missing_captions: int = 0  # no caption: sample kept with caption ""
    read_errors: int = 0  # webdataset: a shard or tar member that could not be opened or read
    _warned: set[str] = field(default_factory=set, repr=False, compare=False)

    def warn_once(self, what: str, message: str) -> None:
        """Log ``message`` the first time ``what`` (a file or a key) causes trouble."""
        if what not in self._warned:
            self._warned.add(what)
            logger.warning(message)

    def report(self) -> str:
        counts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if not f.name.startswith("_")]
        return "data stats: " + ", ".join(counts)


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
