"""The GLIDE paper's comparative claims, measured in miniature on the bundled shapes cascade.

``run_paper(out, experiments=...)`` (``glide eval paper``) runs any of:

* ``guidance``: unguided vs classifier-free guidance vs CLIP guidance (the bundled noised CLIP, and
  a CLIP trained on clean images only when one is given) vs noisy-classifier guidance, each over a
  sweep of scales, on held-out single-object captions (so the classifier's shape-colour label is
  the caption's): caption accuracy and shapes-FID with 95% bootstrap intervals, precision and
  recall; the best scale of each kind; the analogue of the paper's Fig. 6.
* ``samplers``: DDPM, DDIM, PLMS and DPM-Solver++(2M) against the number of steps, with 250-step
  DDPM as the reference.
* ``inpainting``: held-out two-object scenes with one object boxed out and the full caption: the
  share of fills the judge accepts and the change outside the box, for the inpainting model (with
  and without known-region pasting) and the plain base with pasting.
* ``upsampler``: real 64 px renders reduced to 32 px and brought back by the upsampler or bicubic:
  PSNR and caption accuracy.

Every setting's images are cached in ``OUT/samples/KEY.safetensors`` (written atomically, with the
seconds they took), so an interrupted run resumes where it stopped and a second process can take
other experiments; tables (JSON, CSV, Markdown), grids and plots are rewritten from the cache.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from ..data.shapes import SIZES, label_for, parse_caption, render_shapes
from ..guidance import ClipGuidance, classifier_cond_fn
from ..images import image_grid, image_to_tensor, tensor_to_image
from ..pipelines.edit import paste_known
from ..pipelines.text2im import DEFAULT_UPSAMPLE, StageOptions, recommended_stage, run_stage, strength_steps
from .judge import judge_images, score_captions
from .metrics import bootstrap_ci
from .report import caption_set, evaluate_images, flat_summary, reference_renders, save_grid, write_csv, write_json
from .sweep import sample_batched

EXPERIMENTS = ("guidance", "samplers", "inpainting", "upsampler")
# The experiments' base sampling: DDPM (as the official CLIP guidance; the gradient guidances'
# scales are not comparable across samplers), 25 steps to fit a CPU budget; the samplers
# experiment shows how far that is from 250 steps.
PAPER_BASE = StageOptions(sampler="ddpm", timesteps=25, guidance_scale=3.0)
CFG_SCALES = (2.0, 3.0, 5.0)
CLIP_SCALES = (1.0, 3.0, 10.0, 30.0)
CLASSIFIER_SCALES = (0.3, 1.0, 3.0)
SAMPLER_STEPS = {"ddpm": (5, 10, 25, 50), "ddim": (10, 25), "plms": (10, 25), "dpm++2m": (5, 10, 20)}
REFERENCE_STEPS = 250  # DDPM with this many steps: the samplers' reference quality
UNGUIDED = "unguided"


@dataclass(frozen=True)
class Setting:
    """One point of a curve: ``family`` (the curve), ``x`` (its scale or step count)."""

    family: str
    x: float
    options: StageOptions
    guidance: str | None = None  # a key of the gradient guidances (clip-noised, clip-clean, classifier)

    @property
    def key(self) -> str:
        """What was sampled (not the curve), so that curves sharing a setting share its images."""
        o = self.options
        guided = f"-{self.guidance}{self.x:g}" if self.guidance else ""
        extras = "".join(f"-{k}{v}" for k, v in sorted(o.sampler_options.items()))
        return f"{o.sampler}-{o.timesteps}-cfg{o.guidance_scale:g}{extras}{guided}"


class CaptionClassifierGuidance:
    """Noisy-classifier guidance towards each single-object caption's shape-colour class."""

    def __init__(self, classifier: nn.Module, scale: float):
        self.classifier, self.scale = classifier, scale

    def bind(self, prompts: Sequence[str]):
        labels = []
        for prompt in prompts:
            objects = parse_caption(prompt)["objects"]
            if len(objects) != 1:
                raise ValueError(f"classifier guidance needs single-object captions, got {prompt!r}")
            labels.append(label_for(objects[0]["shape"], objects[0]["colour"]))
        return classifier_cond_fn(self.classifier, torch.tensor(labels), self.scale)


