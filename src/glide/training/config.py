"""``TrainConfig``: every option of a training run, with YAML load/save and flag merging.

One flat dataclass, so that every field is also a ``glide train`` flag (``batch_size`` ->
``--batch-size``) and a key of ``--config FILE.yaml``. Precedence, lowest first: the defaults
here, the run's own ``config.yaml`` (when resuming), ``--config FILE.yaml``, flags on the command
line. ``batch_size`` is the *global* batch of one optimizer step (all ranks, all accumulation
micro-steps), so a run means the same thing on 1 or 64 GPUs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..bounds import check_number
from ..errors import ConfigError

STAGES = ("base", "upsample", "inpaint", "upsample-inpaint", "clip", "classifier")
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine", "linear")
TRAINABLE = ("all", "unet", "text")

# The preset (of glide.models.PRESETS) a stage trains when --model is not given.
DEFAULT_MODEL = {
    "base": "base",
    "upsample": "upsample",
    "inpaint": "base-inpaint",
    "upsample-inpaint": "upsample-inpaint",
    "clip": "clip",
    "classifier": "classifier",
}


# Numeric options: name -> (integer, low, high, low_open, high_open); every value must be finite.
_NUMBERS: dict[str, tuple[bool, float | None, float | None, bool, bool]] = {
    **{name: (True, 1, None, False, False) for name in (
        "steps", "batch_size", "grad_accum", "log_every", "num_samples", "sample_steps", "image_size",
        "num_channels", "num_res_blocks", "text_ctx", "xf_heads", "low_res_size", "probe_images")},
    **{name: (True, 0, None, False, False) for name in (
        "num_workers", "warmup_steps", "save_every", "keep", "sample_every", "xf_width", "xf_layers",
        "probe_every")},
    "seed": (True, 0, 2**32 - 1, False, False),  # the data order mixes it into a 64-bit generator seed
    **{name: (False, 0, 1, False, False) for name in ("caption_dropout", "mask_full_prob")},
    **{name: (False, 0, 1, False, True) for name in ("dropout", "adam_beta1", "adam_beta2")},
    "sample_strength": (False, 0, 1, True, False),
    **{name: (False, 0, None, True, False) for name in ("lr", "adam_eps")},
    **{name: (False, 0, None, False, False) for name in ("min_lr", "weight_decay", "grad_clip")},
}
_OPTIONAL = {"image_size", "num_channels", "num_res_blocks", "text_ctx", "xf_width", "xf_layers", "xf_heads",
             "dropout", "low_res_size"}  # None: the model preset's value


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """All options of ``glide train``; see docs/training.md for a walk-through."""

    # -- run ---------------------------------------------------------------------------------
    out: str = field(default="runs/glide", metadata=_help("run folder (checkpoints/, samples/, metrics.jsonl)"))
    stage: str = field(default="base", metadata=_help(f"what to train: {', '.join(STAGES)}"))
    steps: int = field(default=10_000, metadata=_help("optimizer steps to train in total"))
    seed: int = field(default=0, metadata=_help("seeds the model init, the data order and every random draw"))
    resume: str | None = field(default=None, metadata=_help(
        "continue a run: 'auto' (the latest checkpoint in --out, if any), or a checkpoint / run folder",
        flag_value="auto"))
    overwrite: bool = field(default=False, metadata=_help("replace an existing run in --out"))

    # -- model -------------------------------------------------------------------------------
    model: str | None = field(default=None, metadata=_help(
        "model preset, e.g. tiny-base, tiny-clip, tiny-classifier (`glide models` lists them all); "
        "default: the stage's official preset"))
    model_overrides: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "model config fields to change, e.g. 'num_channels=64,channel_mult=1,2,2' or a YAML mapping"))
    image_size: int | None = field(default=None, metadata=_help("model (and training image) resolution"))
    num_channels: int | None = field(default=None, metadata=_help("U-Net base channel count"))
    num_res_blocks: int | None = field(default=None, metadata=_help("residual blocks per U-Net level"))
    channel_mult: str | None = field(default=None, metadata=_help("U-Net channel multipliers, e.g. '1,2,3,4'"))
    attention_resolutions: str | None = field(default=None, metadata=_help(
        "resolutions with attention, e.g. '32,16,8'"))
    text_ctx: int | None = field(default=None, metadata=_help("caption length in tokens"))
    xf_width: int | None = field(default=None, metadata=_help("text transformer width"))
    xf_layers: int | None = field(default=None, metadata=_help("text transformer layers"))
    xf_heads: int | None = field(default=None, metadata=_help("text transformer heads"))
    dropout: float | None = field(default=None, metadata=_help("dropout inside the U-Net"))
    init: str | None = field(default=None, metadata=_help(
        "start from weights: 'openai:base' (official, see `glide download`), a glide checkpoint or run folder"))
    tokenizer: str | None = field(default=None, metadata=_help(
        "'glide-bpe', 'train:VOCAB' (train a BPE on the captions) or a tokenizer .json; default: the model's"))
    train: str = field(default="all", metadata=_help("which weights learn: all, unet (text frozen), text"))
    grad_checkpointing: bool = field(default=False, metadata=_help("recompute activations in backward (less memory)"))

    # -- data --------------------------------------------------------------------------------
    data: str = field(default="shapes", metadata=_help(
        "'shapes', 'shapes:N', 'emoji', an image folder, a .csv/.jsonl table or webdataset shards 'a-{000..009}.tar'"))
    batch_size: int = field(default=32, metadata=_help("global batch per optimizer step (all ranks x accumulation)"))
    grad_accum: int = field(default=1, metadata=_help("micro-steps per optimizer step"))
    num_workers: int = field(default=2, metadata=_help("DataLoader worker processes per rank"))
    caption_dropout: float = field(default=0.2, metadata=_help(
        "probability of training on the empty caption (enables classifier-free guidance)"))
    random_flip: bool = field(default=False, metadata=_help(
        "flip images left-right at random (captions may say left/right)"))
    low_res_size: int | None = field(default=None, metadata=_help("upsampler input size; default image_size // 4"))
    low_res_blur: str | None = field(default=None, metadata=_help("blur sigma of the low-res input: 'S' or 'LO,HI'"))
    low_res_noise: str | None = field(default=None, metadata=_help(
        "noise std added to the low-res input: 'S' or 'LO,HI'"))
    mask_full_prob: float = field(default=0.1, metadata=_help("inpainting: probability the whole image is masked"))
    timestep_sampling: str = field(default="uniform", metadata=_help(
        "how training draws t: 'uniform', or 'logit-normal[:MEAN,STD]' (t/T = sigmoid(N(MEAN, STD)), "
        "default 0,1), which trains the middle noise levels, where captions decide the picture, more often; "
        "'clean': always t = 0 (a CLIP or classifier of clean images, to compare with a noised one)"))
    hard_negatives: bool = field(default=False, metadata=_help(
        "CLIP stage: also contrast each image with its caption's hard negatives (shapes captions: each "
        "relation reversed, colours / shapes / sizes of two objects swapped), so it cannot read a caption "
        "as a bag of words"))
    loss_weighting: str = field(default="eps", metadata=_help(
        "weight of each sample's noise-prediction MSE: 'eps' (none, the official loss), 'min-snr[:GAMMA]' "
        "(min(SNR, GAMMA) / SNR, default 5: less weight on the least noisy steps) or 'v[:MAX]' (the "
        "v-prediction loss, 1 / alphabar_t capped at MAX, default 20: more weight on the noisy steps, "
        "where the layout is decided)"))

    # -- optimisation ------------------------------------------------------------------------
    lr: float = field(default=1e-4, metadata=_help("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (matrices and kernels only)"))
    adam_beta1: float = field(default=0.9, metadata=_help("AdamW beta1"))
    adam_beta2: float = field(default=0.999, metadata=_help("AdamW beta2"))
    adam_eps: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    lr_schedule: str = field(default="constant", metadata=_help(f"after warm-up: {', '.join(LR_SCHEDULES)}"))
    warmup_steps: int = field(default=0, metadata=_help("linear warm-up steps from 0 to --lr"))
    min_lr: float = field(default=0.0, metadata=_help("final learning rate of the cosine / linear schedules"))
    grad_clip: float = field(default=1.0, metadata=_help("clip the global gradient norm (0 = off)"))
    ema: tuple[float, ...] = field(default=(0.9999,), metadata=_help(
        "EMA rate(s), e.g. '0.9999,0.999' ('' = none); saved as ema-<rate>.safetensors"))
    precision: str = field(default="fp32", metadata=_help(
        "fp32, bf16 (autocast, CPU or GPU) or fp16 (autocast + GradScaler, GPU)"))
    device: str = field(default="auto", metadata=_help("auto (cuda if available), cpu, cuda, cuda:N"))

    # -- watching ----------------------------------------------------------------------------
    log_every: int = field(default=50, metadata=_help("write metrics every N steps"))
    save_every: int = field(default=1000, metadata=_help("checkpoint every N steps (and always at the end)"))
    keep: int = field(default=3, metadata=_help("keep the last K checkpoints (0 = all)"))
    sample_every: int = field(default=1000, metadata=_help("save a sample grid every N steps (0 = never)"))
    sample_prompts: tuple[str, ...] = field(default=(), metadata=_help(
        "prompts of the sample grids (repeat the flag); default: captions of the first training images"))
    num_samples: int = field(default=8, metadata=_help("images per sample grid"))
    sample_guidance: float = field(default=3.0, metadata=_help("classifier-free guidance scale of the sample grids"))
    sample_strength: float = field(default=1.0, metadata=_help(
        "upsamplers: start the sample grids this far from pure noise, from the noised low-res input (0 < s <= 1)"))
    sample_steps: int = field(default=50, metadata=_help("sampling steps of the sample grids"))
    sample_sampler: str = field(default="ddim", metadata=_help(
        "sampler of the sample grids (ddpm, ddim, plms, dpm++2m, dpm++3m, dpm++2m-sde)"))
    sample_weights: str = field(default="model", metadata=_help(
        "weights for the sample grids: 'model' or 'ema-<rate>'"))
    probe_every: int = field(default=0, metadata=_help(
        "run the caption probe (base models on shapes captions) every N steps with --sample-weights; "
        "its accuracies join the metrics rows (0 = never)"))
    probe_images: int = field(default=42, metadata=_help("renders per caption probe (~1.7 s each, tiny base)"))
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    tensorboard: bool = field(default=True, metadata=_help("also log to TensorBoard (when it is installed)"))

    def __post_init__(self) -> None:
        self.ema = parse_floats(self.ema, "ema")
        self.sample_prompts = tuple(self.sample_prompts or ())
        self.model_overrides = parse_overrides(self.model_overrides)
        self.out = str(self.out)
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first option that cannot work."""
        def one_of(name: str, valid: tuple[str, ...]) -> None:
            if getattr(self, name) not in valid:
                raise ConfigError(f"--{_flag(name)} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")

        one_of("stage", STAGES)
        one_of("precision", PRECISIONS)
        one_of("lr_schedule", LR_SCHEDULES)
        one_of("train", TRAINABLE)
        for name, (integer, low, high, low_open, high_open) in _NUMBERS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            try:
                setattr(self, name, check_number(f"--{_flag(name)}", value, integer=integer, low=low, high=high,
                                                 low_open=low_open, high_open=high_open))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        self._check_sampling()
        for rate in self.ema:
            if not 0.0 < rate < 1.0:
                raise ConfigError(f"--ema rates must lie in (0, 1), got {','.join(f'{r:g}' for r in self.ema)}")
        if self.tokenizer is not None and not (
            self.tokenizer in ("glide-bpe", "clip-bpe") or self.tokenizer.startswith("train:")
            or self.tokenizer.endswith(".json")
        ):
            raise ConfigError(
                f"--tokenizer must be 'glide-bpe', 'train:VOCAB_SIZE' or a .json file, got {self.tokenizer!r}")
        if self.sample_weights != "model" and not self.sample_weights.startswith("ema-"):
            raise ConfigError(f"--sample-weights must be 'model' or 'ema-<rate>', got {self.sample_weights!r}")
        if self.sample_strength < 1 and not self.stage.startswith("upsample"):
            raise ConfigError(f"--sample-strength {self.sample_strength:g} starts an upsampler's grids from its "
                              f"low-res input; --stage {self.stage} has none (use 1)")
        if self.hard_negatives and self.stage != "clip":
            raise ConfigError(f"--hard-negatives trains a CLIP (--stage clip), not --stage {self.stage}")
        if self.probe_every and self.stage != "base":
            raise ConfigError(
                f"--probe-every probes a text-to-image base model (--stage base), not --stage {self.stage}")
        for name in ("low_res_blur", "low_res_noise"):
            parse_range(getattr(self, name), name)
        parse_timestep_sampling(self.timestep_sampling)
        parse_loss_weighting(self.loss_weighting)

    def _check_sampling(self) -> None:
        """The sample grids' sampler and guidance, with the checks sampling itself uses."""
        from ..guidance import check_guidance_scale  # lazily: they import torch
        from ..sampling import check_sampler

        try:
            self.sample_guidance = check_guidance_scale(self.sample_guidance, "--sample-guidance")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            check_sampler(self.sample_sampler)
        except ValueError as exc:
            raise ConfigError(f"--sample-sampler: {exc}") from None

    # -- derived -----------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return Path(self.out)

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL[self.stage]

    def size_overrides(self) -> dict[str, Any]:
        """``model_overrides`` plus the individual size flags that were given."""
        flags = ("image_size", "num_channels", "num_res_blocks", "channel_mult", "attention_resolutions",
                 "text_ctx", "xf_width", "xf_layers", "xf_heads", "dropout")
        overrides = dict(self.model_overrides)
        overrides.update({name: getattr(self, name) for name in flags if getattr(self, name) is not None})
        return overrides

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ema"] = list(self.ema)
        d["sample_prompts"] = list(self.sample_prompts)
        d["model_overrides"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_overrides.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**normalise_keys(d))

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_yaml(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        import yaml  # imported here: `glide --help` need not load it
        data = {**self.to_dict(), **(extra or {})}
        Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def normalise_keys(d: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Accept ``batch-size`` or ``batch_size``; reject unknown keys with the list of valid ones."""
    names = set(field_names())
    out = {}
    for key, value in d.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise ConfigError(f"{source}: unknown option {key!r}; valid options: {', '.join(sorted(names))}")
        out[name] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` file: a YAML mapping of TrainConfig options (dashes or underscores)."""
    import yaml  # imported here: `glide --help` need not load it
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path} as YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    for key in ("resolved_model", "launch"):  # written by the trainer for people, not read back
        data.pop(key, None)
    return normalise_keys(data, str(path))


def merge(*layers: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from option dicts, later layers winning."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(normalise_keys(layer))
    return TrainConfig(**merged)


def parse_floats(value: Any, name: str) -> tuple[float, ...]:
    """'0.9999,0.999' / [0.9999] / 0.9999 / '' / 'none' -> tuple of floats."""
    if value is None:
        return ()
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "off"):
            return ()
        value = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, int | float):
        value = [value]
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"--{_flag(name)}: expected comma-separated numbers, got {value!r}") from None


