"""The ``glide`` command line: sample, inpaint, edit, download, convert, models, train.

    glide download base upsample
    glide sample "an oil painting of a corgi" --model openai
    glide sample "a red circle above a blue square" --model random:tiny-base --upsampler random:tiny-upsample

Paths go to stdout (one per written file); logs, warnings and progress bars go to stderr.
Expected failures (unknown names, missing checkpoints, unreadable images, bad values) print one
``Error: ...`` line and exit with a non-zero status; anything else keeps its traceback.
Heavy imports (torch, the models) happen inside the commands so ``glide --help`` stays quick.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import sys
import time
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

OPENAI = "openai"  # the official pair of the command (glide.checkpoints.specs.OPENAI)
RANDOM_CLIP = "random"  # a tiny randomly initialised noised CLIP (glide.checkpoints.specs.RANDOM_CLIP)
RECIPES = ("default", "notebook")
DTYPES = ("auto", "fp32", "fp16", "bf16")
# Commands imported only when used, so a broken optional part cannot break ``glide --help``:
# name -> (module, attribute, short help shown in ``glide --help``).
LAZY_COMMANDS = {"train": ("glide.training.cli", "train", "Train or fine-tune a model (base, upsampler, inpainting).")}
CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"], max_content_width=100)


# --------------------------------------------------------------------------------------------
# Errors, warnings, logging
# --------------------------------------------------------------------------------------------
def _log(message: str, **style) -> None:
    """A line on stderr that does not tear an active progress bar."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        click.secho(message, err=True, **style)


def _warn(message: str) -> None:
    _log(f"Warning: {message}", fg="yellow")


@contextlib.contextmanager
def _expected_errors() -> Iterator[None]:
    """Turn the library's expected failures into one ``Error: ...`` line (no traceback)."""
    from .errors import GlideError

    try:
        yield
    except (GlideError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e) or type(e).__name__) from e


@contextlib.contextmanager
def _visible_warnings() -> Iterator[None]:
    """Show glide's warnings (e.g. a prompt truncated by the tokenizer) as ``Warning: ...`` lines,
    each message once, whatever the interpreter's warning filters say."""
    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = str(message)
        if text not in seen:
            seen.add(text)
            _warn(text)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", category=UserWarning, module=r"glide(\.|$)")
        warnings.showwarning = show
        yield


