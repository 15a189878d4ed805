"""Everything a generating command does before sampling, in the order that makes errors cheap:
stage options, model specs and configs (headers only), prompts against the model's context,
then device, models, threads and seed.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any

import click

from .common import SMALL_MODEL_PARAMS, log, warn


@dataclass
class Run:
    """What every generating command has once its models are loaded."""

    base_model: Any
    upsampler: Any
    clip: Any
    classifier: Any
    random: tuple[str, ...]  # the specs that are randomly initialised (untrained)
    base: Any  # StageOptions
    upsample: Any  # StageOptions, or False for no upsampling
    seed: int
    device: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)


def stage_options(recipe: str, sampler: str | None, steps: int | None, upsample_sampler: str | None,
                  upsample_steps: int | None, guidance_scale: float | None, recommended=(None, None)):
    """The two stages' StageOptions: the recipe, with the command-line overrides applied.

    ``recommended``: the (base, upsampler) sampling their checkpoints record, or None each; the
    default recipe uses them where given."""
    from ..pipelines import DEFAULT_BASE, DEFAULT_UPSAMPLE, RECIPES
    from ..pipelines.text2im import stage_from_sampling

    if recipe in RECIPES:
        recipes = RECIPES[recipe]
    else:
        recipes = tuple(stage_from_sampling(r, d) for r, d in zip(recommended, (DEFAULT_BASE, DEFAULT_UPSAMPLE),
                                                                 strict=True))
    overrides = ({"sampler": sampler, "timesteps": steps, "guidance_scale": guidance_scale},
                 {"sampler": upsample_sampler, "timesteps": upsample_steps})
    stages = []
    for options, changes in zip(recipes, overrides, strict=True):
        changes = {k: v for k, v in changes.items() if v is not None}
        stages.append(replace(options, **changes) if changes else options)  # validated by StageOptions
    return tuple(stages)


def _spec_error(e) -> click.BadParameter:
    """A spec error names the option it came from: show it as click's usage error for that option."""
    return click.BadParameter(str(e), param_hint=e.option)


def plan(command: str, options: dict[str, Any], clip: str | None, classifier: str | None, class_label: int | None):
    """Check every model spec from its config alone (nothing loaded): names, roles, downloads, the
    classifier's label range and image size. Returns (plan, classifier spec or None)."""
    from ..checkpoints import checkpoint_config
    from ..checkpoints.specs import check_role, parse_spec, plan_models
    from ..errors import SpecError

    try:
        models = plan_models(command, options["model"], options["upsampler"], clip, cache_dir=options["cache_dir"])
        spec = None
        if classifier is not None:
            spec = parse_spec(classifier, "classifier")
            config = checkpoint_config(spec.source, cache_dir=options["cache_dir"])
            if config is not None:
                check_role(spec, config, "classifier")
                _check_classifier(config, class_label, model_config(models.base, options["cache_dir"]))
    except SpecError as e:
        raise _spec_error(e) from None
    return models, spec


def recommended_sampling(models, cache_dir) -> tuple[dict | None, dict | None]:
    """The sampling the planned base and upsampler checkpoints recommend (header only), or None each."""
    from ..checkpoints import checkpoint_sampling

    return tuple(checkpoint_sampling(spec.source, cache_dir=cache_dir) if spec is not None and
                 spec.kind in ("path", "bundled") else None for spec in (models.base, models.upsampler))


def model_config(spec, cache_dir) -> dict[str, Any] | None:
    """A planned model's config from its file header or preset (None for a bare ``.pt``)."""
    from ..checkpoints import checkpoint_config

    return checkpoint_config(spec.source, cache_dir=cache_dir)


def _check_classifier(config: dict[str, Any], label: int | None, base_config: dict[str, Any] | None) -> None:
    classes = config.get("num_classes")
    if label is not None and classes is not None and label >= classes:
        raise click.BadParameter(f"the classifier has {classes} classes: use 0..{classes - 1}, got {label}",
                                 param_hint="--class-label")
    size = base_config and base_config.get("image_size")
    if size and config.get("image_size") != size:
        raise click.BadParameter(f"the classifier sees {config.get('image_size')} px images but the base model "
                                 f"makes {size} px ones; train or pick a {size} px classifier",
                                 param_hint="--classifier")


def check_prompt_length(prompts, models, cache_dir) -> None:
    """Refuse a prompt longer than a model's text context (it would be cut), from the configs."""
    from ..tokenizer import tokenizer_from_config

    for role, spec in (("base", models.base), ("upsampler", models.upsampler)):
        config = model_config(spec, cache_dir) if spec is not None else None
        if not config or "tokenizer" not in config or not config.get("text_ctx"):
            continue
        tokenizer = tokenizer_from_config(config["tokenizer"])
        capacity = tokenizer.capacity(config["text_ctx"])
        for i, prompt in enumerate(prompts):
            count = len(tokenizer.encode(prompt))
            if count > capacity:
                where = f"prompt {i + 1}" if len(prompts) > 1 else "the prompt"
                raise click.BadParameter(
                    f"{where} is {count} tokens but the {role} model {spec.given} reads at most {capacity}; "
                    f"shorten it", param_hint="PROMPT")


