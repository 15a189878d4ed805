"""``glide download``, ``glide convert``, ``glide models``: the checkpoint cache and files."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .common import CONTEXT_SETTINGS, Number, Steps, command_body, log
from .options import check_sampler

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
@click.option("--weights", default="ema", show_default=True,
              help="For a run or step folder: ema (the slowest EMA), model, or a file stem such as ema-0.999.")
@click.option("--half", is_flag=True, help="Store float32 tensors as float16 (half the size; loading upcasts).")
@click.option("--sampler", callback=check_sampler, metavar="NAME",
              help="Record the sampler the model is best used with; 'glide sample' and the pipelines "
                   "then use it by default (with --steps and --guidance-scale).")
@click.option("--steps", type=Steps(), metavar="N|SPACING",
              help="The recommended steps (with --sampler): a count or a spacing such as trailing10.")
@click.option("--guidance-scale", type=Number(low=0), help="The recommended guidance scale (with --sampler).")
@click.option("--strength", type=Number(low=0, high=1, low_open=True),
              help="The recommended strength (with --sampler): an upsampler below 1 starts from its noised input.")
@command_body
def convert(src: str, dst: str | None, cache_dir: str | None, force: bool, weights: str, half: bool,
            sampler: str | None, steps: int | str | None, guidance_scale: float | None, strength: float | None) -> None:
    """Convert a checkpoint to .safetensors with its config stored inside.

    SRC is an official name (downloaded), a .pt/.safetensors file, a checkpoint or run folder;
    DST defaults to SRC with the .safetensors suffix.

    \b
    Examples:
      glide convert base                      # next to the cached base.pt
      glide convert upsample.pt upsample.safetensors
      glide convert runs/base32 base.safetensors --half --sampler ddpm --steps 100 --guidance-scale 3
    """
    from ..checkpoints import OFFICIAL_CHECKPOINTS, convert_checkpoint
    from ..checkpoints.specs import require_downloaded

    sampling = None
    if sampler is not None:
        from ..pipelines import StageOptions

        given = {"timesteps": steps, "guidance_scale": guidance_scale, "strength": strength}
        stage = StageOptions(sampler=sampler, **{k: v for k, v in given.items() if v is not None})
        sampling = {k: getattr(stage, k) for k in ("sampler", "timesteps", "guidance_scale", "strength")}
    elif steps is not None or guidance_scale is not None or strength is not None:
        raise click.UsageError("--steps, --guidance-scale and --strength record a recommended sampling: "
                               "give --sampler too")
    if src in OFFICIAL_CHECKPOINTS:
        require_downloaded([src], cache_dir)
    started = time.perf_counter()
    path = convert_checkpoint(src, dst, weights=weights, cache_dir=cache_dir, overwrite=force, half=half,
                              sampling=sampling)
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
    names = bundled_names()
    width = max((len(name) for name in names), default=0) + len("bundled:")
    for name in names:
        spec = "bundled:" + name
        click.echo(f"  {spec:<{width}}  {config_from_dict(checkpoint_config(spec)).describe()}")
    click.echo("  ('bundled' picks the cascade's model of each role: glide sample, inpaint and edit use it by default)")
    click.echo("\nPresets (the architectures for glide train; text-to-image ones untrained: --model random:NAME):")
    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        click.echo(f"  {name:<{width}}  {preset.description}")

