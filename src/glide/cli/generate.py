"""``glide sample``, ``glide inpaint``, ``glide edit``: prompts (and images) to PNGs.

Every option, path, prompt and model spec is checked before a model loads (``options``,
``prepare``); images are sampled in chunks of ``--max-batch`` and written as each chunk finishes
(``outputs``). Image ``j`` of a run draws its noise from its own generator, derived from
(``--seed``, j), so a seed gives the same images whatever the chunking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import click

from .common import CONTEXT_SETTINGS, Number, command_body, log, warn
from .options import BUNDLED, OPENAI, RANDOM_CLIP, check_prompts, default_max_batch, load_image_param, sampling_options
from .outputs import ImageWriter
from .prepare import Run, prepare


def guidance_options(fn: Callable) -> Callable:
    """Gradient guidances, which stack with classifier-free guidance (--guidance-scale)."""
    options = [
        click.option("--clip-scale", type=Number(low=0), metavar="SCALE",
                     help="Noised-CLIP gradient guidance towards the prompt, >= 0 (0 = off; default off). "
                          "Stacks with --guidance-scale; the CLIP model is --clip."),
        click.option("--clip", metavar=f"{BUNDLED}|{OPENAI}|PATH|{RANDOM_CLIP}",
                     help=f"Noised CLIP for --clip-scale and --rerank: '{BUNDLED}' (the bundled cascade's), "
                          f"'{OPENAI}' (clip-image-enc + clip-text-enc), a checkpoint path, or '{RANDOM_CLIP}' "
                          f"(tiny, untrained). Default when needed: {BUNDLED} for a bundled --model, else {OPENAI}."),
        click.option("--classifier", metavar=f"{BUNDLED}|PATH",
                     help=f"A noisy-image classifier to guide the base stage towards --class-label: "
                          f"'{BUNDLED}' (the bundled cascade's, over the shape-colour labels) or a checkpoint "
                          f"(glide train --stage classifier)."),
        click.option("--class-label", type=Number(integer=True, low=0), metavar="N",
                     help="The class --classifier guides towards (0 .. its number of classes - 1)."),
        click.option("--classifier-scale", type=Number(low=0), default=1.0, show_default=True, metavar="SCALE",
                     help="Scale of the classifier gradient, >= 0 (0 = off)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _check_guidance(g: dict[str, Any], model: str, rerank: int | None = None) -> str | None:
    """The CLIP spec to load (or None): ``--clip``, else the one matching ``--model``; refuses a
    classifier without a label and the reverse."""
    if (g["classifier"] is None) != (g["class_label"] is None):
        missing = "--class-label" if g["class_label"] is None else "--classifier"
        given = "--classifier" if g["class_label"] is None else "--class-label"
        raise click.UsageError(f"{given} needs {missing}: pass both (e.g. --classifier run/ --class-label 3)")
    needs_clip = g["clip_scale"] is not None or rerank is not None
    if not needs_clip and g["clip"] is not None:
        warn("--clip is only used with --clip-scale or --rerank; ignoring it")
    bundled_model = model == BUNDLED or model.startswith(BUNDLED + ":")
    return (g["clip"] or (BUNDLED if bundled_model else OPENAI)) if needs_clip else None


def _cond_fns(run: Run, g: dict[str, Any]) -> tuple:
    from ..guidance import ClassifierGuidance, ClipGuidance

    cond_fns = []
    if g["clip_scale"] is not None:
        cond_fns.append(ClipGuidance(run.clip, g["clip_scale"]))
        run.metadata["clip_scale"] = g["clip_scale"]
    if run.classifier is not None:
        cond_fns.append(ClassifierGuidance(run.classifier, g["class_label"], g["classifier_scale"]))
        run.metadata.update(classifier=g["classifier"], class_label=g["class_label"],
                            classifier_scale=g["classifier_scale"])
    return tuple(cond_fns)


def _split(options: dict[str, Any]) -> dict[str, Any]:
    """Pop the guidance options out of a command's keyword arguments."""
    return {k: options.pop(k) for k in ("clip_scale", "clip", "classifier", "class_label", "classifier_scale")}


