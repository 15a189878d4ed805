"""``glide download``, ``glide convert``, ``glide models``: the checkpoint cache and files."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import CONTEXT_SETTINGS, command_body, log

_CACHE_DIR_OPTION = click.option(
    "--cache-dir", type=click.Path(file_okay=False),
    help="Folder of the official checkpoints (default $GLIDE_CACHE/checkpoints, ~/.cache/glide/checkpoints).")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_CACHE_DIR_OPTION
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@command_body
def download(names: tuple[str, ...], cache_dir: str | None, progress: bool) -> None:
    """Download official checkpoints (and the tokenizer vocabularies they use) into the cache.

    NAME is base, upsample, base-inpaint, upsample-inpaint, clip-image-enc, clip-text-enc,
    or 'all'. Interrupted downloads resume; prints where each file is.

    \b
    Examples:
      glide download base upsample
      glide download all --cache-dir /data/glide
    """
    from ..checkpoints import OFFICIAL_CHECKPOINTS, download_official, official_path
    from ..tokenizer import CLIP_MERGES, GPT2_ENCODER, GPT2_MERGES, vocab_path

    wanted = list(OFFICIAL_CHECKPOINTS) if "all" in names else list(dict.fromkeys(names))
    unknown = [name for name in wanted if name not in OFFICIAL_CHECKPOINTS]
    if unknown:
        raise click.BadParameter(f"unknown checkpoint(s) {', '.join(unknown)}; valid names: "
                                 f"{', '.join(OFFICIAL_CHECKPOINTS)}, all", param_hint="NAME")
    for name in wanted:
        already = official_path(name, cache_dir).exists()
        path = download_official(name, cache_dir, progress=progress)
        click.echo(f"{name}: {path}" + (" (already downloaded)" if already else ""))
    vocab = []
    if any(OFFICIAL_CHECKPOINTS[n].model_type == "text2im" for n in wanted):
        vocab += [GPT2_ENCODER, GPT2_MERGES]
    if any(OFFICIAL_CHECKPOINTS[n].model_type != "text2im" for n in wanted):
        vocab.append(CLIP_MERGES)
    for spec in vocab:
        click.echo(f"vocabulary {spec.name}: {vocab_path(spec)}")


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("src", metavar="SRC")
@click.argument("dst", required=False, type=click.Path(dir_okay=False))
@_CACHE_DIR_OPTION
@click.option("--force", "-f", is_flag=True, help="Overwrite DST if it exists.")
@command_body
def convert(src: str, dst: str | None, cache_dir: str | None, force: bool) -> None:
    """Convert a checkpoint to .safetensors with its config stored inside.

    SRC is an official name (downloaded), a .pt/.safetensors file or a checkpoint folder;
    DST defaults to SRC with the .safetensors suffix.

    \b
    Examples:
      glide convert base                      # next to the cached base.pt
      glide convert upsample.pt upsample.safetensors
    """
    from ..checkpoints import OFFICIAL_CHECKPOINTS, convert_checkpoint
    from ..checkpoints.specs import require_downloaded

    if src in OFFICIAL_CHECKPOINTS:
        require_downloaded([src], cache_dir)
    started = time.perf_counter()
    path = convert_checkpoint(src, dst, cache_dir=cache_dir, overwrite=force)
    log(f"converted {src} in {time.perf_counter() - started:.1f}s")
    click.echo(str(path))


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@click.command(context_settings=CONTEXT_SETTINGS)
@_CACHE_DIR_OPTION
@command_body
def models(cache_dir: str | None) -> None:
    """List the official checkpoints (downloaded or not, and where), the bundled models and the presets.

    \b
    Examples:
      glide models
      GLIDE_CACHE=/data/glide glide models
    """
    from ..checkpoints import bundled_names, checkpoint_config, checkpoint_dir, official_status
    from ..models import PRESETS, config_from_dict

    rows = official_status(cache_dir)
    click.echo(f"Official checkpoints (in {checkpoint_dir(cache_dir)}):")
    width = max(len(row["name"]) for row in rows)
    for row in rows:
        path = Path(row["path"])
        if row["downloaded"]:
            found = path if path.exists() else path.with_suffix(".safetensors")
            state = f"downloaded  {found} ({_size(found)})"
        else:
            state = f"missing     glide download {row['name']}"
        click.echo(f"  {row['name']:<{width}}  {state}")
    click.echo("\nBundled models (inside the package, offline: bundled:NAME):")
    for name in bundled_names():
        click.echo(f"  bundled:{name}  {config_from_dict(checkpoint_config('bundled:' + name)).describe()}")
    click.echo("\nPresets (the architectures for glide train; text-to-image ones untrained: --model random:NAME):")
    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        click.echo(f"  {name:<{width}}  {preset.description}")

