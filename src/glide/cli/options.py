"""The options of sample / inpaint / edit, each checked when parsed (before any model loads).

Numbers go through :class:`~glide.cli.common.Number`; the output folder, prompts and image files
are checked here too, so a typo costs nothing. Torch-free at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from .common import SMALL_MODEL_PARAMS, Number, Steps, Threads

OPENAI = "openai"  # the official pair of the command (glide.checkpoints.specs.OPENAI)
BUNDLED = "bundled"  # the bundled shapes cascade (glide.checkpoints.specs.BUNDLED)
RANDOM_CLIP = "random"  # a tiny randomly initialised noised CLIP (glide.checkpoints.specs.RANDOM_CLIP)
RECIPE_CHOICES = ("default", "fast", "notebook")  # "default" and glide.pipelines.RECIPES
DTYPES = ("auto", "fp32", "fp16", "bf16")
# --max-batch default: a CPU gains nothing from larger batches of these sizes and would only
# hold more memory; a CUDA GPU gets one image per GiB of its memory, within [4, 64].
CPU_MAX_BATCH = 8
GPU_MAX_BATCH = (4, 64)


def check_sampler(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Validated at parse time (not at import: glide.sampling imports torch)."""
    from ..sampling import check_sampler as check

    try:
        return None if value is None else check(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def check_output(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    """The output folder must be a folder we can write, or creatable: checked before anything loads."""
    if value.exists():
        if not value.is_dir():
            raise click.BadParameter(f"{value} exists and is not a folder")
        if not os.access(value, os.W_OK | os.X_OK):
            raise click.BadParameter(f"the folder {value} is not writable")
        return value
    parent = value.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise click.BadParameter(f"cannot create {value}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise click.BadParameter(f"cannot create {value}: the folder {parent} is not writable")
    return value


def check_prompts(ctx: click.Context, param: click.Parameter, value):
    """Refuse empty and whitespace-only prompts (the context length is checked once the model's
    config is read, in ``prepare``)."""
    prompts = (value,) if isinstance(value, str) else value
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            where = f"prompt {i + 1}" if len(prompts) > 1 else "the prompt"
            raise click.BadParameter(f"{where} is empty; describe the image to make, e.g. \"a corgi\"")
    return value


def load_image_param(ctx: click.Context, param: click.Parameter, value: str | None):
    """Open an image option's file now, so a bad path or file is a usage error naming the flag."""
    if value is None:
        return None
    from PIL import Image

    from ..images import load_image

    try:
        if param.name != "mask":
            return load_image(value)
        with Image.open(value) as image:
            image.load()
            mask = image.convert("L")
    except Exception as e:  # PIL raises many types for a bad file: all mean "not an image we can read"
        raise click.BadParameter(f"cannot read image {value}: {e}") from None
    if mask.getextrema()[1] < 128:  # white (>= 0.5) = repaint, as glide.images.load_mask reads it
        raise click.BadParameter(f"{value} marks nothing to repaint (paint the region to change white)")
    return mask


def sampling_options(fn: Callable) -> Callable:
    """The options every generating command takes."""
    options = [
        click.option("--model", "-m", default=BUNDLED, show_default=True, metavar="NAME|PATH",
                     help=f"Base model: '{BUNDLED}' (the small shapes cascade inside the package: offline, "
                          f"seconds on a CPU), '{OPENAI}' (the official pair, downloaded with 'glide download'), "
                          "an official name, bundled:NAME, a .pt/.safetensors file, a checkpoint or "
                          "training-run folder, or random:PRESET for a randomly initialised preset "
                          "(e.g. random:tiny-base; untrained, for testing)."),
        click.option("--upsampler", metavar="NAME|PATH|none",
                     help="Upsampler model (same forms as --model), or 'none' to keep the base images. "
                          "Default: the one matching --model (bundled, official, or random:tiny-*)."),
        click.option("--recipe", type=click.Choice(RECIPE_CHOICES), default="default", show_default=True,
                     help="default: what each model's checkpoint recommends, else DPM-Solver++ 20 + 5 steps. "
                          "fast: DPM-Solver++(2M) SDE trailing10 + 3 upsampler calls (10 steps from strength "
                          "0.3). notebook: the official notebook's 100 DDPM steps + fast27 upsampling."),
        click.option("--sampler", callback=check_sampler, metavar="NAME",
                     help="Base-stage sampler: ddpm, ddim, plms, dpm++2m, dpm++3m, dpm++2m-sde "
                          "(default: from --recipe)."),
        click.option("--steps", type=Steps(), metavar="N|SPACING",
                     help="Base-stage steps (default: from --recipe): N evenly spaced, or a spacing by noise "
                          "level: logsnrN, karrasN, trailingN (also ddimN, fast27)."),
        click.option("--upsample-sampler", callback=check_sampler, metavar="NAME",
                     help="Upsampler sampler (default: from --recipe)."),
        click.option("--upsample-steps", type=Steps(), metavar="N|SPACING",
                     help="Upsampler steps, as --steps (default: from --recipe)."),
        click.option("--guidance-scale", "-g", type=Number(low=0), metavar="SCALE",
                     help="Classifier-free guidance scale, >= 0; 1 = off (default 3)."),
        click.option("--upsample-temp", type=Number(low=0), default=0.997, show_default=True,
                     help="Scale of the upsampler's starting noise."),
        click.option("--num-images", "-n", type=Number(integer=True, low=1), default=1, show_default=True,
                     help="Images per prompt."),
        click.option("--max-batch", type=Number(integer=True, low=1), metavar="N",
                     help=f"Images sampled at once; more are sampled in chunks of N and written as each "
                          f"chunk finishes, and the same --seed gives the same images whatever N is. "
                          f"Default: {CPU_MAX_BATCH} on CPU and MPS, one per GiB of CUDA memory "
                          f"({GPU_MAX_BATCH[0]} to {GPU_MAX_BATCH[1]})."),
        click.option("--seed", "-s", type=Number(integer=True, low=0),
                     help="Random seed (default: a random one, printed)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (cuda if available, else cpu), cpu, cuda, cuda:N."),
        click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                     help="Model precision; auto = fp16 on cuda, fp32 on cpu."),
        click.option("--winograd/--no-winograd", default=True, show_default=True,
                     help="Run the 3x3 convolutions of large models (20M+ parameters) in fp32 on a CPU as "
                          "Winograd F(4x4, 3x3): 0.7x the step time of the official base, outputs within 1e-4, "
                          "and 1.7 GB more memory for its transformed weights. Small models and "
                          "bf16/fp16 always run the direct convolution."),
        click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("outputs"),
                     show_default=True, callback=check_output,
                     help="Folder for the PNGs and grid-<seed>.png (created if needed)."),
        click.option("--cache-dir", type=click.Path(file_okay=False),
                     help="Folder of the official checkpoints (default $GLIDE_CACHE/checkpoints)."),
        click.option("--threads", type=Threads(), default="auto", show_default=True, metavar="N|auto",
                     help="CPU threads for torch. auto: 1 when every model is small (under "
                          f"{SMALL_MODEL_PARAMS // 1_000_000}M parameters) and runs on the CPU, where "
                          "threading small convolutions costs more than it gives (10x slower measured on "
                          "a busy 2-core machine); otherwise PyTorch's default (one per core)."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def default_max_batch(device) -> int:
    """``--max-batch`` when not given (see :data:`CPU_MAX_BATCH`, :data:`GPU_MAX_BATCH`)."""
    import torch

    if device.type != "cuda":
        return CPU_MAX_BATCH
    gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    low, high = GPU_MAX_BATCH
    return int(min(high, max(low, gib)))
