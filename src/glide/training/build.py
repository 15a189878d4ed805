"""The model a run trains: a new one from a preset (+ overrides, + a tokenizer trained on the
captions), an ``--init`` checkpoint to fine-tune, or the checkpoint a run resumes from; then
which of its weights learn and how they are grouped for AdamW.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoints import CheckpointError, load_model, load_weights, read_checkpoint
from ..models import ModelConfig, build_model, config_from_dict
from ..models.presets import get_preset, preset_names
from .config import ConfigError, TrainConfig
from .distributed import Distributed

logger = logging.getLogger("glide.training")

# Parameters of the text side of a Text2ImUNet (what --train text trains and --train unet freezes).
TEXT_PARAMS = ("transformer.", "final_ln.", "token_embedding.", "positional_embedding", "padding_embedding",
               "transformer_proj.")


def new_model_config(cfg: TrainConfig) -> ModelConfig:
    """The config of a from-scratch model: the preset plus overrides and size flags."""
    name, overrides = cfg.model_name, cfg.size_overrides()
    if name not in preset_names():
        raise ConfigError(f"unknown --model {name!r}; presets: {', '.join(preset_names())}")
    preset = get_preset(name)
    try:
        return preset.config(**overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {name!r} with overrides {overrides}: {exc}") from None


def finish_new_config(cfg: TrainConfig, config: ModelConfig, dataset, env: Distributed) -> ModelConfig:
    """Settle what depends on the data: the tokenizer (``--tokenizer``), the classifier's classes."""
    model_type = config.model_type
    if model_type == "text2im":
        spec = cfg.tokenizer
        if spec is None:
            return config
        if spec == "glide-bpe":
            tokenizer, n_vocab = {"kind": "glide-bpe"}, 50257
        elif spec.startswith("train:"):
            tokenizer, n_vocab = _train_tokenizer(spec, dataset, env)
        else:
            tokenizer, n_vocab = _tokenizer_file(spec)
        return config.replace(tokenizer=tokenizer, n_vocab=n_vocab)
    if cfg.tokenizer not in (None, "clip-bpe"):
        raise ConfigError(f"--tokenizer {cfg.tokenizer} does not apply to stage {cfg.stage!r} "
                          f"({'the noised CLIP uses the CLIP BPE' if model_type == 'clip' else 'no text input'})")
    if model_type == "classifier" and "num_classes" not in cfg.model_overrides:
        classes = count_classes(dataset)
        if classes is None:
            raise ConfigError("cannot tell how many classes the data has: pass --model-overrides num_classes=N")
        config = config.replace(num_classes=classes)
    return config


def _train_tokenizer(spec: str, dataset, env: Distributed) -> tuple[dict[str, Any], int]:
    from ..tokenizer import train_tokenizer
    from .loader import iter_captions

    try:
        vocab_size = int(spec.split(":", 1)[1])
    except ValueError:
        raise ConfigError(f"--tokenizer {spec}: expected 'train:VOCAB_SIZE', e.g. train:4096") from None
    tokenizer_config = None
    if env.is_main:  # train once, share the result: every rank gets the very same vocabulary
        logger.info(f"training a {vocab_size}-token BPE on the captions of --data")
        try:
            tokenizer_config = train_tokenizer(iter_captions(dataset), vocab_size).to_config()
        except ValueError as exc:
            tokenizer_config = {"error": str(exc)}
    tokenizer_config = env.broadcast(tokenizer_config)
    if "error" in tokenizer_config:
        raise ConfigError(f"--tokenizer {spec}: {tokenizer_config['error']}")
    from ..tokenizer import tokenizer_from_config

    return tokenizer_config, tokenizer_from_config(tokenizer_config).n_vocab


