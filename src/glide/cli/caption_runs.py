"""``glide sample --captions FILE``: one image per caption (x ``--num-images``) for evaluation at scale.

The output folder holds ``NNNNNN.png`` (image number j = caption i * n + k), ``captions.jsonl``
(``{"file", "caption"}`` per image, what ``glide eval samples DIR --captions DIR/captions.jsonl``
reads) and ``manifest.json`` (what the images depend on: captions, seed, models, sampling).

* **Resumable**: an image whose file exists is not sampled again (files are written atomically),
  and a folder whose manifest describes another run is refused rather than mixed.
* **Sharded**: under ``torchrun --nproc_per_node N -m glide sample --captions ...`` rank r takes
  images r, r + N, ...; each rank records what it wrote in ``shards/rank-R.jsonl``, and rank 0
  merges those into ``captions.jsonl`` once every rank is done. Image j draws its noise from its own
  generator (seed, j), so the images equal those of a one-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .common import log

MANIFEST = "manifest.json"
CAPTIONS = "captions.jsonl"
SHARDS = "shards"


def read_caption_file(path: str | Path) -> list[str]:
    """One caption per non-empty line; an empty file is an error."""
    path = Path(path)
    try:
        captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"cannot read {path}: {e}", param_hint="--captions") from None
    if not captions:
        raise click.BadParameter(f"{path} holds no captions (one per line)", param_hint="--captions")
    return captions


def image_file(number: int) -> str:
    return f"{number:06d}.png"


def manifest_for(captions: Sequence[str], num_images: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """What a caption run's images depend on; two runs with equal manifests make equal images."""
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()
    return {"captions_sha256": digest, "captions": len(captions), "num_images": num_images,
            "images": len(captions) * num_images, **metadata}


def _write_json_atomic(data: Any, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json``, or check that the one there describes the same run."""
    path = folder / MANIFEST
    if path.is_file():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            existing = None
        if existing != manifest:
            changed = sorted(k for k in set(manifest) | set(existing or {})
                             if (existing or {}).get(k) != manifest.get(k)) if isinstance(existing, dict) else ["all"]
            raise click.UsageError(
                f"{folder} holds images of another run (differs in: {', '.join(changed)}); resume with the same "
                f"captions and options, or write to another --output")
        return
    folder.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(manifest, path)


def sample_caption_file(folder: Path, captions: Sequence[str], num_images: int, metadata: dict[str, Any],
                        max_batch: int, env, call: Callable[[list[str], list[int]], Any], progress: bool = True,
                        echo: bool = True) -> Path:
    """Sample this rank's missing images in chunks of ``max_batch``; rank 0 then merges the shards.

    ``call(prompts, numbers) -> PipelineOutput`` samples images ``numbers`` (one per prompt);
    ``env``: a ``glide.training.distributed.Distributed``. Returns the path of ``captions.jsonl``.
    ``progress``: a bar of this rank's images (rate, ETA); ``echo``: print each written path.
    """
    from tqdm import tqdm

    from ..images import save_png

    manifest = manifest_for(captions, num_images, metadata)
    if env.is_main:
        check_manifest(folder, manifest)
    env.barrier()
    total = len(captions) * num_images
    mine = range(env.rank, total, env.world_size)
    todo = [j for j in mine if not (folder / image_file(j)).is_file()]
    if len(todo) < len(mine):
        log(f"rank {env.rank}: {len(mine) - len(todo)} of {len(mine)} images already there; sampling the other "
            f"{len(todo)}")
    shard_dir = folder / SHARDS
    shard_dir.mkdir(exist_ok=True)
    bar = tqdm(total=len(todo), desc=f"images (rank {env.rank})" if env.enabled else "images", unit="img",
               disable=not progress or not todo)
    with bar, (shard_dir / f"rank-{env.rank}.jsonl").open("a", encoding="utf-8") as shard:
        for start in range(0, len(todo), max_batch):
            numbers = todo[start:start + max_batch]
            out = call([captions[j // num_images] for j in numbers], numbers)
            for image, number in zip(out.images, numbers, strict=True):
                path = folder / image_file(number)
                save_png(image, path, {"glide": {**metadata, "caption": captions[number // num_images],
                                                 "image_number": number}})
                shard.write(json.dumps({"file": path.name, "caption": captions[number // num_images]}) + "\n")
                shard.flush()
                if echo:
                    click.echo(str(path))
            bar.update(len(numbers))
    env.barrier()
    merged = folder / CAPTIONS
    if env.is_main:
        merge_shards(folder, captions, num_images)
    env.barrier()
    return merged


def merge_shards(folder: Path, captions: Sequence[str], num_images: int) -> Path:
    """``captions.jsonl`` for every image of the run, in image order (every file must exist); the
    shard records are removed once it is written."""
    total = len(captions) * num_images
    missing = [image_file(j) for j in range(total) if not (folder / image_file(j)).is_file()]
    if missing:
        raise click.ClickException(f"{len(missing)} of {total} images are missing in {folder} (e.g. {missing[0]}); "
                                   f"run the same command again to sample them")
    path = folder / CAPTIONS
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    with partial.open("w", encoding="utf-8") as f:
        for j in range(total):
            f.write(json.dumps({"file": image_file(j), "caption": captions[j // num_images]}) + "\n")
    os.replace(partial, path)
    for shard in (folder / SHARDS).glob("rank-*.jsonl"):
        shard.unlink()
    try:
        (folder / SHARDS).rmdir()
    except OSError:
        pass
    return path
