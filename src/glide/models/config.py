"""``ModelConfig``: the base of every model config (``Text2ImConfig``, ``ClipConfig``, ``ClassifierConfig``).

A config is a dataclass whose ``to_dict()`` is what checkpoints store (JSON-safe, always with a
``model_type``) and whose ``from_dict()`` rebuilds it, so no checkpoint's type is ever guessed.
Every config names the diffusion its model was trained for with the same two fields,
``noise_schedule`` and ``diffusion_steps``; older files spelled them ``beta_schedule`` /
``n_timesteps`` (the official CLIP ``config.yaml`` still does), and ``from_dict`` reads both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

# Old key -> current key, for configs stored before the vocabulary was unified.
RENAMED_KEYS: dict[str, str] = {"beta_schedule": "noise_schedule", "n_timesteps": "diffusion_steps"}

C = TypeVar("C", bound="ModelConfig")


@dataclasses.dataclass
class ModelConfig:
    """Base class: subclasses declare their fields and a ``model_type`` field (last, with a default).

    ``MODEL_TYPES`` lists the model types the class can describe (one, except for the noised
    CLIP, whose config serves its image encoder, its text encoder and the pair). Equality ignores
    ``model_type``: two configs are equal when they give the same architecture.
    """

    MODEL_TYPES: ClassVar[tuple[str, ...]] = ()
    # Subclasses end with ``model_type: str = dataclasses.field(default=..., compare=False)``: a
    # field declared here would come first and shift every positional argument.

    def __post_init__(self) -> None:
        if self.model_type not in self.MODEL_TYPES:
            raise ValueError(f"{type(self).__name__} describes model_type {' / '.join(self.MODEL_TYPES)}, "
                             f"not {self.model_type!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (tuples as lists), ``model_type`` included."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Rebuild from ``to_dict()`` output (old key names accepted); unknown keys raise ``ValueError``."""
        d = dict(d)
        for old, new in RENAMED_KEYS.items():
            if old in d:
                if new in d:
                    raise ValueError(f"config has both {old!r} and its new name {new!r}; keep only {new!r}")
                d[new] = d.pop(old)
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """One line for listings, e.g. ``base, 64 px, 192 channels``."""
        return self.model_type
