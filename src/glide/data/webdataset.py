"""Streaming tar shards in the LAION / img2dataset layout with the ``webdataset`` package.

Each shard holds samples ``<key>.jpg`` (or ``.jpeg`` / ``.png`` / ``.webp``) + ``<key>.txt``, with an
optional ``<key>.json`` (its ``"caption"`` is used when there is no ``.txt``). URLs may use brace
expansion: ``"data/laion-{00000..00127}.tar"``.

Shards are split first by rank (``rank=`` / ``world_size=`` arguments, else torch.distributed when
initialised, else the ``RANK`` / ``WORLD_SIZE`` environment variables), then by DataLoader worker,
so every sample is read by exactly one process. Per epoch the shard order and a shuffle buffer of
raw (still encoded) samples are seeded from ``(seed, epoch, rank, worker)``. Shard counts need not
divide evenly, so ranks may see different sample counts; for DDP training use ``repeat=True``
(an endless stream) and count steps, not epochs.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset import tariterators

from glide.data.common import DataStats, logger
from glide.data.transforms import ImageTransform, clean_caption
from glide.images import load_image

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_urls(urls: str | Iterable[str]) -> list[str]:
    """Brace-expand a pattern (``::`` separates several) or flatten a list of patterns."""
    if isinstance(urls, str | os.PathLike):
        return wds.shardlists.expand_urls(os.fspath(urls))
    return [url for pattern in urls for url in expand_urls(pattern)]


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:") and url != "-"


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's (rank, world_size): explicit args, else torch.distributed, else env, else (0, 1)."""
    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = int(os.environ.get("RANK", 0)) if rank is None else rank
            world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world_size {world_size}")
    return rank, world_size


class WebDatasetSource(IterableDataset):
    """An ``IterableDataset`` of ``{"image", "caption", "key", "url"}`` samples from tar shards.

    ``shuffle_buffer <= 1`` disables sample shuffling; ``shard_shuffle=False`` keeps shard order.
    ``repeat=True`` streams forever (epoch after epoch, each reshuffled). Corrupt images, captions
    that are not UTF-8 and unreadable shards are skipped, logged once and counted in ``self.stats``
    (per process / worker).
    """

    def __init__(
        self,
        urls: str | list[str],
        resolution: int,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        shard_shuffle: bool = True,
        repeat: bool = False,
    ):
        super().__init__()
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError(f"webdataset pattern {urls!r} expands to no shards")
        missing = [u for u in self.urls if _is_local(u) and not os.path.exists(u)]
        if missing:
            raise ValueError(f"webdataset shards not found: {', '.join(missing[:3])}"
                             f"{' ...' if len(missing) > 3 else ''} ({len(missing)} of {len(self.urls)} "
                             f"from {urls!r}; expected .tar files of <key>.jpg/.png + <key>.txt)")
        self.transform = ImageTransform(resolution)
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shard_shuffle = shard_shuffle
        self.repeat = repeat
        self.epoch = 0
        self.stats = DataStats()

    def set_epoch(self, epoch: int) -> None:
        """Reseed shard order and shuffle buffer (call before each epoch when ``repeat=False``)."""
        self.epoch = epoch

    def shards_for(self, rank: int, world_size: int, worker: int = 0, num_workers: int = 1) -> list[str]:
        """The shards one (rank, worker) reads, before per-epoch shuffling."""
        return self.urls[rank::world_size][worker::num_workers]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world_size = resolve_rank(self.rank, self.world_size)
        if len(self.urls) < world_size:
            raise ValueError(f"{len(self.urls)} shards cannot be split over {world_size} ranks "
                             f"(rank {rank} would get none); use at least one shard per rank")
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = self.shards_for(rank, world_size, worker, num_workers)
        if not shards:
            logger.warning(f"webdataset: DataLoader worker {worker} of rank {rank} has no shards "
                           f"({len(self.urls)} shards, {world_size} ranks x {num_workers} workers)")
            return
        epoch = self.epoch
        while True:
            rng = random.Random(f"{self.seed}-{epoch}-{rank}-{worker}")
            order = list(shards)
            if self.shard_shuffle:
                rng.shuffle(order)
            files = tariterators.tar_file_expander(self._open_shards(order), handler=self._on_error)
            samples = tariterators.group_by_keys(files, handler=self._on_error)
            if self.shuffle_buffer > 1:
                samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
            for raw in samples:
                sample = self._decode(raw)
                if sample is not None:
                    yield sample
            if not self.repeat:
                return
            epoch += 1

    def _open_shards(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        """Open shards one at a time (local paths, http(s), ``pipe:``) and close each when done."""
        for url in urls:
            try:
                stream = wds.gopen(url)
            except Exception as exc:
                self._on_error(exc)
                continue
            try:
                yield {"url": url, "stream": stream}
            finally:
                stream.close()

    def _on_error(self, exc: Exception) -> bool:
        self.stats.add("read_errors", repr(exc.args[-1:]), f"webdataset: skipping unreadable data: {exc!r}")
        return True  # continue with the next member / shard

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        key, url = raw.get("__key__", "?"), raw.get("__url__", "?")
        where = f"{url}:{key}"
        image_key = next((k for k in IMAGE_KEYS if k in raw), None)
        if image_key is None:
            self.stats.add("skipped_images", where,
                           f"webdataset: sample {where} has no image ({', '.join(IMAGE_KEYS)})")
            return None
        caption = None
        if "txt" in raw:
            try:
                caption = raw["txt"].decode("utf-8-sig")
            except UnicodeDecodeError:
                self.stats.add("skipped_captions", where, f"webdataset: skipping {where}: caption is not UTF-8")
                return None
        elif "json" in raw:
            try:
                caption = json.loads(raw["json"]).get("caption")
            except (ValueError, AttributeError):
                caption = None
        if not caption:
            self.stats.add("missing_captions", where)
            caption = ""
        try:
            image = load_image(raw[image_key])
        except Exception as exc:  # any decoder error: skip, never fatal
            self.stats.add("skipped_images", where, f"webdataset: skipping corrupt image {where}: {exc!r}")
            return None
        image_tensor: torch.Tensor = self.transform(image)
        return {"image": image_tensor, "caption": clean_caption(caption), "key": key, "url": url}
