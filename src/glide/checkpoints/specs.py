"""One model-spec grammar for the CLI and the Python API.

A spec names where a model comes from:

* ``openai``: the official model of the role (``base`` / ``upsample``, or the inpainting pair);
* ``bundled``: the model of the role in the cascade shipped inside the package (trained by glide on
  the shapes data; offline): ``shapes-base``, ``shapes-upsample``, their inpainting variants,
  ``shapes-clip`` and ``shapes-classifier``;
* ``openai:NAME`` or an official ``NAME`` (``base``, ``upsample-inpaint``, ...; aliases accepted);
* ``PATH``: a ``.pt`` / ``.safetensors`` file, a checkpoint folder or a training-run folder;
* ``bundled:NAME``: a model shipped inside the package (``glide/bundled/NAME.safetensors``);
* ``random:PRESET``: a randomly initialised preset (untrained; for tests and demos).

Every spec is checked before any tensor is read: the name or path exists, its config (read from
the file header, or the preset's) fits the role it is given (``base``, ``upsampler``, ``clip``,
``classifier``; inpainting or not), and every official checkpoint still to download is reported
at once with the ``glide download`` command. Only then are the models loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, SpecError
from ..models import PRESETS
from .load import (
    BUNDLED_PREFIX,
    RANDOM_PREFIX,
    bundled_names,
    bundled_path,
    checkpoint_config,
    is_random,
    load_clip,
    load_model,
    random_preset,
    seeded_build,
)
from .registry import (
    CLIP_HALVES,
    CLIP_PAIR,
    OFFICIAL_CHECKPOINTS,
    OPENAI_PREFIX,
    checkpoint_dir,
    download_command,
    missing_official,
    official_key,
    official_path,
)

OPENAI = "openai"  # the official model of the role (base + upsample, or the inpainting pair)
BUNDLED = "bundled"  # the bundled cascade's model of the role (glide/bundled/shapes-*.safetensors)
BUNDLED_CASCADE = {  # (role, inpaint) -> bundled:NAME
    ("base", False): "shapes-base", ("upsampler", False): "shapes-upsample",
    ("base", True): "shapes-base-inpaint", ("upsampler", True): "shapes-upsample-inpaint",
    ("clip", False): "shapes-clip", ("classifier", False): "shapes-classifier",
}
RANDOM_CLIP = "random"  # a tiny randomly initialised noised CLIP, for trying CLIP guidance / reranking
NONE = "none"  # no upsampler
ROLES = ("base", "upsampler", "clip", "classifier")
COMMANDS = {"sample": False, "edit": False, "inpaint": True}  # command -> uses inpainting models
_OPTIONS = {"base": "--model", "upsampler": "--upsampler", "clip": "--clip", "classifier": "--classifier"}

__all__ = [
    "BUNDLED", "BUNDLED_CASCADE", "ModelPlan", "ModelSpec", "OPENAI", "RANDOM_CLIP", "RANDOM_PREFIX", "bundled_for",
    "check_role", "is_random",
    "load_for_role", "load_pipeline_models", "parse_spec", "plan_models", "require_downloaded",
    "resolve_pair",
]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``kind`` is ``official`` (``name`` = registry key), ``random`` (``name`` =
    preset), ``path`` (``name`` = the path), ``bundled`` (``name`` = the packaged file), or for
    CLIP also ``clip-pair`` (``name`` = image half,
    ``text`` = text half) and ``random-clip``. ``given`` is the spec as the user wrote it."""

    given: str
    kind: str
    name: str
    text: str | None = None

    @property
    def source(self) -> str:
        """What ``load_model`` / ``checkpoint_config`` take for this spec."""
        return self.given if self.kind == "random" else self.name

    @property
    def is_random(self) -> bool:
        return self.kind in ("random", "random-clip")

    def describe(self, cache_dir: str | Path | None = None) -> str:
        """For logs: the spec, and where an official file is or that a model is untrained."""
        if self.is_random:
            return f"{self.given} (RANDOM WEIGHTS: an untrained model, its images are noise)"
        if self.kind == "official":
            return f"{self.given} ({official_path(self.name, cache_dir)})"
        return self.given


def _unknown(spec: str, role: str) -> SpecError:
    if role == "clip":
        return SpecError(f"no CLIP checkpoint {spec!r}: use {BUNDLED}, {OPENAI}, {RANDOM_CLIP} or a path", "--clip")
    names = ", ".join(OFFICIAL_CHECKPOINTS)
    return SpecError(
        f"no checkpoint {spec!r}: not a file or folder. Valid names: {BUNDLED}, {OPENAI}, {names}, "
        f"a .pt/.safetensors file, a checkpoint or training-run folder, or random:PRESET "
        f"(presets: {', '.join(PRESETS)})",
        _OPTIONS.get(role))


def bundled_for(role: str, inpaint: bool = False) -> str | None:
    """``bundled:NAME`` of the bundled cascade's model for ``role``, or None if this install has none."""
    name = BUNDLED_CASCADE.get((role, inpaint and role in ("base", "upsampler")))
    return BUNDLED_PREFIX + name if name is not None and name in bundled_names() else None