def _tokenizer_file(spec: str) -> tuple[dict[str, Any], int]:
    from ..tokenizer import TrainedBPETokenizer

    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--tokenizer {spec}: no such file")
    try:
        tokenizer = TrainedBPETokenizer.from_json(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise ConfigError(f"--tokenizer {spec}: not a Hugging Face tokenizer JSON ({exc})") from None
    return tokenizer.to_config(), tokenizer.n_vocab


def count_classes(dataset) -> int | None:
    from ..data import NUM_CLASSES, CaptionedShapes

    if isinstance(dataset, CaptionedShapes):
        return NUM_CLASSES
    if getattr(dataset, "classes", None):
        return len(dataset.classes)
    labels = [e.label for e in getattr(dataset, "entries", []) if e.label is not None]
    return max(labels) + 1 if labels else None


def create_model(config: ModelConfig, seed: int) -> nn.Module:
    """A randomly initialised model; the same ``seed`` gives the same weights on every rank."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(config)


def load_init(spec: str, cfg: TrainConfig) -> nn.Module:
    """``--init``: an official checkpoint (``openai:NAME``), a glide checkpoint file/folder or run."""
    try:
        model = load_model(spec)
    except CheckpointError as exc:
        raise ConfigError(f"--init {spec}: {exc}") from None
    if cfg.stage in INPAINT_STAGES and getattr(model.config, "inpaint", True) is False:
        model = inpainting_from(model)  # GLIDE fine-tunes its inpainting models from the plain ones
    overrides = cfg.size_overrides()
    if overrides.get("coord_channels") and getattr(model.config, "coord_channels", True) is False:
        model = with_coordinates(model)
    if overrides:  # e.g. another resolution or dropout; shapes must still fit the weights
        config = model.config.to_dict()
        try:
            changed = build_model(config_from_dict({**config, **overrides}))
            load_weights(changed, model.state_dict())
        except (CheckpointError, TypeError, ValueError) as exc:
            raise ConfigError(f"--init {spec} with overrides {overrides}: {exc}") from None
        model = changed
    return model.train()


INPAINT_STAGES = ("inpaint", "upsample-inpaint")
_FIRST_CONV = "input_blocks.0.0.weight"


def inpainting_from(model: nn.Module) -> nn.Module:
    """The inpainting variant of a text-to-image model with its weights. The first conv's four new
    input channels (masked image, mask) follow x_t, before an upsampler's low-res channels."""
    return _widened(model, model.config.replace(inpaint=True), keep=3, move_to=7)


def with_coordinates(model: nn.Module) -> nn.Module:
    """``model`` with its two coordinate input channels (``coord_channels``, the last ones) added."""
    return _widened(model, model.config.replace(coord_channels=True), keep=model.config.in_channels, move_to=None)


def _widened(model: nn.Module, config, keep: int, move_to: int | None) -> nn.Module:
    """A model of ``config``, which has more input channels, with ``model``'s weights: its first
    ``keep`` input channels stay in place, the rest move to ``move_to``, and the new ones start at
    zero, so the new model computes what ``model`` does until it learns to use them."""
    wide = build_model(config)
    state = model.state_dict()
    old = state[_FIRST_CONV]
    first = torch.zeros_like(wide.state_dict()[_FIRST_CONV])
    first[:, :keep] = old[:, :keep]
    if move_to is not None:
        first[:, move_to:move_to + old.shape[1] - keep] = old[:, keep:]
    load_weights(wide, {**state, _FIRST_CONV: first})
    return wide.train(model.training)


def load_checkpoint_model(checkpoint: Path, dropout: float | None) -> nn.Module:
    """The raw weights of a trainer checkpoint folder, rebuilt from the config they carry."""
    state, config = read_checkpoint(checkpoint / "model.safetensors")
    if config is None:
        raise ConfigError(f"{checkpoint}/model.safetensors has no glide config")
    if dropout is not None and "dropout" in config:
        config = {**config, "dropout": dropout}
    model = build_model(config)
    load_weights(model, state)
    return model


def set_trainable(model: nn.Module, which: str) -> list[nn.Parameter]:
    """``--train all|unet|text``: freeze the rest; returns the trainable parameters."""
    from ..models import Text2ImUNet

    if which != "all":
        if not isinstance(model, Text2ImUNet):
            raise ConfigError(f"--train {which} applies to text-to-image models; use --train all for this stage")
        if not model.config.xf_width:
            raise ConfigError(f"--train {which}: this model has no text transformer")
        for name, param in model.named_parameters():
            is_text = name.startswith(TEXT_PARAMS)
            param.requires_grad_(is_text if which == "text" else not is_text)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"--train {which} leaves nothing to train")
    return params


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices and conv kernels, none on biases, norms and gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def describe(model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{type(model).__name__}: {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trainable"