def parse_range(value: Any, name: str) -> float | tuple[float, float] | None:
    """'0.5' -> 0.5; '0.4,0.6' -> (0.4, 0.6); None -> None (the low-res augmentation options)."""
    if value is None or value == "":
        return None
    numbers = parse_floats(value, name)
    finite = all(math.isfinite(n) for n in numbers)
    if finite and len(numbers) == 1 and numbers[0] >= 0:
        return numbers[0]
    if finite and len(numbers) == 2 and 0 <= numbers[0] <= numbers[1]:
        return numbers
    raise ConfigError(f"--{_flag(name)} must be 'S' or 'LO,HI' of finite numbers with 0 <= LO <= HI, got {value!r}")


CLEAN_TIMESTEPS = "clean"


def parse_timestep_sampling(value: str) -> tuple[float, float] | str | None:
    """'uniform' -> None; 'logit-normal' -> (0.0, 1.0); 'logit-normal:M,S' -> (M, S) with S > 0;
    'clean' -> ``CLEAN_TIMESTEPS``."""
    if value == "uniform":
        return None
    if value == CLEAN_TIMESTEPS:
        return CLEAN_TIMESTEPS
    kind, _, params = str(value).partition(":")
    if kind == "logit-normal":
        numbers = parse_floats(params, "timestep_sampling") if params else (0.0, 1.0)
        if len(numbers) == 2 and all(math.isfinite(n) for n in numbers) and numbers[1] > 0:
            return numbers[0], numbers[1]
    raise ConfigError(f"--timestep-sampling must be 'uniform', 'clean', 'logit-normal' or 'logit-normal:MEAN,STD' "
                      f"with finite numbers and STD > 0, got {value!r}")


