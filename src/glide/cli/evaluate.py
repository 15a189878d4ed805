"""``glide eval samples`` and ``glide eval sweep``: caption accuracy, FID, precision / recall and
CLIP score of images, written as JSON, CSV, grids and plots (``glide.evaluation``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from .common import CONTEXT_SETTINGS, Number, command_body, log, warn
from .options import RECIPE_CHOICES

_JUDGE_OPTION = click.option("--judge", default="bundled:shapes-judge", show_default=True, metavar="SPEC",
                             help="The shapes judge (attribute classifier) checkpoint.")
_SEED_OPTION = click.option("--seed", type=Number(integer=True, low=0), default=0, show_default=True,
                            help="Seed of the reference renders' layouts, the bootstrap and the samples.")
_FID_OPTION = click.option("--fid/--no-fid", default=True, show_default=True,
                           help="Compute shapes-FID, precision and recall (needs a few images per set; "
                                "the error says how many).")
_PROGRESS_OPTION = click.option("--progress/--no-progress", default=True, show_default=True,
                                help="Show progress bars (rate and ETA).")
_CLIP_OPTION = click.option("--clip", metavar="SPEC", help="A noised CLIP checkpoint for the CLIP score (t=0).")


def _batch_size_option(default: int):
    return click.option("--batch-size", type=Number(integer=True, low=1), default=default, show_default=True,
                        help="Images sampled at once.")


def _shared_options(fn):
    """The options both commands take: judge, CLIP, FID on/off, seed."""
    for option in (_SEED_OPTION, _FID_OPTION, _CLIP_OPTION, _JUDGE_OPTION):
        fn = option(fn)
    return fn


class _Scales(click.ParamType):
    name = "scales"

    def convert(self, value: Any, param, ctx) -> list[float]:
        if isinstance(value, list):
            return value
        try:
            scales = [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            scales = []
        if not scales or any(not 0 <= s < float("inf") for s in scales):
            self.fail(f"expected comma-separated guidance scales >= 0 such as 1,2,3,5, got {value!r}", param, ctx)
        return scales


@click.group("eval", context_settings=CONTEXT_SETTINGS)
def evaluate() -> None:
    """Measure images against their captions (shapes domain): judge accuracy, FID, CLIP score.

    \b
    Examples:
      glide eval samples outputs/ --captions captions.txt -o eval/
      glide eval sweep --model run/ --scales 1,2,3,5 --captions heldout:1:200 -o sweep/
    """


@evaluate.command("samples", context_settings=CONTEXT_SETTINGS)
@click.argument("folder", type=click.Path(file_okay=False), metavar="DIR")
@click.option("--captions", "captions_file", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="One caption per line in sorted file-name order, or a .jsonl of {\"file\", \"caption\"}.")
@click.option("--reference", type=click.Path(file_okay=False), metavar="DIR",
              help="Real images for FID / precision / recall (default: renders of the captions' scenes).")
@click.option("--out", "-o", default="eval", show_default=True, type=click.Path(file_okay=False),
              help="Folder for results.json, results.csv, grid.png and accuracy.png.")
@_shared_options
@command_body
def samples(folder: str, captions_file: str, reference: str | None, out: str, judge: str, clip: str | None,
            fid: bool, seed: int) -> None:
    """Evaluate the images in DIR against their captions."""
    from ..evaluation.report import evaluate_images, load_image_folder, read_captions

    files, images = load_image_folder(folder)
    captions = read_captions(captions_file, files)
    real = load_image_folder(reference)[1] if reference else None
    judge_model, clip_model = _load_models(judge, clip)
    log(f"evaluating {len(images)} images from {folder}")
    result = evaluate_images(images, captions, judge_model, reference=real, clip=clip_model, files=files,
                             fid=fid, seed=seed)
    _write(Path(out), result.summary, result.rows, images)


@evaluate.command("sweep", context_settings=CONTEXT_SETTINGS)
@click.option("--model", default="bundled", show_default=True, metavar="SPEC",
              help="The base model: bundled (the bundled cascade's), a checkpoint, a run folder, bundled:NAME.")
@click.option("--upsampler", default="none", show_default=True, metavar="SPEC|none", help="Upsampler, or none.")
@click.option("--scales", default="1,2,3,5", show_default=True, type=_Scales(),
              help="Classifier-free guidance scales to compare (1 = unguided).")
@click.option("--captions", "caption_spec", default="heldout:1:200", show_default=True, metavar="SET",
              help="heldout:OBJECTS:COUNT[:SEED] (held-out scenes) or a file of captions, one per line.")
@click.option("--sampler", help="The base stage's sampler (default: the model's recommended one, else dpm++2m).")
@click.option("--steps", help="Base sampling steps or a respacing string (default: the model's recommended, else 20).")
@_batch_size_option(50)
@click.option("--out", "-o", default="sweep", show_default=True, type=click.Path(file_okay=False),
              help="Folder for results.json, results.csv, grid-scale-S.png and sweep.png.")
@_shared_options
@_PROGRESS_OPTION
@command_body
def sweep(model: str, upsampler: str, scales: list[float], caption_spec: str, sampler: str | None, steps: str | None,
          batch_size: int, out: str, judge: str, clip: str | None, fid: bool, seed: int, progress: bool) -> None:
    """Sample the caption set at each guidance scale with a model, and evaluate each setting."""
    from ..evaluation.plots import plot_sweep
    from ..evaluation.report import caption_set
    from ..evaluation.sweep import run_sweep
    from ..pipelines import DEFAULT_BASE, Text2ImagePipeline
    from ..pipelines.text2im import recommended_stage

    captions, scenes = caption_set(caption_spec, seed)
    pipeline = Text2ImagePipeline.from_pretrained(model, upsampler if upsampler.lower() != "none" else None)
    changes = {"sampler": sampler, "timesteps": int(steps) if steps and steps.isdigit() else steps}
    options = replace(recommended_stage(pipeline.base, DEFAULT_BASE), **{k: v for k, v in changes.items() if v})
    log(f"sampling: {options.sampler} {options.timesteps} steps at guidance scales {', '.join(map(str, scales))}")
    judge_model, clip_model = _load_models(judge, clip)
    out_dir = Path(out)
    rows = run_sweep(pipeline, captions, scenes, scales, options, judge_model, clip=clip_model, fid=fid, seed=seed,
                     batch_size=batch_size, out=out_dir, progress=progress)
    _plot(lambda: plot_sweep(rows, out_dir / "sweep.png"))
    for row in rows:
        click.echo(f"scale {row['guidance_scale']:g}: caption accuracy {row['acc_caption']:.3f}"
                   + (f", FID {row['fid']:.2f} (real renders against real renders: {row['fid_real']:.2f})"
                      if "fid" in row else ""))


def _load_models(judge: str, clip: str | None):
    from ..checkpoints import load_for_role
    from ..evaluation.judge import load_judge

    return load_judge(judge), (load_for_role(clip, "clip") if clip else None)


def _write(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]], images) -> None:
    from ..evaluation.plots import plot_accuracy
    from ..evaluation.report import save_grid, write_csv, write_json

    for path in (write_json(summary, out / "results.json"), write_csv(rows, out / "results.csv"),
                 save_grid(images, out / "grid.png")):
        click.echo(str(path))
    _plot(lambda: plot_accuracy(summary, out / "accuracy.png"))
    acc = summary["accuracy"]
    log(f"caption accuracy {acc['caption']:.3f} (95% CI {summary['caption_accuracy_ci95'][0]:.3f}-"
        f"{summary['caption_accuracy_ci95'][1]:.3f})" + (f", FID {summary['fid']:.2f}" if "fid" in summary else ""))


def _plot(make) -> None:
    """Write a plot, or say how to get matplotlib (the numbers are already written)."""
    try:
        click.echo(str(make()))
    except ImportError as e:
        warn(f"no plot written: {e}")


@evaluate.command("paper", context_settings=CONTEXT_SETTINGS)
@click.option("--out", "-o", default="paper-results", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the tables (JSON, CSV, tables.md), plots, grids and the sample cache.")
@click.option("--only", "experiments", default="guidance,samplers,inpainting,upsampler", show_default=True,
              metavar="LIST", help="Experiments to run (comma-separated).")
@click.option("--count", type=Number(integer=True, low=10), default=500, show_default=True,
              help="Held-out captions (images) per setting.")
@click.option("--clean-clip", metavar="SPEC",
              help="A CLIP trained on clean images only (configs/shapes-clip32-clean.yaml): adds its curve.")
@click.option("--sampler", default="ddpm", show_default=True, help="The base sampler of the experiments "
              "(DDPM: the gradient guidances' scales differ between samplers).")
@click.option("--steps", default="25", show_default=True, help="Base steps (the samplers experiment varies them).")
@_batch_size_option(50)
@_SEED_OPTION
@_PROGRESS_OPTION
@command_body
def paper(out: str, experiments: str, count: int, clean_clip: str | None, sampler: str, steps: str, batch_size: int,
          seed: int, progress: bool) -> None:
    """The GLIDE paper's comparisons in miniature on the bundled cascade (docs/results.md).

    Guidance (unguided, classifier-free, CLIP with the noised CLIP and with a clean one, noisy
    classifier) over scales; samplers against steps; inpainting; the upsampler. Sampled images are
    cached under OUT/samples, so an interrupted run resumes; two processes may split --only.
    """
    from ..evaluation.paper import EXPERIMENTS, PAPER_BASE, Models, markdown_tables, run_paper

    chosen = [e.strip() for e in experiments.split(",") if e.strip()]
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown or not chosen:
        raise click.BadParameter(f"unknown experiments {unknown}; choose from {', '.join(EXPERIMENTS)}",
                                 param_hint="--only")
    base = replace(PAPER_BASE, sampler=sampler, timesteps=int(steps) if steps.isdigit() else steps)
    if "guidance" in chosen and not clean_clip:
        warn("no --clean-clip: the guidance table has no clean-CLIP curve (scripts/paper-results.sh trains one)")
    results = run_paper(out, Models.bundled(clean_clip), experiments=chosen, count=count, seed=seed,
                        batch_size=batch_size, progress=progress, base=base)
    tables = Path(out) / "tables.md"
    tables.write_text(markdown_tables(out), encoding="utf-8")
    for name, result in results.items():
        log(f"{name}: {result['seconds']:.0f} s")
    click.echo(str(tables))


@evaluate.command("coco", context_settings=CONTEXT_SETTINGS)
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="The COCO captions file, e.g. annotations/captions_val2014.json.")
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="The folder of its images, e.g. val2014/.")
@click.option("--count", type=Number(integer=True, low=10), default=30_000, show_default=True,
              help="Captions (distinct images) drawn; the paper uses 30,000.")
@click.option("--scales", default="1.5,2,3", show_default=True, type=_Scales(),
              help="Classifier-free guidance scales to sample and score.")
@click.option("--model", default="openai", show_default=True, metavar="SPEC", help="The base model.")
@click.option("--upsampler", default="openai", show_default=True, metavar="SPEC|none",
              help="The upsampler (its output size is the evaluation size: 256 px for the official one).")
@click.option("--recipe", type=click.Choice(RECIPE_CHOICES), default="default", show_default=True,
              help="default: each model's recommended sampling, else DPM-Solver++ 20 + 5 steps; fast: "
                   "DPM-Solver++(2M) SDE trailing10 + 3 upsampler calls; notebook: the official notebook's "
                   "100 DDPM steps + fast27 upsampling.")
@click.option("--inception-weights", type=click.Path(dir_okay=False), metavar="FILE",
              help="torch-fidelity's Inception weights (default: $GLIDE_INCEPTION_WEIGHTS or torch's hub cache).")
@_batch_size_option(16)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N (torchrun: per rank).")
@click.option("--dtype", type=click.Choice(("auto", "fp32", "fp16", "bf16")), default="auto", show_default=True,
              help="Model precision; auto = fp16 on cuda, fp32 on cpu.")
@click.option("--out", "-o", default="coco-eval", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the references, the samples of each scale, features and results.")
@_SEED_OPTION
@_PROGRESS_OPTION
@command_body
def coco(annotations: str, images: str, count: int, scales: list[float], model: str, upsampler: str, recipe: str,
         inception_weights: str | None, batch_size: int, device: str, dtype: str, out: str, seed: int,
         progress: bool) -> None:
    """The paper's zero-shot MS-COCO FID: 30k captions, references centre-cropped and resized,
    Inception FID at the cascade's output size, over guidance scales (GLIDE: 12.24 at 256 px).

    Interrupted runs resume (references, samples and features are kept); under
    torchrun --nproc_per_node N -m glide eval coco ... the ranks share the sampling.
    """
    from ..devices import resolve_dtype
    from ..evaluation import metrics
    from ..evaluation.coco import PAPER_ZERO_SHOT_FID, folder_features, prepare_references, read_coco_captions
    from ..evaluation.report import write_csv, write_json
    from ..pipelines import DEFAULT_BASE, DEFAULT_UPSAMPLE, RECIPES, Text2ImagePipeline
    from ..pipelines.text2im import recommended_stage
    from ..training.distributed import setup
    from .caption_runs import image_file, sample_caption_file
    from .generate import image_generator
    from .prepare import stage_text

    out_dir = Path(out)
    pairs = read_coco_captions(annotations, count, seed)
    captions = [caption for _, caption in pairs]
    env = setup(device)
    try:
        pipeline = Text2ImagePipeline.from_pretrained(model, upsampler if upsampler.lower() != "none" else None,
                                                      device=env.device, dtype=resolve_dtype(dtype, env.device))
        size = (pipeline.upsampler or pipeline.base).config.image_size
        references = out_dir / f"reference-{size}"
        if env.is_main:
            log(f"{count} captions from {annotations}; reference images centre-cropped to {size} px in {references}")
            prepare_references([name for name, _ in pairs], images, references, size, progress)
        env.barrier()
        if recipe in RECIPES:
            base, up = RECIPES[recipe][0], RECIPES[recipe][1] if pipeline.upsampler is not None else None
        else:
            base = recommended_stage(pipeline.base, DEFAULT_BASE)
            up = recommended_stage(pipeline.upsampler, DEFAULT_UPSAMPLE) if pipeline.upsampler is not None else None
        network = metrics.inception_network(inception_weights) if env.is_main else None
        reference_paths = [references / image_file(j) for j in range(count)]
        rows = []
        for scale in scales:
            options = replace(base, guidance_scale=scale)
            folder = out_dir / f"samples-scale-{scale:g}"
            metadata = dict(command="eval coco", model=model, upsampler=upsampler, seed=seed, dtype=dtype,
                            base_stage=stage_text(options), upsample_stage=stage_text(up) if up else None)

            def call(prompts: list[str], numbers: list[int], options=options):
                return pipeline(prompts, base=options, upsample=up or False, progress=False,
                                generator=[image_generator(seed, j) for j in numbers])

            if env.is_main:
                log(f"guidance scale {scale:g}: sampling into {folder}")
            sample_caption_file(folder, captions, 1, metadata, batch_size, env, call, progress=progress, echo=False)
            if env.is_main:
                real = folder_features(reference_paths, network, "inception-v3", out_dir / "features" /
                                       f"reference-{size}.safetensors", progress=progress, desc="reference features")
                fake = folder_features([folder / image_file(j) for j in range(count)], network, "inception-v3",
                                       out_dir / "features" / f"scale-{scale:g}.safetensors", progress=progress,
                                       desc=f"scale {scale:g} features")
                fid, interval = metrics.fid_with_ci(real, fake, seed=seed)
                rows.append({"guidance_scale": scale, "fid": fid, "fid_ci95": interval, "images": count,
                             "size": size, "base_stage": metadata["base_stage"],
                             "upsample_stage": metadata["upsample_stage"]})
                click.echo(f"scale {scale:g}: FID {fid:.2f} (95% CI {interval[0]:.2f}-{interval[1]:.2f})")
        if env.is_main:
            write_json({"protocol": "zero-shot MS-COCO", "annotations": str(annotations), "count": count,
                        "seed": seed, "size": size, "model": model, "upsampler": upsampler, "rows": rows,
                        "paper": PAPER_ZERO_SHOT_FID}, out_dir / "results.json")
            write_csv(rows, out_dir / "results.csv")
            _plot(lambda: _plot_fid(rows, out_dir / "fid.png"))
            log("the paper: " + "; ".join(f"{k}: FID {v}" for k, v in PAPER_ZERO_SHOT_FID.items()))
    finally:
        env.close()


def _plot_fid(rows: list[dict[str, Any]], path: Path) -> Path:
    from ..evaluation.plots import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar([r["guidance_scale"] for r in rows], [r["fid"] for r in rows],
                yerr=[[r["fid"] - r["fid_ci95"][0] for r in rows], [r["fid_ci95"][1] - r["fid"] for r in rows]],
                fmt="o-", capsize=3)
    ax.set(xlabel="classifier-free guidance scale", ylabel="FID (Inception)", title="zero-shot COCO FID")
    return _save(fig, plt, path)