def load(models, classifier_spec, *, device, dtype, cache_dir: str | None, progress: bool) -> dict[str, Any]:
    """Load (or randomly build) the planned models, with a progress bar and clear labels."""
    from tqdm.auto import tqdm

    from ..checkpoints.specs import load_for_role
    from ..errors import SpecError

    loaded: dict[str, Any] = {}
    roles = models.roles() + ([("classifier", classifier_spec)] if classifier_spec is not None else [])
    with tqdm(total=len(roles), desc="loading models", unit="model", disable=not progress) as bar:
        for role, spec in roles:
            bar.set_postfix_str(spec.given)
            start = time.perf_counter()
            image_size = loaded["base"].config.image_size if role == "clip" else None
            try:
                loaded[role] = load_for_role(spec, role, inpaint=models.inpaint, device=device, dtype=dtype,
                                             cache_dir=cache_dir, image_size=image_size)
            except SpecError as e:
                raise _spec_error(e) from None
            bar.update()
            log(f"{role if role != 'base' else 'model'}: {spec.describe(cache_dir)} "
                f"[{time.perf_counter() - start:.1f}s]", fg="yellow" if spec.is_random else None)
    return loaded


def prepare(command: str, prompts: list[str], options: dict[str, Any], *, clip: str | None = None,
            classifier: str | None = None, class_label: int | None = None) -> Run:
    """Check everything cheap first (options, specs, prompts), then load the models."""
    started = time.perf_counter()
    stage_options(options["recipe"], options["sampler"], options["steps"], options["upsample_sampler"],
                  options["upsample_steps"], options["guidance_scale"])  # bad values fail before the specs
    models, classifier_spec = plan(command, options, clip, classifier, class_label)
    base, up = stage_options(options["recipe"], options["sampler"], options["steps"], options["upsample_sampler"],
                             options["upsample_steps"], options["guidance_scale"],
                             recommended_sampling(models, options["cache_dir"]))
    check_prompt_length(prompts, models, options["cache_dir"])
    import torch

    from ..checkpoints import to_precision
    from ..devices import auto_dtype, resolve_device, resolve_dtype

    device = resolve_device(options["device"])
    # auto on a CPU depends on the models' size: they load in fp32 and may move to bf16 below
    decide_later = options["dtype"] == "auto" and device.type == "cpu"
    dtype = torch.float32 if decide_later else resolve_dtype(options["dtype"], device)
    loaded = load(models, classifier_spec, device=device, dtype=dtype, cache_dir=options["cache_dir"],
                  progress=options["progress"])
    set_threads(options["threads"], loaded.values(), device)  # before the probe: it measures at this count
    why = ""
    params = sum(p.numel() for m in loaded.values() for p in m.parameters())
    if decide_later:
        dtype, why = auto_dtype(device, params, SMALL_MODEL_PARAMS)
        for model in loaded.values():
            to_precision(model, dtype)
        why = f" ({why})"
    log(f"device: {device}, dtype: {str(dtype).removeprefix('torch.')}{why}")
    if options["winograd"] and fast_convolutions(loaded.values(), params, device, dtype):
        log("convolutions: Winograd F(4x4, 3x3) (fp32 on a CPU; outputs move by under 1e-4; --no-winograd: "
            "the direct ones, with less memory)")
    random = models.random + ((f"--classifier {classifier_spec.given}",) if classifier_spec and
                              classifier_spec.is_random else ())
    if random:
        warn(f"RANDOM WEIGHTS ({', '.join(random)}): untrained models, the images will be noise. "
             f"For real images leave out --model (the bundled cascade), or run 'glide download base upsample' "
             f"and use --model openai.")
    seed = options["seed"] if options["seed"] is not None else secrets.randbelow(2**31)
    log(f"seed: {seed}")
    run = Run(loaded["base"], loaded.get("upsampler"), loaded.get("clip"), loaded.get("classifier"), random,
              base, up if "upsampler" in loaded else False, seed, device, started=started)
    run.metadata = dict(command=command, seed=seed, model=options["model"], upsampler=options["upsampler"],
                        base_stage=stage_text(base), random_weights=list(random))
    stages = f"base {stage_text(base)} at {run.base_model.config.image_size} px"
    if run.upsampler is not None:
        run.metadata["upsample_stage"] = stage_text(up)
        stages += f"; upsampler {stage_text(up)} at {run.upsampler.config.image_size} px"
    log(f"sampling: {stages}")
    return run


def fast_convolutions(models, params: int, device, dtype) -> bool:
    """Large models in fp32 on a CPU run their 3x3 convolutions as Winograd F(4x4, 3x3) (0.7x the
    step time of the official base, benchmarks/sampling.py); returns whether any did. ``params`` is
    the models' parameter count. Small models stay exact: they gain little, and the bundled ones'
    outputs do not move."""
    import torch

    from ..models.winograd import use_winograd

    if device.type != "cpu" or dtype != torch.float32 or params < SMALL_MODEL_PARAMS:
        return False
    return sum(use_winograd(m) for m in models) > 0


def stage_text(options) -> str:
    steps = f"{options.timesteps} steps" if isinstance(options.timesteps, int) else options.timesteps
    return f"{options.sampler} {steps}, guidance scale {options.guidance_scale:g}"



def set_threads(threads: int | str, models, device) -> None:
    """``--threads N``, or for ``auto`` one thread when every model is small and on the CPU."""
    import torch

    if threads == "auto":
        small = sum(p.numel() for m in models for p in m.parameters()) < SMALL_MODEL_PARAMS
        if device.type != "cpu" or not small:
            return
        threads = 1
    torch.set_num_threads(threads)