def parse_spec(spec: str | Path, role: str = "base", *, inpaint: bool = False) -> ModelSpec:
    """Parse ``spec`` for ``role`` (``openai`` becomes the official model of that role).

    Raises ``SpecError`` (a ``ValueError``) for an unknown name, preset, file or folder.
    """
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; valid roles: {', '.join(ROLES)}")
    given = str(spec)
    if role == "clip":
        if given in (OPENAI, CLIP_PAIR, OPENAI_PREFIX + CLIP_PAIR):
            return ModelSpec(given, "clip-pair", *CLIP_HALVES)
        if given == RANDOM_CLIP:
            return ModelSpec(given, "random-clip", RANDOM_CLIP)
    if given == BUNDLED:
        bundled = bundled_for(role, inpaint)
        if bundled is None:
            kind = "inpainting " * inpaint + role
            have = ", ".join(bundled_names()) or "none"
            raise SpecError(f"this install has no bundled {kind} model (bundled: {have}); pass a checkpoint path "
                            f"or {OPENAI}", _OPTIONS[role])
        return ModelSpec(given, "bundled", str(bundled_path(bundled)))
    if given == OPENAI:
        if role not in ("base", "upsampler"):
            raise SpecError(f"{OPENAI!r} names no official {role} model; pass a checkpoint path", _OPTIONS[role])
        name = {("base", False): "base", ("upsampler", False): "upsample",
                ("base", True): "base-inpaint", ("upsampler", True): "upsample-inpaint"}[role, inpaint]
        return ModelSpec(given, "official", name)
    if given.startswith(RANDOM_PREFIX):
        try:
            return ModelSpec(given, "random", random_preset(given))
        except SpecError as e:
            raise SpecError(str(e), _OPTIONS[role]) from None
    if given.startswith(BUNDLED_PREFIX):
        try:
            return ModelSpec(given, "bundled", str(bundled_path(given)))
        except CheckpointError as e:
            raise SpecError(str(e), _OPTIONS.get(role)) from None
    if not given.startswith(OPENAI_PREFIX) and Path(given).expanduser().exists():
        return ModelSpec(given, "path", given)
    key = official_key(given)
    if key is not None:
        return ModelSpec(given, "official", key)
    raise _unknown(given, role)


def check_role(spec: ModelSpec, config: dict[str, Any] | Any, role: str, *, inpaint: bool = False) -> None:
    """Refuse a model given in the wrong role, saying what to pass instead.

    ``config``: the model's config dict (with ``model_type``) or config object.
    """
    option = _OPTIONS[role]
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    model_type = get("model_type") or ("text2im" if get("super_res") is not None else None)
    name = f"{spec.given!r}"
    if role in ("clip", "classifier"):  # a CLIP image half is completed by the official text half
        wanted = ("clip", "clip-image-enc") if role == "clip" else ("classifier",)
        if model_type not in wanted:
            raise SpecError(f"{name} is a {model_type or 'non-glide'} model, not a noised {role}", option)
        return
    if model_type != "text2im":
        raise SpecError(f"{name} is a {model_type} model, not a text-to-image model; pass it as "
                        f"{_OPTIONS.get(model_type, '--clip')} where a command takes one", option)
    if role == "base" and get("super_res"):
        raise SpecError(f"{name} is an upsampler; pass it as --upsampler and give a 64 px base as --model", option)
    if role == "upsampler" and not get("super_res"):
        raise SpecError(f"{name} is not an upsampler (a 64 px base model?); pass it as --model", option)
    if inpaint and not get("inpaint"):
        raise SpecError(
            f"{name} is not an inpainting model; use e.g. base-inpaint / upsample-inpaint "
            f"or random:tiny-base-inpaint / random:tiny-upsample-inpaint", option)
    if not inpaint and get("inpaint"):
        raise SpecError(f"{name} is an inpainting model; use it with 'glide inpaint' (InpaintPipeline)", option)


