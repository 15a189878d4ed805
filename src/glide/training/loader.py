"""Training data: the dataset for a ``--data`` spec, a resumable deterministic batch order, the
per-rank split, skipped-sample counts from worker processes, and captions for tokenizer training.

Map-style datasets (folders, tables, shapes, emoji) are read as one endless stream of sample
positions: position ``n`` is index ``perm_e[n % N]`` of epoch ``e = n // N``, where ``perm_e`` is a
permutation seeded by ``(seed, e)``. Optimizer step ``s`` consumes positions
``[s * B, (s + 1) * B)`` of the global batch ``B``; its ``world x accum`` micro-batches are
consecutive chunks of that range, chunk ``k * world + rank`` going to ``rank`` at micro-step ``k``.
The data position is thus a function of the step alone, and resuming at step ``s`` starts
exactly there, whatever the number of ranks.

Webdataset shards are split by rank (and worker) in ``glide.data.WebDatasetSource``; there the
position is the number of micro-batches a rank has consumed, and resuming skips that many.
"""

from __future__ import annotations

import copy
import os
import signal
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from ..data import DataStats, build_dataset, collate
from .config import ConfigError, TrainConfig


def chunk_index(micro_step: int, rank: int, world_size: int) -> int:
    """Which chunk of a step's global batch ``rank`` processes at accumulation ``micro_step``."""
    return micro_step * world_size + rank


def batch_positions(micro_step: int, rank: int, world_size: int, micro_batch: int) -> range:
    """Positions inside the global batch (0..B-1) of one micro-batch; they seed its random draws."""
    start = chunk_index(micro_step, rank, world_size) * micro_batch
    return range(start, start + micro_batch)


def open_dataset(config: TrainConfig, resolution: int) -> Dataset:
    """``glide.data.build_dataset`` with the trainer's options and a clear error for bad specs."""
    kwargs: dict[str, Any] = {}
    spec = config.data
    if config.stage == "classifier" and os.path.isdir(spec):
        kwargs["class_labels"] = True  # one subfolder per class
    try:
        dataset = build_dataset(spec, resolution, **kwargs)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise ConfigError(f"--data {spec}: {exc}") from None
    if isinstance(dataset, IterableDataset):
        # Endless, reshuffled every pass; our own sampling seed; flips are done by the trainer.
        if hasattr(dataset, "repeat"):
            dataset.repeat = True
        if hasattr(dataset, "seed"):
            dataset.seed = config.seed
    elif len(dataset) == 0:
        raise ConfigError(f"--data {spec}: the dataset is empty")
    return dataset


def probe(dataset: Dataset, count: int) -> list[dict[str, Any]]:
    """The first ``count`` samples (fixed sample-grid prompts and images; early data errors).

    Reads a copy, so the training stream's skip counters count only what training reads.
    """
    dataset = one_pass_copy(dataset)
    try:
        if isinstance(dataset, IterableDataset):
            samples = list(islice(iter(dataset), count))
        else:
            samples = [dataset[i] for i in range(min(count, len(dataset)))]
    except RuntimeError as exc:  # e.g. "none of the N samples in ... could be read"
        raise ConfigError(f"no usable training data: {exc}") from None
    if not samples:
        raise ConfigError("the dataset yielded no usable samples")
    return samples


def one_pass_copy(dataset: Dataset) -> Dataset:
    """A copy to peek into: its skip counters stay separate and a stream ends after one pass."""
    dataset = copy.deepcopy(dataset)
    if hasattr(dataset, "repeat"):
        dataset.repeat = False
    return dataset