def image_generator(seed: int, number: int):
    """The generator of image ``number`` of a run: mixed from (seed, number), so neighbouring
    seeds share no image and an image does not depend on the chunk it is sampled in."""
    import numpy as np
    import torch

    state = np.random.SeedSequence([seed, number]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _chunks(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


def _generate(run: Run, options: dict[str, Any], prompts: list[str], call: Callable, rerank: int | None = None) -> None:
    """Sample ``--num-images`` images per prompt in chunks, writing each chunk as it finishes.

    ``call(chunk_prompts, generators, **kw)`` runs the pipeline: without ``rerank`` one image per
    entry of ``chunk_prompts``; with it, ``n`` images per prompt from ``rerank`` candidates each.
    """
    n = options["num_images"]
    max_batch = options["max_batch"] or default_max_batch(run.device)
    writer = ImageWriter(options["output"], run.seed, run.metadata, len(prompts) * n,
                         columns=n if len(set(prompts)) > 1 else None)
    if rerank is None:  # unit: one image (number j = prompt p's k-th image, j = p * n + k)
        chunks = [(list(numbers), list(numbers)) for numbers in _chunks(len(prompts) * n, max_batch)]
    else:  # unit: one prompt and its `rerank` candidates, which are compared with each other
        chunks = [([p * rerank + c for p in group for c in range(rerank)], [p * n + k for p in group for k in range(n)])
                  for group in _chunks(len(prompts), max(1, max_batch // rerank))]
    if len(chunks) > 1:
        log(f"{len(prompts) * n} images in {len(chunks)} chunks of at most {max_batch} (--max-batch)")
    for draws, numbers in chunks:
        generators = [image_generator(run.seed, j) for j in draws]
        if rerank is None:
            out = call([prompts[j // n] for j in numbers], generators)
        else:
            out = call([prompts[j // n] for j in numbers[::n]], generators)
        writer.write(out.images, out.prompts, [j % n for j in numbers], numbers)
    grid = writer.finish()
    note = f" -- RANDOM WEIGHTS ({', '.join(run.random)}): noise, for testing only" if run.random else ""
    written = f"{len(writer.paths)} image(s)" + (f" and {grid.name}" if grid else "")
    log(f"wrote {written} to {options['output']} in {time.perf_counter() - run.started:.1f}s{note}",
        fg="yellow" if run.random else "green")


def _stage_kwargs(run: Run, options: dict[str, Any]) -> dict[str, Any]:
    return dict(base=run.base, upsample=run.upsample, upsample_temp=options["upsample_temp"],
                progress=options["progress"])


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompts", nargs=-1, metavar="PROMPT...", callback=check_prompts)
@click.option("--captions", "captions_file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Instead of PROMPTs: every caption of FILE (one per line), written as NNNNNN.png with "
                   "captions.jsonl and manifest.json for 'glide eval samples'. Resumes an interrupted run "
                   "(finished images are kept); under torchrun the ranks share the work. --seed defaults to 0.")
@sampling_options
@guidance_options
@click.option("--rerank", type=Number(integer=True, low=1), metavar="N",
              help="Draw N base samples per prompt and keep the --num-images best by noised-CLIP score.")
@command_body
def sample(prompts: tuple[str, ...], captions_file: str | None, rerank: int | None, **options) -> None:
    """Generate images from text: a base model, then its upsampler.

    Quote each prompt; several prompts make one batch. Writes <prompt>-<seed>-<k>.png per image
    and grid-<seed>.png into --output, and prints their paths. --model defaults to the bundled
    shapes cascade (offline, 32 -> 64 px: it knows 1-2 shapes, colours, sizes and where they are);
    --model openai is the official 64 -> 256 px pair (download it first).

    \b
    Examples:
      glide sample "a small red circle above a large blue square"
      glide sample "a large green star" -n 8 --seed 0 --guidance-scale 4
      glide sample "an oil painting of a corgi" --model openai
      glide sample "a fall landscape" "a surrealist dream-like oil painting" --model openai -n 4
      glide sample "a corgi" --model openai --recipe notebook --clip-scale 1 -o corgis
      glide sample "a red circle above a blue square" --model random:tiny-base --upsampler random:tiny-upsample
      glide sample --captions captions.txt -o samples/      # then: glide eval samples samples/ ...
      torchrun --nproc_per_node 4 -m glide sample --captions captions.txt -o samples/
    """
    from ..pipelines import Text2ImagePipeline

    if captions_file is not None:
        return _sample_captions(captions_file, prompts, rerank, options)
    if not prompts:
        raise click.UsageError('give a prompt, e.g. glide sample "a small red circle above a large blue square", '
                               'or a file of captions with --captions FILE')
    guidance = _split(options)
    if rerank is not None and rerank < options["num_images"]:
        raise click.UsageError(f"--rerank {rerank} must be >= --num-images {options['num_images']}")
    clip = _check_guidance(guidance, options["model"], rerank)
    run = prepare("sample", list(prompts), options, clip=clip, classifier=guidance["classifier"],
                  class_label=guidance["class_label"])
    cond_fns = _cond_fns(run, guidance)
    run.metadata.update(rerank=rerank)
    pipe = Text2ImagePipeline(run.base_model, run.upsampler, run.clip)

    def call(chunk: list[str], generators: list) -> Any:
        per_prompt = 1 if rerank is None else options["num_images"]
        return pipe(chunk, num_images_per_prompt=per_prompt, cond_fns=cond_fns, rerank=rerank,
                    generator=generators, **_stage_kwargs(run, options))

    _generate(run, options, list(prompts), call, rerank)


def _sample_captions(captions_file: str, prompts: tuple[str, ...], rerank: int | None, options: dict[str, Any]) -> None:
    """``glide sample --captions FILE``: see ``glide.cli.caption_runs``."""
    from ..pipelines import Text2ImagePipeline
    from ..training.distributed import setup
    from .caption_runs import read_caption_file, sample_caption_file

    if prompts:
        raise click.UsageError("give PROMPTs or --captions FILE, not both")
    if rerank is not None:
        raise click.UsageError("--rerank is not available with --captions")
    captions = list(check_prompts(None, None, tuple(read_caption_file(captions_file))))
    env = setup(options["device"])
    try:
        if env.enabled:
            options["device"] = str(env.device)
        options["seed"] = 0 if options["seed"] is None else options["seed"]  # every rank the same images
        guidance = _split(options)
        run = prepare("sample", captions, options, clip=_check_guidance(guidance, options["model"]),
                      classifier=guidance["classifier"], class_label=guidance["class_label"])
        cond_fns = _cond_fns(run, guidance)
        pipe = Text2ImagePipeline(run.base_model, run.upsampler, run.clip)
        metadata = {**run.metadata, "dtype": options["dtype"], "upsample_temp": options["upsample_temp"]}

        def call(chunk: list[str], numbers: list[int]) -> Any:
            return pipe(chunk, cond_fns=cond_fns, generator=[image_generator(run.seed, j) for j in numbers],
                        **{**_stage_kwargs(run, options), "progress": False})  # one bar over the images

        max_batch = options["max_batch"] or default_max_batch(run.device)
        merged = sample_caption_file(options["output"], captions, options["num_images"], metadata, max_batch, env,
                                     call, progress=options["progress"])
        if env.is_main:
            log(f"{len(captions) * options['num_images']} images and {merged.name} in {options['output']} "
                f"({time.perf_counter() - run.started:.1f}s)", fg="green")
    finally:
        env.close()


def _check_square(image, name: str) -> None:
    w, h = image.size
    if w != h:
        warn(f"{name} is {w}x{h}; it is resized and centre-cropped to a square")


_IMAGE = click.Path(exists=True, dir_okay=False)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompt", callback=check_prompts)
@click.option("--image", "-i", required=True, type=_IMAGE, callback=load_image_param,
              help="The image to edit (any size; centre-cropped to a square).")
@click.option("--mask", required=True, type=_IMAGE, callback=load_image_param,
              help="Mask image: white = repaint, black = keep; same aspect ratio as --image.")
@sampling_options
@guidance_options
@command_body
def inpaint(prompt: str, image, mask, **options) -> None:
    """Repaint the white region of --mask in --image from a text prompt.

    --model defaults to the bundled shapes inpainting models; --model openai means the official
    base-inpaint + upsample-inpaint pair.

    \b
    Examples:
      glide inpaint "a large blue square" --image scene.png --mask mask.png -n 4
      glide download base-inpaint upsample-inpaint
      glide inpaint "a corgi wearing a bow tie" --image photo.png --mask mask.png --model openai
      glide inpaint "a blue square" -i in.png --mask m.png --model random:tiny-base-inpaint
    """
    from ..pipelines import InpaintPipeline

    (iw, ih), (mw, mh) = image.size, mask.size
    if abs(iw / ih - mw / mh) > 0.01:
        raise click.BadParameter(f"the mask is {mw}x{mh} but the image is {iw}x{ih}: they must have the same "
                                 f"aspect ratio (ideally the same size)", param_hint="--mask")
    _check_square(image, "the image")
    guidance = _split(options)
    run = prepare("inpaint", [prompt], options, clip=_check_guidance(guidance, options["model"]),
                  classifier=guidance["classifier"], class_label=guidance["class_label"])
    cond_fns = _cond_fns(run, guidance)
    pipe = InpaintPipeline(run.base_model, run.upsampler)

    def call(chunk: list[str], generators: list) -> Any:
        return pipe(prompt, image, mask, num_images_per_prompt=len(chunk), cond_fns=cond_fns, generator=generators,
                    **_stage_kwargs(run, options))

    _generate(run, options, [prompt], call)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("prompt", callback=check_prompts)
@click.option("--image", "-i", required=True, type=_IMAGE, callback=load_image_param,
              help="The starting image (any size; centre-cropped to a square).")
@click.option("--strength", type=Number(low=0, high=1, low_open=True), default=0.6, show_default=True,
              help="How far to noise the image before denoising it with the prompt (0 < s <= 1; "
                   "1 ignores the image).")
@sampling_options
@guidance_options
@command_body
def edit(prompt: str, image, strength: float, **options) -> None:
    """Edit an image with a prompt (SDEdit): noise it part-way, then denoise it with the text.

    --model defaults to the bundled shapes cascade; --model openai means the official pair.

    \b
    Examples:
      glide edit "a large green circle" --image scene.png --strength 0.6
      glide edit "a watercolor painting of a lighthouse" --image photo.jpg --model openai
      glide edit "a red square" -i in.png --model random:tiny-base --seed 0
    """
    from ..pipelines import ImageToImagePipeline

    _check_square(image, "the image")
    guidance = _split(options)
    run = prepare("edit", [prompt], options, clip=_check_guidance(guidance, options["model"]),
                  classifier=guidance["classifier"], class_label=guidance["class_label"])
    cond_fns = _cond_fns(run, guidance)
    run.metadata.update(strength=strength)
    pipe = ImageToImagePipeline(run.base_model, run.upsampler, run.clip)

    def call(chunk: list[str], generators: list) -> Any:
        return pipe(prompt, image, strength=strength, num_images_per_prompt=len(chunk), cond_fns=cond_fns,
                    generator=generators, **_stage_kwargs(run, options))

    _generate(run, options, [prompt], call)
