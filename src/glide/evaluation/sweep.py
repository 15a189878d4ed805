"""A guidance sweep: sample one caption set at several classifier-free guidance scales with a
pipeline, evaluate each setting, write one grid per setting and the results table."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .report import evaluate_images, flat_summary, reference_renders, save_grid, write_csv, write_json


def image_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """The generators of images ``start .. start + count - 1`` of a set sampled with ``seed``."""
    return [torch.Generator().manual_seed(seed * 1_000_003 + start + j) for j in range(count)]


def sample_batched(count: int, batch_size: int, seed: int, run, desc: str = "sampling",
                   progress: bool = True) -> torch.Tensor:
    """``run(rows, generators) -> images`` over batches of ``count`` images (``rows`` a slice), image
    j drawing its noise from its own generator (seed, j): the images do not depend on ``batch_size``."""
    chunks = []
    with tqdm(total=count, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, count, batch_size):
            rows = slice(start, min(count, start + batch_size))
            chunks.append(run(rows, image_generators(seed, start, rows.stop - start)).float().cpu())
            bar.update(rows.stop - start)
    return torch.cat(chunks)


def sample_captions(pipeline, captions: Sequence[str], options, *, seed: int = 0, batch_size: int = 50,
                    cond_fns: Sequence = (), progress: bool = True, desc: str = "sampling") -> torch.Tensor:
    """One image per caption ``[N, 3, H, W]`` in [-1, 1] (see ``sample_batched``). ``cond_fns``:
    gradient guidances of the base stage (``glide.guidance``), bound to each batch's captions."""

    def run(rows: slice, generators: list[torch.Generator]) -> torch.Tensor:
        out = pipeline(list(captions[rows]), base=options, cond_fns=cond_fns, generator=generators, progress=False,
                       upsample=None if pipeline.upsampler is not None else False)
        return out.samples

    return sample_batched(len(captions), batch_size, seed, run, desc, progress)


def run_sweep(pipeline, captions: Sequence[str], scenes, scales: Sequence[float], options, judge: nn.Module, *,
              clip: nn.Module | None = None, fid: bool = True, seed: int = 0, batch_size: int = 50,
              out: str | Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """One summary row per guidance scale (``flat_summary`` plus ``guidance_scale``); with ``out``,
    also ``grid-scale-S.png`` per scale, ``results.json`` and ``results.csv``. With ``fid``, every
    row also holds ``fid_real``: the FID between the reference renders and a second, independent
    set of renders of the same captions (new layouts), the floor a perfect model would reach."""
    rows, reference, floor = [], None, {}
    for scale in tqdm(scales, desc="guidance scales", disable=not progress):
        images = sample_captions(pipeline, captions, dataclasses.replace(options, guidance_scale=scale), seed=seed,
                                 batch_size=batch_size, progress=progress, desc=f"scale {scale:g}")
        if fid and reference is None:  # the same real renders for every setting
            reference = reference_renders(captions, images.shape[-1], seed, scenes)
            second = reference_renders(captions, images.shape[-1], seed + 1)
            real = evaluate_images(second, captions, judge, reference=reference, seed=seed)
            floor = {"fid_real": real.summary["fid"]}
        result = evaluate_images(images, captions, judge, reference=reference, clip=clip, fid=fid, seed=seed)
        rows.append({"guidance_scale": scale, **flat_summary(result.summary), **floor})
        if out is not None:
            save_grid(images, Path(out) / f"grid-scale-{scale:g}.png")
    if out is not None:
        write_json(rows, Path(out) / "results.json")
        write_csv(rows, Path(out) / "results.csv")
    return rows