def resolve_pair(command: str, model: str, upsampler: str | None) -> tuple[ModelSpec, ModelSpec | None]:
    """The (base, upsampler or None) specs of a command (``sample``, ``edit`` or ``inpaint``).

    ``upsampler=None`` picks one automatically: the matching ``random:`` preset for a random base
    (none if that preset does not exist), the bundled upsampler for a bundled base (none if this
    install has none), else the official upsampler; ``"none"`` means no upsampler.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; valid: {', '.join(COMMANDS)}")
    inpaint = COMMANDS[command]
    base = parse_spec(model, "base", inpaint=inpaint)
    if upsampler is None:
        if base.kind == "random":
            candidate = base.given.replace("base", "upsample", 1)
            upsampler = candidate if candidate[len(RANDOM_PREFIX):] in PRESETS else NONE
        elif base.kind == "bundled":
            upsampler = BUNDLED if bundled_for("upsampler", inpaint) else NONE
        else:
            upsampler = OPENAI
    if upsampler.lower() == NONE:
        return base, None
    return base, parse_spec(upsampler, "upsampler", inpaint=inpaint)


@dataclass(frozen=True)
class ModelPlan:
    """What a command will load, every spec already checked: base, upsampler, CLIP."""

    base: ModelSpec
    upsampler: ModelSpec | None = None
    clip: ModelSpec | None = None
    inpaint: bool = False

    def roles(self) -> list[tuple[str, ModelSpec]]:
        return [(r, s) for r, s in (("base", self.base), ("upsampler", self.upsampler), ("clip", self.clip)) if s]

    @property
    def random(self) -> tuple[str, ...]:
        return tuple(s.given if r != "clip" else f"--clip {s.given}" for r, s in self.roles() if s.is_random)


def require_downloaded(names: list[str], cache_dir: str | Path | None = None, hint: str = "") -> None:
    """One error naming every official checkpoint among ``names`` still to download, with the command to run."""
    missing = [n for n in dict.fromkeys(names) if missing_official(n, cache_dir)]
    if missing:
        raise CheckpointError(
            f"the official checkpoint(s) {', '.join(missing)} are not downloaded yet "
            f"(looked in {checkpoint_dir(cache_dir)}). Fetch them with:\n\n"
            f"    {download_command(missing, cache_dir)}\n" + (f"\n{hint}" if hint else ""))


def _precheck(spec: ModelSpec, role: str, inpaint: bool, cache_dir) -> None:
    """The role check from the config alone (file header or preset); skipped for a bare ``.pt``."""
    if spec.kind in ("clip-pair", "random-clip"):
        return
    try:
        config = checkpoint_config(spec.source, cache_dir=cache_dir)
    except CheckpointError as e:
        raise CheckpointError(f"{_OPTIONS[role]} {spec.given}: {e}") from None
    if config is not None:
        check_role(spec, config, role, inpaint=inpaint)


def plan_models(command: str, model: str, upsampler: str | None = None, clip: str | tuple | None = None,
                *, cache_dir: str | Path | None = None) -> ModelPlan:
    """Check every spec of a command before anything is loaded: names, presets, roles, downloads."""
    base, up = resolve_pair(command, model, upsampler)
    inpaint = COMMANDS[command]
    clip_spec = None
    if isinstance(clip, tuple):
        clip_spec = ModelSpec(" + ".join(map(str, clip)), "clip-pair", *map(str, clip))
    elif clip is not None:
        clip_spec = parse_spec(clip, "clip")
    plan = ModelPlan(base, up, clip_spec, inpaint)
    hint = "(Or pass --upsampler none to keep the base model's 64 px images.)" if upsampler is None and up else ""
    for role, spec in plan.roles():  # an official name not downloaded yet is checked from its preset
        _precheck(spec, role, inpaint, cache_dir)
    names = [n for _, s in plan.roles() if s.kind in ("official", "clip-pair") for n in (s.name, s.text) if n]
    require_downloaded(names, cache_dir, hint)
    return plan


def random_clip(image_size: int) -> nn.Module:
    """A tiny randomly initialised noised CLIP for ``image_size`` images (``--clip random``)."""
    from ..models import preset_config

    return seeded_build(preset_config("tiny-clip", image_size=image_size))


def load_for_role(spec: ModelSpec | str, role: str, *, inpaint: bool = False, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, cache_dir: str | Path | None = None,
                  image_size: int | None = None) -> nn.Module:
    """Load ``spec`` for ``role`` after checking the role from its config; a bare ``.pt`` (no
    stored config) is checked once loaded. ``image_size``: the base's, for ``--clip random``."""
    if not isinstance(spec, ModelSpec):
        spec = parse_spec(spec, role, inpaint=inpaint)
        _precheck(spec, role, inpaint, cache_dir)
    if spec.kind == "random-clip":
        return random_clip(image_size or 64).to(device).eval()
    if spec.kind == "clip-pair":
        return load_clip(spec.name, spec.text, device=device, cache_dir=cache_dir)  # CLIP stays float32
    if role == "clip":
        return load_clip(spec.name, device=device, cache_dir=cache_dir)
    model = load_model(spec.source, device=device, dtype=dtype, cache_dir=cache_dir)
    check_role(spec, model.config.to_dict(), role, inpaint=inpaint)
    return model


def load_pipeline_models(command: str, model: str, upsampler: str | None, clip: str | tuple | None = None, *,
                         device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                         cache_dir: str | Path | None = None) -> tuple[nn.Module, nn.Module | None, nn.Module | None]:
    """(base, upsampler or None, CLIP or None) of a pipeline, planned and checked, then loaded."""
    plan = plan_models(command, model, upsampler, clip, cache_dir=cache_dir)
    kw = dict(inpaint=plan.inpaint, device=device, dtype=dtype, cache_dir=cache_dir)
    base = load_for_role(plan.base, "base", **kw)
    up = load_for_role(plan.upsampler, "upsampler", **kw) if plan.upsampler else None
    clip_model = load_for_role(plan.clip, "clip", **kw, image_size=base.config.image_size) if plan.clip else None
    return base, up, clip_model