LOSS_WEIGHTINGS = {"eps": None, "min-snr": 5.0, "v": 20.0}  # name -> default parameter


def parse_loss_weighting(value: str) -> tuple[str, float | None]:
    """'eps' -> ('eps', None); 'min-snr[:GAMMA]' and 'v[:MAX]' -> (name, parameter > 0)."""
    kind, _, params = str(value).partition(":")
    if kind == "eps" and not params:
        return kind, None
    if kind in LOSS_WEIGHTINGS and kind != "eps":
        numbers = parse_floats(params, "loss_weighting") if params else (LOSS_WEIGHTINGS[kind],)
        if len(numbers) == 1 and math.isfinite(numbers[0]) and numbers[0] > 0:
            return kind, numbers[0]
    raise ConfigError(f"--loss-weighting must be 'eps', 'min-snr[:GAMMA]' or 'v[:MAX]' with a finite number > 0, "
                      f"got {value!r}")


_PAIR_SPLIT = re.compile(r"[,;\s]+(?=[A-Za-z_]\w*\s*=)")


def parse_overrides(value: Any) -> dict[str, Any]:
    """Model overrides from a dict, a YAML/JSON mapping string, or 'key=value,key=value'.

    Values go through YAML (``64`` -> int, ``true`` -> bool); commas inside a value are kept,
    so ``channel_mult=1,2,2,num_channels=64`` works.
    """
    import yaml  # imported here: `glide --help` need not load it
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list | tuple):  # several --model-overrides flags
        merged: dict[str, Any] = {}
        for item in value:
            merged.update(parse_overrides(item))
        return merged
    text = str(value).strip()
    if text.startswith("{"):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--model-overrides: not a valid mapping: {exc}") from None
        if not isinstance(parsed, dict):
            raise ConfigError(f"--model-overrides: expected a mapping, got {text!r}")
        return parsed
    out: dict[str, Any] = {}
    for pair in _PAIR_SPLIT.split(text):
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model-overrides: expected key=value pairs, got {pair!r} in {text!r}")
        raw = raw.strip().rstrip(",;")
        try:
            parsed_value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            parsed_value = raw
        out[key.strip()] = parsed_value
    return out