def _command_body(fn: Callable) -> Callable:
    """Decorator for command callbacks: expected errors -> ``Error:`` lines, warnings visible."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _visible_warnings(), _expected_errors():
            return fn(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------------------------
# The group, with lazily imported commands
# --------------------------------------------------------------------------------------------
class GlideGroup(click.Group):
    """Lists commands in the order they were added; imports ``LAZY_COMMANDS`` only when run."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands) + [name for name in LAZY_COMMANDS if name not in self.commands]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in LAZY_COMMANDS:
            return super().get_command(ctx, name)
        return _load_lazy_command(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Like click's, but lazy commands show their fixed short help instead of being imported.
        rows = []
        for name in self.list_commands(ctx):
            if name in self.commands:
                command = self.commands[name]
                if command.hidden:
                    continue
                rows.append((name, command.get_short_help_str(limit=formatter.width - 6 - len(name))))
            else:
                rows.append((name, LAZY_COMMANDS[name][2]))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _load_lazy_command(name: str) -> click.Command:
    module_name, attribute, short_help = LAZY_COMMANDS[name]
    try:
        import importlib

        module = importlib.import_module(module_name)
        command = getattr(module, attribute, None)
        if not isinstance(command, click.Command):  # else: the module's click command of that name
            found = [c for c in vars(module).values() if isinstance(c, click.Command) and c.name == name]
            if not found:
                raise AttributeError(f"{module_name} has no click command {attribute!r}")
            command = found[0]
        return command
    except Exception as e:  # any import failure: report it when the command is used
        reason = f"{type(e).__name__}: {e}"

    @click.command(name, help=f"{short_help}\n\nUnavailable here: {reason}",
                   context_settings=dict(ignore_unknown_options=True, allow_extra_args=True))
    def unavailable() -> None:
        raise click.ClickException(f"'glide {name}' is unavailable: importing {module_name} failed ({reason})")

    return unavailable


@click.group("glide", cls=GlideGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="glide", prog_name="glide")
def cli() -> None:
    """GLIDE text-guided diffusion: generate, inpaint and edit images from text.

    \b
    Quickstart (official weights, about 1.6 GB):
      glide download base upsample
      glide sample "an oil painting of a corgi" --model openai
    \b
    Offline smoke test (randomly initialised tiny models, a few seconds on a CPU):
      glide sample "a red circle above a blue square" \\
          --model random:tiny-base --upsampler random:tiny-upsample -o outputs

    Checkpoints are cached in $GLIDE_CACHE/checkpoints (default ~/.cache/glide/checkpoints).
    Run 'glide COMMAND --help' for the options of a command.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``glide`` console script (and ``python -m glide``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="glide")


# --------------------------------------------------------------------------------------------
# Device, dtype, models
# --------------------------------------------------------------------------------------------
@dataclass
class LoadedModels:
    base: Any
    upsampler: Any = None
    clip: Any = None
    random: tuple[str, ...] = ()  # the specs that are randomly initialised (untrained)


@contextlib.contextmanager
def _spec_errors() -> Iterator[None]:
    """A spec error names the option it came from: show it as click's usage error for that option."""
    from .errors import SpecError

    try:
        yield
    except SpecError as e:
        raise click.BadParameter(str(e), param_hint=e.option) from None


def plan_models(command: str, model: str, upsampler: str | None, clip: str | None, cache_dir: str | None):
    """Check every model spec before anything is loaded (``glide.checkpoints.specs.plan_models``)."""
    from .checkpoints.specs import plan_models as plan

    with _spec_errors():
        return plan(command, model, upsampler, clip, cache_dir=cache_dir)


def load_models(plan, command: str, *, device, dtype, cache_dir: str | None, progress: bool) -> LoadedModels:
    """Load (or randomly build) the planned models, with a progress bar and clear labels."""
    from tqdm.auto import tqdm

    from .checkpoints.specs import load_for_role

    loaded: dict[str, Any] = {}
    roles = plan.roles()
    with tqdm(total=len(roles), desc="loading models", unit="model", disable=not progress) as bar, _spec_errors():
        for role, spec in roles:
            bar.set_postfix_str(spec.given)
            start = time.perf_counter()
            image_size = loaded["base"].config.image_size if role == "clip" else None
            loaded[role] = load_for_role(spec, role, inpaint=plan.inpaint, device=device, dtype=dtype,
                                         cache_dir=cache_dir, image_size=image_size)
            bar.update()
            _log(f"{role if role != 'base' else 'model'}: {spec.describe(cache_dir)} "
                 f"[{time.perf_counter() - start:.1f}s]", fg="yellow" if spec.is_random else None)
    if plan.random:
        _warn(f"RANDOM WEIGHTS ({', '.join(plan.random)}): untrained models, the images will be noise. "
              f"For real images run 'glide download base upsample' and use --model openai.")
    return LoadedModels(loaded["base"], loaded.get("upsampler"), loaded.get("clip"), plan.random)


# --------------------------------------------------------------------------------------------
# Sampling options shared by sample / inpaint / edit
# --------------------------------------------------------------------------------------------
def _check_sampler(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Validated at parse time but without importing torch for ``--help``."""
    from .sampling import check_sampler

    try:
        return None if value is None else check_sampler(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _check_output(ctx: click.Context, param: click.Parameter, value: Path) -> Path:
    if value.exists() and not value.is_dir():
        raise click.BadParameter(f"{value} exists and is not a folder")
    return value


def _sampling_options(fn: Callable) -> Callable:
    options = [
        click.option("--model", "-m", default=OPENAI, show_default=True, metavar="NAME|PATH",
                     help=f"Base model: '{OPENAI}' (the official pair), an official name, a .pt/.safetensors "
                          "file, a checkpoint or training-run folder, or random:PRESET for a randomly "
                          "initialised preset (e.g. random:tiny-base; untrained, for testing)."),
        click.option("--upsampler", metavar="NAME|PATH|none",
                     help="Upsampler model (same forms as --model), or 'none' to keep the base images. "
                          "Default: the official upsampler, or the matching random:tiny-* preset."),
        click.option("--recipe", type=click.Choice(RECIPES), default="default", show_default=True,
                     help="default: DPM-Solver++ 20 + 5 steps. notebook: the official notebook's "
                          "100 DDPM steps + fast27 upsampling."),
        click.option("--sampler", callback=_check_sampler, metavar="NAME",
                     help="Base-stage sampler: ddpm, ddim, plms, dpm++2m (default: from --recipe)."),
        click.option("--steps", type=click.IntRange(min=1), help="Base-stage steps (default: from --recipe)."),
        click.option("--upsample-sampler", callback=_check_sampler, metavar="NAME",
                     help="Upsampler sampler (default: from --recipe)."),
        click.option("--upsample-steps", type=click.IntRange(min=1),
                     help="Upsampler steps (default: from --recipe)."),
        click.option("--guidance-scale", "-g", type=click.FloatRange(min=0), metavar="SCALE",
                     help="Guidance scale, >= 0; 1 = no guidance (default 3)."),
        click.option("--upsample-temp", type=click.FloatRange(min=0), default=0.997, show_default=True,
                     help="Scale of the upsampler's starting noise."),
        click.option("--batch", "-n", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Images per prompt."),
        click.option("--seed", "-s", type=click.IntRange(min=0), help="Random seed (default: a random one, printed)."),
        click.option("--device", default="auto", show_default=True,
                     help="auto (cuda if available, else cpu), cpu, cuda, cuda:N."),
        click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                     help="Model precision; auto = fp16 on cuda, fp32 on cpu."),
        click.option("--output", "-o", type=click.Path(file_okay=True, path_type=Path), default=Path("outputs"),
                     show_default=True, callback=_check_output, help="Folder for the PNGs and grid.png."),
        click.option("--cache-dir", type=click.Path(file_okay=False),
                     help="Folder of the official checkpoints (default $GLIDE_CACHE/checkpoints)."),
        click.option("--threads", type=click.IntRange(min=1),
                     help="CPU threads for torch (default: 1 for tiny models on CPU, where threading costs "
                          "more than it gives; else PyTorch's default)."),
        click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def stage_options(recipe: str, sampler: str | None, steps: int | None, upsample_sampler: str | None,
                  upsample_steps: int | None, guidance_scale: float | None):
    """The two stages' StageOptions: the recipe, with the command-line overrides applied."""
    from dataclasses import replace

    from .pipelines import DEFAULT_BASE, DEFAULT_UPSAMPLE, NOTEBOOK_BASE, NOTEBOOK_UPSAMPLE

    recipes = (NOTEBOOK_BASE, NOTEBOOK_UPSAMPLE) if recipe == "notebook" else (DEFAULT_BASE, DEFAULT_UPSAMPLE)
    overrides = ({"sampler": sampler, "timesteps": steps, "guidance_scale": guidance_scale},
                 {"sampler": upsample_sampler, "timesteps": upsample_steps})
    stages = []
    for options, changes in zip(recipes, overrides, strict=True):
        changes = {k: v for k, v in changes.items() if v is not None}
        stages.append(replace(options, **changes) if changes else options)  # validated by StageOptions
    return tuple(stages)


TINY_MODEL_PARAMS = 20_000_000


def _set_threads(threads: int | None, models: LoadedModels, device) -> None:
    """``--threads``, or 1 when every model is tiny and runs on the CPU: small convolutions gain
    nothing from intra-op threads and lose a lot when the cores are busy (30x measured on a
    loaded 2-core machine)."""
    import torch

    if threads is None and device.type == "cpu":
        parts = [m for m in (models.base, models.upsampler, models.clip) if m is not None]
        if sum(p.numel() for m in parts for p in m.parameters()) < TINY_MODEL_PARAMS:
            threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def _stage_text(options, guidance: str = "cfg") -> str:
    steps = f"{options.timesteps} steps" if isinstance(options.timesteps, int) else options.timesteps
    if guidance == "none":
        return f"{options.sampler} {steps}, no guidance"
    return f"{options.sampler} {steps}, {guidance} guidance scale {options.guidance_scale:g}"


# --------------------------------------------------------------------------------------------
# Writing images
# --------------------------------------------------------------------------------------------
def slugify(text: str, max_length: int = 60) -> str:
    """A file-name-safe form of a prompt: ascii, lower case, words joined by '-'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "image"


def write_outputs(output, folder: Path, seed: int, batch: int, metadata: dict[str, Any]) -> list[Path]:
    """One PNG per image (``<slug>-<seed>-<k>.png``, k counting the images) plus ``grid.png``;
    prints each path to stdout."""
    from .images import save_png

    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for k, (image, prompt) in enumerate(zip(output.images, output.prompts, strict=True)):
            path = folder / f"{slugify(prompt)}-{seed}-{k}.png"
            paths.append(save_png(image, path, {"glide": {**metadata, "prompt": prompt, "index": k}}))
            click.echo(str(path))
        columns = batch if len(set(output.prompts)) > 1 else None
        grid = save_png(output.grid(columns), folder / "grid.png", {"glide": metadata})
    except OSError as e:
        raise click.ClickException(f"cannot write the images to {folder}: {e.strerror or e}") from e
    click.echo(str(grid))
    return [*paths, grid]


def _pick_seed(seed: int | None) -> int:
    if seed is None:
        seed = secrets.randbelow(2**31)
    _log(f"seed: {seed}")
    return seed


def _finish(models: LoadedModels, paths: list[Path], started: float) -> None:
    note = f" -- RANDOM WEIGHTS ({', '.join(models.random)}): noise, for testing only" if models.random else ""
    _log(f"wrote {len(paths) - 1} image(s) and {paths[-1].name} to {paths[-1].parent} "
         f"in {time.perf_counter() - started:.1f}s{note}", fg="yellow" if models.random else "green")


@dataclass
class _Run:
    """What every generating command sets up before sampling."""

    models: LoadedModels
    base: Any  # StageOptions
    upsample: Any  # StageOptions, or False for no upsampling
    seed: int
    metadata: dict[str, Any]
    started: float


def _prepare(command: str, options: dict[str, Any], clip: str | None = None, guidance: str = "cfg") -> _Run:
    started = time.perf_counter()
    base, up = stage_options(options["recipe"], options["sampler"], options["steps"], options["upsample_sampler"],
                             options["upsample_steps"], options["guidance_scale"])
    from .devices import resolve_device, resolve_dtype

    device = resolve_device(options["device"])
    dtype = resolve_dtype(options["dtype"], device)
    plan = plan_models(command, options["model"], options["upsampler"], clip, options["cache_dir"])
    _log(f"device: {device}, dtype: {str(dtype).removeprefix('torch.')}")
    models = load_models(plan, command, device=device, dtype=dtype, cache_dir=options["cache_dir"],
                         progress=options["progress"])
    _set_threads(options["threads"], models, device)
    seed = _pick_seed(options["seed"])
    metadata = dict(
        command=command, seed=seed, model=options["model"], upsampler=options["upsampler"],
        base_stage=_stage_text(base, guidance), random_weights=list(models.random),
    )
    stages = f"base {_stage_text(base, guidance)} at {models.base.config.image_size} px"
    if models.upsampler is not None:
        metadata["upsample_stage"] = _stage_text(up)
        stages += f"; upsampler {_stage_text(up)} at {models.upsampler.config.image_size} px"
    _log(f"sampling: {stages}")
    return _Run(models, base, up if models.upsampler is not None else False, seed, metadata, started)


# --------------------------------------------------------------------------------------------
# Commands: sample, inpaint, edit
# --------------------------------------------------------------------------------------------
@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompts", nargs=-1, required=True, metavar="PROMPT...")
@_sampling_options
@click.option("--guidance", type=click.Choice(["cfg", "clip", "none"]), default="cfg", show_default=True,
              help="cfg: classifier-free guidance; clip: noised-CLIP gradient (scale = --guidance-scale); "
                   "none: plain conditional sampling.")
@click.option("--clip", metavar=f"{OPENAI}|PATH|{RANDOM_CLIP}",
              help=f"Noised CLIP for --guidance clip and --rerank: '{OPENAI}' (clip-image-enc + clip-text-enc), "
                   f"a checkpoint path, or '{RANDOM_CLIP}' (tiny, untrained). Default when needed: {OPENAI}.")
@click.option("--rerank", type=click.IntRange(min=1), metavar="N",
              help="Draw N base samples per prompt and keep the --batch best by noised-CLIP score.")
@_command_body
def sample(prompts: tuple[str, ...], guidance: str, clip: str | None, rerank: int | None, **options) -> None:
    """Generate images from text: 64 px base model, then the 4x upsampler.

    Quote each prompt; several prompts make one batch. Writes <prompt>-<seed>-<k>.png per image
    and grid.png into --output, and prints their paths.

    \b
    Examples:
      glide sample "an oil painting of a corgi" --model openai
      glide sample "a fall landscape" "a surrealist dream-like oil painting" -n 4 --seed 0
      glide sample "a corgi" --recipe notebook --guidance-scale 3 -o corgis
      glide sample "a red circle above a blue square" --model random:tiny-base --upsampler random:tiny-upsample
    """
    from .pipelines import Text2ImagePipeline

    needs_clip = guidance == "clip" or rerank is not None
    if not needs_clip and clip is not None:
        _warn("--clip is only used with --guidance clip or --rerank; ignoring it")
    if guidance == "none" and options["guidance_scale"] is not None:
        _warn("--guidance-scale is ignored with --guidance none")
    run = _prepare("sample", options, clip=(clip or OPENAI) if needs_clip else None, guidance=guidance)
    run.metadata.update(guidance=guidance, rerank=rerank)
    pipe = Text2ImagePipeline(run.models.base, run.models.upsampler, run.models.clip)
    base, cond_fns = run.base, ()
    if guidance != "cfg":  # clip: CFG off, the scale goes to the CLIP gradient; none: CFG off
        from dataclasses import replace

        from .guidance import ClipGuidance

        cond_fns = (ClipGuidance(run.models.clip, base.guidance_scale),) if guidance == "clip" else ()
        base = replace(base, guidance_scale=1.0)
    out = pipe(list(prompts), num_images_per_prompt=options["batch"], cond_fns=cond_fns, base=base,
               upsample=run.upsample, upsample_temp=options["upsample_temp"], rerank=rerank, seed=run.seed,
               progress=options["progress"])
    _finish(run.models, write_outputs(out, options["output"], run.seed, options["batch"], run.metadata), run.started)


def _load_image_param(ctx: click.Context, param: click.Parameter, value: str | None):
    """Open an image option's file now, so a bad path or file is a usage error."""
    if value is None:
        return None
    from PIL import Image

    from .images import load_image

    try:
        if param.name == "mask":
            with Image.open(value) as image:
                image.load()
                return image.convert("L")
        return load_image(value)
    except Exception as e:
        raise click.BadParameter(f"cannot read image {value}: {e}") from None


def _check_square(image, name: str) -> None:
    w, h = image.size
    if w != h:
        _warn(f"{name} is {w}x{h}; it is resized and centre-cropped to a square")


_IMAGE = click.Path(exists=True, dir_okay=False)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompt")
@click.option("--image", "-i", required=True, type=_IMAGE, callback=_load_image_param,
              help="The image to edit (any size; centre-cropped to a square).")
@click.option("--mask", required=True, type=_IMAGE, callback=_load_image_param,
              help="Mask image: white = repaint, black = keep; same aspect ratio as --image.")
@_sampling_options
@_command_body
def inpaint(prompt: str, image, mask, **options) -> None:
    """Repaint the white region of --mask in --image from a text prompt.

    --model openai (the default) means the official base-inpaint + upsample-inpaint pair.

    \b
    Examples:
      glide download base-inpaint upsample-inpaint
      glide inpaint "a corgi wearing a bow tie" --image photo.png --mask mask.png -n 4
      glide inpaint "a blue square" -i in.png --mask m.png --model random:tiny-base-inpaint
    """
    from .pipelines import InpaintPipeline

    (iw, ih), (mw, mh) = image.size, mask.size
    if abs(iw / ih - mw / mh) > 0.01:
        raise click.BadParameter(f"the mask is {mw}x{mh} but the image is {iw}x{ih}: they must have the same "
                                 f"aspect ratio (ideally the same size)", param_hint="--mask")
    _check_square(image, "the image")
    run = _prepare("inpaint", options)
    pipe = InpaintPipeline(run.models.base, run.models.upsampler)
    out = pipe(prompt, image, mask, num_images_per_prompt=options["batch"], base=run.base, upsample=run.upsample,
               upsample_temp=options["upsample_temp"], seed=run.seed, progress=options["progress"])
    _finish(run.models, write_outputs(out, options["output"], run.seed, options["batch"], run.metadata), run.started)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompt")
@click.option("--image", "-i", required=True, type=_IMAGE, callback=_load_image_param,
              help="The starting image (any size; centre-cropped to a square).")
@click.option("--strength", type=click.FloatRange(0, 1, min_open=True), default=0.6, show_default=True,
              help="How far to noise the image before denoising it with the prompt (0 < s <= 1; "
                   "1 ignores the image).")
@_sampling_options
@_command_body
def edit(prompt: str, image, strength: float, **options) -> None:
    """Edit an image with a prompt (SDEdit): noise it part-way, then denoise it with the text.

    \b
    Examples:
      glide edit "a watercolor painting of a lighthouse" --image photo.jpg --strength 0.6
      glide edit "a red square" -i in.png --model random:tiny-base --seed 0
    """
    from .pipelines import ImageToImagePipeline

    _check_square(image, "the image")
    run = _prepare("edit", options)
    run.metadata.update(strength=strength)
    pipe = ImageToImagePipeline(run.models.base, run.models.upsampler)
    out = pipe(prompt, image, strength=strength, num_images_per_prompt=options["batch"], base=run.base,
               upsample=run.upsample, upsample_temp=options["upsample_temp"], seed=run.seed,
               progress=options["progress"])
    _finish(run.models, write_outputs(out, options["output"], run.seed, options["batch"], run.metadata), run.started)


# --------------------------------------------------------------------------------------------
# Commands: download, convert, models
# --------------------------------------------------------------------------------------------
_CACHE_DIR_OPTION = click.option(
    "--cache-dir", type=click.Path(file_okay=False),
    help="Folder of the official checkpoints (default $GLIDE_CACHE/checkpoints, ~/.cache/glide/checkpoints).")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@_CACHE_DIR_OPTION
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
@_command_body
def download(names: tuple[str, ...], cache_dir: str | None, progress: bool) -> None:
    """Download official checkpoints (and the tokenizer vocabularies they use) into the cache.

    NAME is base, upsample, base-inpaint, upsample-inpaint, clip-image-enc, clip-text-enc,
    or 'all'. Interrupted downloads resume; prints where each file is.

    \b
    Examples:
      glide download base upsample
      glide download all --cache-dir /data/glide
    """
    from .checkpoints import OFFICIAL_CHECKPOINTS, download_official, official_path
    from .tokenizer import CLIP_MERGES, GPT2_ENCODER, GPT2_MERGES, vocab_path

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


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("src", metavar="SRC")
@click.argument("dst", required=False, type=click.Path(dir_okay=False))
@_CACHE_DIR_OPTION
@click.option("--force", "-f", is_flag=True, help="Overwrite DST if it exists.")
@_command_body
def convert(src: str, dst: str | None, cache_dir: str | None, force: bool) -> None:
    """Convert a checkpoint to .safetensors with its config stored inside.

    SRC is an official name (downloaded), a .pt/.safetensors file or a checkpoint folder;
    DST defaults to SRC with the .safetensors suffix.

    \b
    Examples:
      glide convert base                      # next to the cached base.pt
      glide convert upsample.pt upsample.safetensors
    """
    from .checkpoints import OFFICIAL_CHECKPOINTS, convert_checkpoint
    from .checkpoints.specs import require_downloaded

    if src in OFFICIAL_CHECKPOINTS:
        require_downloaded([src], cache_dir)
    started = time.perf_counter()
    path = convert_checkpoint(src, dst, cache_dir=cache_dir, overwrite=force)
    _log(f"converted {src} in {time.perf_counter() - started:.1f}s")
    click.echo(str(path))


def _size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@cli.command(context_settings=CONTEXT_SETTINGS)
@_CACHE_DIR_OPTION
@_command_body
def models(cache_dir: str | None) -> None:
    """List the official checkpoints (downloaded or not, and where) and the model presets.

    \b
    Examples:
      glide models
      GLIDE_CACHE=/data/glide glide models
    """
    from .checkpoints import checkpoint_dir, official_status
    from .models import PRESETS

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
    click.echo("\nPresets (the architectures for glide train; text-to-image ones untrained: --model random:NAME):")
    width = max(map(len, PRESETS))
    for name, preset in PRESETS.items():
        click.echo(f"  {name:<{width}}  {preset.description}")


if __name__ == "__main__":
    main()