@dataclass
class Models:
    """The models the experiments use; ``clean_clip`` is optional (its curve is skipped without it)."""

    base: nn.Module
    upsampler: nn.Module
    base_inpaint: nn.Module
    judge: nn.Module
    clip: nn.Module
    classifier: nn.Module
    clean_clip: nn.Module | None = None

    @classmethod
    def bundled(cls, clean_clip: str | Path | None = None) -> Models:
        from ..checkpoints import load_for_role
        from .judge import load_judge

        return cls(base=load_for_role("bundled:shapes-base", "base"),
                   upsampler=load_for_role("bundled:shapes-upsample", "upsampler"),
                   base_inpaint=load_for_role("bundled:shapes-base-inpaint", "base", inpaint=True),
                   judge=load_judge(), clip=load_for_role("bundled:shapes-clip", "clip"),
                   classifier=load_for_role("bundled:shapes-classifier", "classifier"),
                   clean_clip=load_for_role(str(clean_clip), "clip") if clean_clip else None)


# --------------------------------------------------------------------------------------------
# The cache of sampled images
# --------------------------------------------------------------------------------------------
class SampleCache:
    """Images per setting key as uint8 safetensors (what a PNG would hold), with the seconds taken."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def get(self, key: str, make: Callable[[], torch.Tensor], count: int | None = None) -> tuple[torch.Tensor, float]:
        """(images in [-1, 1], seconds it took to make them), made and stored on the first call;
        remade when the stored set does not hold ``count`` images (a run with another --count)."""
        path = self.path(key)
        if path.is_file():
            stored = load_file(path)
            if count is None or len(stored["images"]) == count:
                return stored["images"].float() / 127.5 - 1, float(stored["seconds"])
        start = time.perf_counter()
        images = make()
        seconds = time.perf_counter() - start
        pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).contiguous()
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".partial-{os.getpid()}")
        save_file({"images": pixels, "seconds": torch.tensor(seconds, dtype=torch.float64)}, partial)
        os.replace(partial, path)  # atomic: a killed run never leaves a half-written setting
        return pixels.float() / 127.5 - 1, seconds


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------
def sample_setting(models: Models, setting: Setting, captions: Sequence[str], *, seed: int, batch_size: int,
                   progress: bool) -> torch.Tensor:
    """The base stage's images for ``captions`` under ``setting`` (32 px, no upsampling)."""
    guidance = _guidance(models, setting)

    def run(rows: slice, generators: list[torch.Generator]) -> torch.Tensor:
        prompts = list(captions[rows])
        cond_fn = guidance.bind(prompts) if guidance is not None else None
        return run_stage(models.base, prompts, setting.options, generators, cond_fn=cond_fn, progress=False)

    return sample_batched(len(captions), batch_size, seed, run, setting.key, progress)


def _guidance(models: Models, setting: Setting):
    if setting.guidance is None:
        return None
    if setting.guidance == "classifier":
        return CaptionClassifierGuidance(models.classifier, setting.x)
    clip = models.clean_clip if setting.guidance == "clip-clean" else models.clip
    return ClipGuidance(clip, setting.x)