# --------------------------------------------------------------------------------------------
# Batch order


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's micro-batches of dataset indices, step after step, from ``start_step`` on."""

    def __init__(self, length: int, batch_size: int, micro_batch: int, accum: int, rank: int, world_size: int,
                 seed: int, start_step: int = 0):
        self.length, self.batch_size, self.micro_batch = length, batch_size, micro_batch
        self.accum, self.rank, self.world_size = accum, rank, world_size
        self.seed, self.start_step = seed, start_step
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            # a prime stride: (seed, epoch) pairs give distinct generator seeds up to a million epochs
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.length, generator=generator)
        return self._perm

    def indices(self, positions: range) -> list[int]:
        return [int(self.permutation(n // self.length)[n % self.length]) for n in positions]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            for k in range(self.accum):
                local = batch_positions(k, self.rank, self.world_size, self.micro_batch)
                start = step * self.batch_size
                yield self.indices(range(start + local.start, start + local.stop))
            step += 1


# --------------------------------------------------------------------------------------------
# Skipped samples: each DataLoader worker has its own ``DataStats``; the keys it found since its
# last sample travel with the next one, and the reader takes their union (a file counts once).


def _new_keys(dataset: Any) -> dict[str, set[str]]:
    stats = getattr(dataset, "stats", None)
    return stats.take_new() if isinstance(stats, DataStats) else {}


class _MapWithStats(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        sample["_stats"] = _new_keys(self.dataset)
        return sample


class _IterWithStats(IterableDataset):
    def __init__(self, dataset: IterableDataset):
        self.dataset = dataset

    def __iter__(self):
        for sample in self.dataset:
            sample = dict(sample)
            sample["_stats"] = _new_keys(self.dataset)
            yield sample


def collate_with_stats(samples: list[dict[str, Any]]) -> dict[str, Any]:
    found: dict[str, set[str]] = {}
    for sample in samples:
        for name, keys in sample.pop("_stats").items():
            found.setdefault(name, set()).update(keys)
    batch = collate(samples)
    batch["_stats"] = found
    return batch


def _quiet_worker(_: int) -> None:
    """Workers leave Ctrl-C / SIGTERM to the main process, which saves a checkpoint first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class DataStream:
    """Endless micro-batches for this rank, resumable at an optimizer step; tracks skip counts."""

    def __init__(self, dataset: Dataset, config: TrainConfig, micro_batch: int, rank: int, world_size: int,
                 start_step: int, pin_memory: bool = False):
        self.dataset = dataset
        self.iterable = isinstance(dataset, IterableDataset)
        self.found = DataStats()  # the union of what this rank's workers skipped
        self._shared = DataStats()  # the union over every rank, as of the last all_stats()
        common = dict(num_workers=config.num_workers, collate_fn=collate_with_stats, pin_memory=pin_memory,
                      worker_init_fn=_quiet_worker if config.num_workers else None,
                      generator=torch.Generator().manual_seed(config.seed))  # never the global RNG
        if self.iterable:
            loader = DataLoader(_IterWithStats(dataset), batch_size=micro_batch, drop_last=True, **common)
        else:
            sampler = GlobalBatchSampler(len(dataset), config.batch_size, micro_batch, config.grad_accum, rank,
                                         world_size, config.seed, start_step)
            loader = DataLoader(_MapWithStats(dataset), batch_sampler=sampler, **common)
        self._iterator: Iterator[dict[str, Any]] | None = iter(loader)
        if self.iterable:
            try:
                for _ in range(start_step * config.grad_accum):  # deterministic stream: replay to the saved position
                    next(self)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        """Stop the worker processes now (idempotent).

        Workers ignore SIGTERM (see ``_quiet_worker``), so a loader left to the garbage collector
        keeps them alive while a traceback holds it, and the interpreter's exit then waits on them
        for ever. The trainer therefore closes its stream in a ``finally``.
        """
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # the multi-process iterator's own teardown
        if shutdown is not None:
            shutdown()

    def __next__(self) -> dict[str, Any]:
        if self._iterator is None:
            raise RuntimeError("the data stream is closed")
        try:
            batch = next(self._iterator)
        except StopIteration:
            raise ConfigError("the data stream ended: no usable samples left (see the warnings above)") from None
        self.found.merge(batch.pop("_stats"))
        return batch

    def stats(self) -> dict[str, int]:
        """Skipped / patched samples this rank has met, each file or key counted once."""
        return self.found.counts()

    def all_stats(self, gather: Callable[[Any], list[Any]]) -> dict[str, int]:
        """Skipped / patched samples over every rank, each file counted once (a collective call:
        ``gather`` is ``Distributed.gather``). Only keys new since the last call travel."""
        new = {name: keys - self._shared.keys[name] for name, keys in self.found.keys.items()}
        for keys in gather({name: found for name, found in new.items() if found}):
            self._shared.merge(keys)
        return self._shared.counts()


# --------------------------------------------------------------------------------------------
# Captions for --tokenizer train:N


def iter_captions(dataset: Dataset, limit: int = 200_000) -> Iterator[str]:
    """Captions of (up to ``limit``) samples, read cheaply where the dataset allows it."""
    from ..data import CaptionedShapes, caption_for

    if isinstance(dataset, CaptionedShapes):
        for i in range(min(limit, len(dataset))):
            yield caption_for(dataset.scene(i))
        return
    entries = getattr(dataset, "entries", None)
    if entries is not None:  # folder / table datasets: no image decoding needed
        for entry in entries[:limit]:
            if entry.caption is not None:
                yield entry.caption
            elif entry.caption_file is not None:
                try:
                    yield entry.caption_file.read_bytes().decode("utf-8-sig")
                except (OSError, UnicodeDecodeError):
                    continue
        return
    if isinstance(dataset, IterableDataset):
        dataset = one_pass_copy(dataset)
        source: Any = islice(iter(dataset), min(limit, 20_000))  # decodes images: keep it bounded
    else:
        source = (dataset[i] for i in range(min(limit, len(dataset))))
    for sample in source:
        yield sample.get("caption", "")
