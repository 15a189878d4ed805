"""Does a state dict fit a model? Meta-device builds, strict fit checks, and the diagnosis of a
file that fits nothing ("its keys look most like the 'tiny-base' preset").

Models are built on the ``meta`` device (no memory, no random init), checked against the
checkpoint's keys and shapes *before* any weight is allocated, then given the checkpoint's
tensors directly (``load_state_dict(assign=True)``); buffers that no state dict carries (CLIP's
``logit_scale`` and pixel statistics) are rebuilt with ``reset_buffers()``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models import PRESETS, ModelConfig, build_model, preset_config
from .registry import OFFICIAL_CHECKPOINTS, OfficialCheckpoint

_RANDOM_INITS = (torch.Tensor.normal_, torch.Tensor.uniform_, nn.init.normal_, nn.init.uniform_,
                 nn.init.trunc_normal_, nn.init.kaiming_uniform_, nn.init.kaiming_normal_)


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """Make random initialisation of meta tensors a no-op (it means nothing there).

    Their meta kernels are Python decompositions: ~1 ms per tensor, and the first ``normal_``
    imports torch._refs, dynamo and sympy (seconds per process), for values a checkpoint replaces.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RANDOM_INITS:
            tensor = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


def meta_model(config: ModelConfig) -> nn.Module:
    """The model with every tensor on the meta device: no memory, no init; for shapes and loading."""
    with torch.device("meta"), _SkipMetaInit():
        return build_model(config)


@functools.cache
def _preset_shapes() -> dict[str, tuple[str, dict[str, tuple[int, ...]]]]:
    """Every preset's (model_type, {key: shape}), from models built on the meta device (cheap)."""
    out = {}
    for name, preset in PRESETS.items():
        model = meta_model(preset.config())
        out[name] = (preset.model_type, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    return out


def _closest_preset(state: dict[str, torch.Tensor]) -> tuple[str, int, int, int]:
    """(preset, keys in common, keys in either, common keys with equal shapes) of the closest preset."""
    best = ("", -1, 1, -1)
    for name, (_, shapes) in _preset_shapes().items():
        common = shapes.keys() & state.keys()
        union = len(shapes.keys() | state.keys())
        same_shape = sum(shapes[k] == tuple(state[k].shape) for k in common)
        if (len(common) / union, same_shape) > (best[1] / best[2], best[3]):
            best = (name, len(common), union, same_shape)
    return best


def _looks_like(state: dict[str, torch.Tensor]) -> str:
    hint = ""
    prefixes = {k.split(".", 1)[0] for k in state}
    if len(prefixes) == 1 and (prefix := prefixes.pop()) in ("module", "_orig_mod", "model"):
        state = {k.split(".", 1)[1]: v for k, v in state.items() if "." in k}
        hint = f"after removing the {prefix + '.'!r} prefix every key carries (saved from a wrapper?), "
    name, common, union, same_shape = _closest_preset(state)
    where = f"official {name!r} model" if name in OFFICIAL_CHECKPOINTS else f"{name!r} preset"
    if common == union and same_shape == common:
        use = "" if name in OFFICIAL_CHECKPOINTS else f" (load it with config={name!r})"
        return f"{hint}its keys and shapes are exactly those of the {where}{use}"
    if common <= 0:
        return f"{hint}its keys look like none of the glide presets"
    return (f"{hint}its keys look most like the {where} ({common} of {union} keys in common, "
            f"{same_shape} of those with equal shapes)")


def describe_mismatch(state: dict[str, torch.Tensor], model: nn.Module | None = None) -> str:
    """Name the first missing/unexpected/misshapen keys and the glide model the keys look most like."""
    parts = []
    if model is not None:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                 for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
        if missing:
            parts.append(f"{len(missing)} missing keys, first: {missing[:4]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first: {unexpected[:4]}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (checkpoint vs model), first: {wrong[:3]}")
    parts.append(_looks_like(state))
    return "; ".join(parts)


def _fits(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    expected = model.state_dict()
    return expected.keys() == state.keys() and all(tuple(expected[k].shape) == tuple(state[k].shape) for k in state)


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    if not _fits(model, state):
        raise CheckpointError(f"{what} does not fit {type(model).__name__}: {describe_mismatch(state, model)}")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """``load_state_dict(strict=True)`` into an existing model, with an error that says what does not fit."""
    check_fits(model, state, "checkpoint")
    model.load_state_dict(state, strict=True)
    return model


def official_config(ckpt: OfficialCheckpoint) -> ModelConfig:
    return preset_config(ckpt.preset)


def guess_config(state: dict[str, torch.Tensor], path: Path) -> ModelConfig:
    """For a file with no glide config: the official model whose keys and shapes it has exactly."""
    for ckpt in OFFICIAL_CHECKPOINTS.values():
        _, shapes = _preset_shapes()[ckpt.preset]
        if shapes.keys() == state.keys() and all(shapes[k] == tuple(state[k].shape) for k in state):
            return official_config(ckpt)
    raise CheckpointError(
        f"{path} has no glide config and is not an official model ({describe_mismatch(state)}). "
        "Pass config= (a preset name, config dict or config object), or save it with glide.save_model."
    )


def _owned(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``v`` as a dense tensor of ``dtype`` that owns its memory (fit to become a parameter)."""
    out = v.to(dtype) if v.dtype != dtype else v
    if not out.is_contiguous() or out.storage_offset() or out.untyped_storage().nbytes() != out.nbytes:
        out = out.clone(memory_format=torch.contiguous_format)
    return out


def materialize(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Fill a meta-device ``model`` with ``state`` (checked already) and rebuild unsaved buffers, on CPU."""
    expected = model.state_dict()
    state = {k: _owned(v, expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent buffers are still on meta: give them storage, then let their modules refill them.
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta:
                module._buffers[name] = torch.empty_like(buf, device="cpu")
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: {type(model).__name__} has tensors no checkpoint or reset fills: {left[:4]}")
    return model