def guidance_settings(base: StageOptions, clean_clip: bool, cfg_scales: Sequence[float] = CFG_SCALES,
                      clip_scales: Sequence[float] = CLIP_SCALES,
                      classifier_scales: Sequence[float] = CLASSIFIER_SCALES) -> list[Setting]:
    """Unguided, then each guidance over its scales; the gradient guidances run without CFG."""
    plain = dataclasses.replace(base, guidance_scale=1.0)
    settings = [Setting(UNGUIDED, 0, plain)]
    settings += [Setting("cfg", s, dataclasses.replace(base, guidance_scale=s)) for s in cfg_scales]
    clips = ("clip-noised", "clip-clean") if clean_clip else ("clip-noised",)
    settings += [Setting(name, s, plain, name) for name in clips for s in clip_scales]
    settings += [Setting("classifier", s, plain, "classifier") for s in classifier_scales]
    return settings


def sampler_settings(base: StageOptions, steps: dict[str, Sequence[int]] | None = None) -> list[Setting]:
    """Each sampler over its step counts at the default guidance, and the 250-step DDPM reference."""
    steps = steps or SAMPLER_STEPS
    def options(sampler: str, n: int) -> StageOptions:
        return dataclasses.replace(base, sampler=sampler, timesteps=n, sampler_options={})

    settings = [Setting(name, n, options(name, n)) for name, counts in steps.items() for n in counts]
    return settings + [Setting("reference-ddpm", REFERENCE_STEPS, options("ddpm", REFERENCE_STEPS))]


# --------------------------------------------------------------------------------------------
# The experiments
# --------------------------------------------------------------------------------------------
@dataclass
class Context:
    models: Models
    cache: SampleCache
    out: Path
    count: int
    seed: int
    batch_size: int
    progress: bool
    base: StageOptions
    _heldout: dict = dataclasses.field(default_factory=dict)

    def heldout(self, objects: int) -> tuple[list[str], list, torch.Tensor]:
        """(captions, scenes, their real renders at the base's size) of the held-out set, made once."""
        if objects not in self._heldout:
            captions, scenes = caption_set(f"heldout:{objects}:{self.count}", self.seed)
            renders = reference_renders(captions, self.models.base.config.image_size, self.seed, scenes)
            self._heldout[objects] = captions, scenes, renders
        return self._heldout[objects]


def _evaluate_settings(ctx: Context, settings: Sequence[Setting], objects: int, desc: str) -> list[dict[str, Any]]:
    captions, _, reference = ctx.heldout(objects)
    rows = []
    for setting in tqdm(settings, desc=desc, disable=not ctx.progress):
        images, seconds = ctx.cache.get(setting.key, lambda s=setting: sample_setting(
            ctx.models, s, captions, seed=ctx.seed, batch_size=ctx.batch_size, progress=ctx.progress), len(captions))
        result = evaluate_images(images, captions, ctx.models.judge, reference=reference, seed=ctx.seed)
        rows.append({"key": setting.key, "family": setting.family, "x": setting.x,
                     "sampler": setting.options.sampler, "steps": setting.options.timesteps,
                     "guidance_scale": setting.options.guidance_scale, **flat_summary(result.summary),
                     "seconds_per_image": seconds / len(images)})
        save_grid(images, ctx.out / "grids" / f"{setting.key}.png")
    return rows


def real_floor(ctx: Context, objects: int) -> dict[str, Any]:
    """The FID (and the rest) of a second, independent set of real renders: what a perfect model gets."""
    captions, _, reference = ctx.heldout(objects)
    second = reference_renders(captions, ctx.models.base.config.image_size, ctx.seed + 1)
    return flat_summary(evaluate_images(second, captions, ctx.models.judge, reference=reference,
                                        seed=ctx.seed).summary)


def best_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The best setting of each family: highest caption accuracy, then lowest FID."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        current = best.get(row["family"])
        if current is None or (row["acc_caption"], -row["fid"]) > (current["acc_caption"], -current["fid"]):
            best[row["family"]] = row
    return list(best.values())


CLIP_CHECK_TIMESTEPS = (0, 250, 500, 750, 900)


@torch.no_grad()
def clip_retrieval(clip: nn.Module, diffusion, images: torch.Tensor, captions: Sequence[str],
                   timesteps: Sequence[int] = CLIP_CHECK_TIMESTEPS, seed: int = 0) -> dict[str, float]:
    """Per noise level t: the share of ``images`` (noised to t by ``diffusion``) whose own caption
    the CLIP ranks first among the distinct ``captions``: what a guiding CLIP sees at that t."""
    distinct = sorted(set(captions))
    z_text = clip.embed_text(*clip.tokenize(distinct))
    truth = torch.tensor([distinct.index(c) for c in captions])
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for t in timesteps:
        steps = torch.full((len(images),), t, dtype=torch.long)
        x_t = diffusion.q_sample(images, steps, torch.randn(images.shape, generator=generator))
        picks = (clip.embed_image(x_t, steps) @ z_text.T).argmax(dim=1)
        out[str(t)] = float((picks == truth).float().mean())
    return out


def run_guidance(ctx: Context, settings: Sequence[Setting]) -> dict[str, Any]:
    from ..diffusion import GaussianDiffusion

    rows = _evaluate_settings(ctx, settings, 1, "guidance settings")
    floor = real_floor(ctx, 1)
    best = best_rows(rows)
    _write_rows(ctx.out, "guidance", rows)
    write_json(best, ctx.out / "guidance-best.json")
    _try_plot(lambda: plot_curves(rows, ctx.out / "guidance.png", floor))
    config = ctx.models.base.config
    diffusion = GaussianDiffusion.from_schedule(config.noise_schedule, config.diffusion_steps)
    captions = ctx.heldout(1)[0]
    renders = reference_renders(captions, ctx.models.clip.config.image_size, ctx.seed + 2)  # fresh layouts
    clips = {"clip-noised": ctx.models.clip, "clip-clean": ctx.models.clean_clip}
    retrieval = [{"clip": name, **clip_retrieval(clip, diffusion, renders, captions, seed=ctx.seed)}
                 for name, clip in clips.items() if clip is not None]
    _write_rows(ctx.out, "clip-retrieval", retrieval)
    return {"rows": rows, "best": best, "real": floor, "clip_retrieval": retrieval}


def run_samplers(ctx: Context, settings: Sequence[Setting]) -> dict[str, Any]:
    rows = _evaluate_settings(ctx, settings, 1, "sampler settings")
    _write_rows(ctx.out, "samplers", rows)
    _try_plot(lambda: plot_steps(rows, ctx.out / "samplers.png"))
    return {"rows": rows}


def object_box(obj: dict[str, Any], size: int, margin: float = 0.03) -> torch.Tensor:
    """``[1, size, size]``: 1 inside the square that holds ``obj`` (with ``margin``), else 0."""
    half = 1.15 * SIZES[obj["size"]] + margin
    coords = (torch.arange(size) + 0.5) / size
    inside_x = (coords - obj["x"]).abs() <= half
    inside_y = (coords - obj["y"]).abs() <= half
    return (inside_y[:, None] & inside_x[None, :]).float()[None]


def inpainting_inputs(scenes: Sequence[list[dict[str, Any]]], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sources, keep masks): each scene rendered without its first object, whose box is to be
    filled; pixels of the other objects inside the box stay known."""
    sources, keeps = [], []
    for scene in scenes:
        others = scene[1:]
        source = image_to_tensor(render_shapes(others, size))
        drawn = (source < 0.99).any(0, keepdim=True).float()  # the other objects' pixels
        keeps.append(torch.maximum(1 - object_box(scene[0], size), drawn))
        sources.append(source)
    return torch.stack(sources), torch.stack(keeps)


INPAINT_METHODS = {  # name -> (model attribute, gives the model the image and mask, pastes the known region)
    "inpaint model + pasting": ("base_inpaint", True, True),
    "inpaint model, no pasting": ("base_inpaint", True, False),
    "base + pasting": ("base", False, True),
}


def run_inpainting(ctx: Context) -> dict[str, Any]:
    captions, scenes, targets = ctx.heldout(2)
    sources, keeps = inpainting_inputs(scenes, ctx.models.base.config.image_size)
    rows, grids = [], [sources[:8], (keeps[:8] * 2 - 1).expand(-1, 3, -1, -1), targets[:8]]
    for name, (attribute, conditioned, paste) in INPAINT_METHODS.items():
        model = getattr(ctx.models, attribute)
        options = ctx.base

        def run(rows_: slice, generators, model=model, options=options, conditioned=conditioned, paste=paste):
            source, keep = sources[rows_], keeps[rows_]
            extra = dict(inpaint_image=source, inpaint_mask=keep) if conditioned else {}
            return run_stage(model, list(captions[rows_]), options, generators,
                             denoised_fn=paste_known(source, keep) if paste else None, progress=False, **extra)

        key = f"inpaint-{options.sampler}-{options.timesteps}-cfg{options.guidance_scale:g}-" + "-".join(
            name.replace("+", " ").replace(",", " ").split())
        images, seconds = ctx.cache.get(key, lambda run=run, key=key: sample_batched(
            len(captions), ctx.batch_size, ctx.seed, run, key, ctx.progress), len(captions))
        scenes_found, _ = judge_images(ctx.models.judge, images)
        matched = [s["caption"] for s in score_captions(captions, scenes_found)]
        filled = [any(_same_object(o, scene[0]) for o in found) for found, scene in zip(scenes_found, scenes,
                                                                                       strict=True)]
        change = ((images - sources).abs() * keeps).flatten(1).sum(1) / keeps.flatten(1).sum(1) / 2  # [0, 1] units
        rows.append({"method": name, "images": len(images), "caption_match": sum(matched) / len(matched),
                     "caption_match_ci95": bootstrap_ci(matched, seed=ctx.seed),
                     "object_filled": sum(filled) / len(filled),
                     "object_filled_ci95": bootstrap_ci(filled, seed=ctx.seed),
                     "unmasked_change_mean": float(change.mean()), "unmasked_change_max": float(change.max()),
                     "seconds_per_image": seconds / len(images)})
        grids.append(images[:8])
    _write_rows(ctx.out, "inpainting", rows)
    _save_rows_grid(grids, ctx.out / "grids" / "inpainting.png")
    return {"rows": rows}


def _same_object(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[k] == b[k] for k in ("shape", "colour", "size"))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1] (peak 1 on the [0, 1] scale)."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def run_upsampler(ctx: Context, variants: Sequence[StageOptions] = ()) -> dict[str, Any]:
    """The upsampler with its recommended sampling (row ``upsampler``) and each of ``variants``
    (rows ``upsampler SAMPLER TIMESTEPS sSTRENGTH``) against bicubic and the truth."""
    from ..data import make_low_res

    upsampler = ctx.models.upsampler
    high, low = upsampler.config.image_size, ctx.models.base.config.image_size
    captions, scenes, _ = ctx.heldout(1)
    truth = reference_renders(captions, high, ctx.seed, scenes)
    low_res = make_low_res(truth, low)
    bicubic = F.interpolate(low_res, (high, high), mode="bicubic", align_corners=False).clamp(-1, 1)
    methods = [("upsampler", recommended_stage(upsampler, DEFAULT_UPSAMPLE))]
    methods += [(f"upsampler {o.sampler} {o.timesteps} s{o.strength:g}", o) for o in variants]
    outputs = []
    for name, options in methods:
        def run(rows: slice, generators, options=options):
            return run_stage(upsampler, list(captions[rows]), options, generators, noise_scale=0.997,
                             low_res=low_res[rows], progress=False)

        key = "-".join(name.split())
        images, seconds = ctx.cache.get(key, lambda run=run, key=key: sample_batched(
            len(captions), ctx.batch_size, ctx.seed, run, key, ctx.progress), len(captions))
        outputs.append((name, images, seconds, options))
    rows = []
    for name, images, secs, options in (*outputs, ("bicubic", bicubic, 0.0, None), ("truth", truth, 0.0, None)):
        values = psnr(images, truth) if name != "truth" else None
        scenes_found, _ = judge_images(ctx.models.judge, images)
        matched = [s["caption"] for s in score_captions(captions, scenes_found)]
        steps = None if options is None else truncated_steps(options)
        rows.append({"method": name, "images": len(images), "model_calls": steps,
                     "psnr_db": float(values.mean()) if values is not None else None,
                     "psnr_db_ci95": bootstrap_ci(values, seed=ctx.seed) if values is not None else None,
                     "caption_accuracy": sum(matched) / len(matched), "seconds_per_image": secs / len(images)})
    _write_rows(ctx.out, "upsampler", rows)
    up_low = F.interpolate(low_res, (high, high), mode="nearest")
    _save_rows_grid([up_low[:8], bicubic[:8], outputs[0][1][:8], truth[:8]], ctx.out / "grids" / "upsampler.png")
    return {"rows": rows}


def truncated_steps(options: StageOptions, diffusion_steps: int = 1000) -> int:
    """The model calls of an upsampler stage run at ``options.strength``."""
    from ..diffusion import space_timesteps

    return strength_steps(len(space_timesteps(diffusion_steps, options.respacing)), options.strength)


def run_paper(out: str | Path, models: Models, *, experiments: Sequence[str] = EXPERIMENTS, count: int = 500,
              seed: int = 0, batch_size: int = 50, progress: bool = True, base: StageOptions = PAPER_BASE,
              guidance: Sequence[Setting] | None = None, samplers: Sequence[Setting] | None = None,
              upsamplers: Sequence[StageOptions] = ()) -> dict[str, Any]:
    """Run ``experiments`` (see the module doc) and write their tables, grids and plots under ``out``."""
    unknown = set(experiments) - set(EXPERIMENTS)
    if unknown:
        raise ValueError(f"unknown experiments {sorted(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    out = Path(out)
    ctx = Context(models, SampleCache(out / "samples"), out, count, seed, batch_size, progress, base)
    results: dict[str, Any] = {}
    for name in experiments:
        start = time.perf_counter()
        if name == "guidance":
            results[name] = run_guidance(ctx, guidance or guidance_settings(base, models.clean_clip is not None))
        elif name == "samplers":
            results[name] = run_samplers(ctx, samplers or sampler_settings(base))
        elif name == "inpainting":
            results[name] = run_inpainting(ctx)
        else:
            results[name] = run_upsampler(ctx, upsamplers)
        results[name]["seconds"] = time.perf_counter() - start
    return results


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def _write_rows(out: Path, name: str, rows: Sequence[dict[str, Any]]) -> None:
    write_json(list(rows), out / f"{name}.json")
    write_csv(list(rows), out / f"{name}.csv")


def _save_rows_grid(rows: Sequence[torch.Tensor], path: Path) -> None:
    """One grid row per tensor of images (all the same size after nearest resizing)."""
    size = max(r.shape[-1] for r in rows)
    images = [tensor_to_image(F.interpolate(x[None], (size, size), mode="nearest")[0]) for r in rows for x in r]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns=len(rows[0])).save(path)


def _try_plot(make: Callable[[], Path]) -> None:
    try:
        make()
    except ImportError as e:  # the numbers are written; only the picture needs matplotlib
        tqdm.write(f"no plot written: {e}")


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, real: dict[str, Any] | None = None) -> Path:
    """Fig. 6 in miniature: FID against caption accuracy, and precision against recall, one curve
    per guidance (each starts at the unguided point)."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    origin = next((r for r in rows if r["family"] == UNGUIDED), None)
    for family in dict.fromkeys(r["family"] for r in rows if r["family"] != UNGUIDED):
        curve = ([origin] if origin else []) + sorted((r for r in rows if r["family"] == family), key=lambda r: r["x"])
        line, = left.plot([r["acc_caption"] for r in curve], [r["fid"] for r in curve], "o-", label=family)
        right.plot([r["recall"] for r in curve], [r["precision"] for r in curve], "o-", color=line.get_color(),
                   label=family)
        for r in curve[1:]:
            left.annotate(f"{r['x']:g}", (r["acc_caption"], r["fid"]), textcoords="offset points", xytext=(4, 4),
                          fontsize=7, color=line.get_color())
    if origin:
        left.plot(origin["acc_caption"], origin["fid"], "ks", label="unguided")
        right.plot(origin["recall"], origin["precision"], "ks", label="unguided")
    if real:
        left.axhline(real["fid"], color="grey", ls="--", lw=1, label="real vs real")
    left.set(xlabel="whole-caption accuracy (shapes judge)", ylabel="shapes-FID", yscale="log",
             title="FID vs caption accuracy over guidance scales")
    right.set(xlabel="recall", ylabel="precision", title="precision vs recall")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_steps(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Caption accuracy and shapes-FID against the number of steps, one curve per sampler."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    reference = [r for r in rows if r["family"] == "reference-ddpm"]
    for family in dict.fromkeys(r["family"] for r in rows if r["family"] != "reference-ddpm"):
        curve = sorted((r for r in rows if r["family"] == family), key=lambda r: r["x"])
        left.plot([r["x"] for r in curve], [r["acc_caption"] for r in curve], "o-", label=family)
        right.plot([r["x"] for r in curve], [r["fid"] for r in curve], "o-", label=family)
    for r in reference:
        left.axhline(r["acc_caption"], color="k", ls="--", lw=1, label=f"DDPM {r['x']:g} steps")
        right.axhline(r["fid"], color="k", ls="--", lw=1, label=f"DDPM {r['x']:g} steps")
    left.set(xscale="log", xlabel="steps", ylabel="whole-caption accuracy", title="caption accuracy vs steps")
    right.set(xscale="log", xlabel="steps", ylabel="shapes-FID", yscale="log", title="FID vs steps")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    return _save(fig, plt, path)


def markdown_tables(out: str | Path) -> str:
    """The Markdown tables of whatever results ``out`` holds (for docs/results.md)."""
    out = Path(out)
    parts = []
    if (out / "guidance.json").is_file():
        import json

        rows = json.loads((out / "guidance.json").read_text())
        parts.append(_table(rows, "guidance (every scale)"))
        parts.append(_table(best_rows(rows), "guidance (best scale of each)"))
    for name in ("clip-retrieval", "samplers", "inpainting", "upsampler"):
        if (out / f"{name}.json").is_file():
            import json

            parts.append(_table(json.loads((out / f"{name}.json").read_text()), name))
    return "\n\n".join(parts) + "\n"


def _table(rows: Sequence[dict[str, Any]], title: str) -> str:
    if not rows:
        return ""
    if "family" in rows[0]:
        header = ["setting", "caption acc. (95% CI)", "shapes-FID (95% CI)", "precision", "recall", "s/img"]
        body = [[r["key"], f"{r['acc_caption']:.3f} ({_ci(r['caption_accuracy_ci95'])})",
                 f"{r['fid']:.2f} ({_ci(r['fid_ci95'], 2)})", f"{r['precision']:.3f}", f"{r['recall']:.3f}",
                 f"{r['seconds_per_image']:.3f}"] for r in rows]
    else:
        header = list(rows[0])
        body = [[_cell(r[k]) for k in header] for r in rows]
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def _ci(pair: Sequence[float], digits: int = 3) -> str:
    return f"{pair[0]:.{digits}f}-{pair[1]:.{digits}f}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return _ci(value, 3)
    return "" if value is None else str(value)
