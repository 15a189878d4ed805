"""The official checkpoints: names, URLs, aliases, where they live in the cache, downloads.

Downloads go through ``glide.download.fetch_to`` (resumable, locked, atomic); ``GLIDE_OFFLINE=1``
turns one into an ``OfflineError`` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One released checkpoint: where it is published and which preset/model type it fills."""

    name: str
    url: str
    preset: str
    sha256: str | None = None  # OpenAI publishes no checksums; set one to have downloads verified

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def model_type(self) -> str:
        """The preset's model type (``text2im``, ``clip-image-enc``, ``clip-text-enc``)."""
        from ..models.presets import PRESETS  # lazily: the registry is read without torch

        return PRESETS[self.preset].model_type


_BLOB = "https://openaipublic.blob.core.windows.net/diffusion/dec-2021"
OFFICIAL_CHECKPOINTS: dict[str, OfficialCheckpoint] = {
    c.name: c
    for c in [
        OfficialCheckpoint("base", f"{_BLOB}/base.pt", "base"),
        OfficialCheckpoint("upsample", f"{_BLOB}/upsample.pt", "upsample"),
        OfficialCheckpoint("base-inpaint", f"{_BLOB}/base_inpaint.pt", "base-inpaint"),
        OfficialCheckpoint("upsample-inpaint", f"{_BLOB}/upsample_inpaint.pt", "upsample-inpaint"),
        OfficialCheckpoint("clip-image-enc", f"{_BLOB}/clip_image_enc.pt", "clip-image-enc"),
        OfficialCheckpoint("clip-text-enc", f"{_BLOB}/clip_text_enc.pt", "clip-text-enc"),
    ]
}
# Names the official code uses (``load_checkpoint("clip/image-enc")``, file stems).
ALIASES = {
    "clip/image-enc": "clip-image-enc", "clip/text-enc": "clip-text-enc",
    "clip_image_enc": "clip-image-enc", "clip_text_enc": "clip-text-enc",
    "base_inpaint": "base-inpaint", "upsample_inpaint": "upsample-inpaint",
}
OPENAI_PREFIX = "openai:"
CLIP_PAIR = "clip"  # load_model("clip") loads both CLIP halves as one NoisedClip
CLIP_HALVES = ("clip-image-enc", "clip-text-enc")


def valid_names() -> str:
    return ", ".join([*OFFICIAL_CHECKPOINTS, f"{CLIP_PAIR} (both CLIP halves)"])


def official_key(name: str) -> str | None:
    """``base`` / ``openai:base`` / ``base_inpaint`` -> registry key; None if not official."""
    key = name.removeprefix(OPENAI_PREFIX)
    key = ALIASES.get(key, key)
    return key if key in OFFICIAL_CHECKPOINTS else None


def official_checkpoint(name: str) -> OfficialCheckpoint:
    """The registry entry for ``name`` (aliases and the ``openai:`` prefix accepted)."""
    key = official_key(name)
    if key is None:
        raise CheckpointError(f"unknown official checkpoint {name!r}; valid names: {', '.join(OFFICIAL_CHECKPOINTS)}")
    return OFFICIAL_CHECKPOINTS[key]


def checkpoint_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder holding official checkpoints: ``cache_dir`` itself, else ``<glide cache>/checkpoints``.

    The glide cache is ``$GLIDE_CACHE``, else ``$XDG_CACHE_HOME/glide``, else ``~/.cache/glide``.
    """
    from ..download import cache_dir as default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "checkpoints"


def official_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Where ``glide download NAME`` puts the official checkpoint (it may not exist yet)."""
    return checkpoint_dir(cache_dir) / official_checkpoint(name).filename


def official_candidates(key: str, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The files that hold official ``key``, in the order they are used: ``glide convert``'s output first."""
    pt = official_path(key, cache_dir)
    return pt.with_suffix(".safetensors"), pt


def is_downloaded(key: str, cache_dir: str | Path | None = None) -> bool:
    return any(p.is_file() for p in official_candidates(key, cache_dir))


def missing_official(spec: str | Path, cache_dir: str | Path | None = None) -> str | None:
    """The official name ``spec`` stands for, if that checkpoint is not in the cache yet."""
    key = official_key(str(spec))
    if key is None or Path(spec).exists() or is_downloaded(key, cache_dir):
        return None
    return key


def download_command(names: list[str], cache_dir: str | Path | None = None) -> str:
    """The command that fetches ``names``, e.g. ``glide download base upsample``."""
    return f"glide download {' '.join(names)}" + (f" --cache-dir {cache_dir}" if cache_dir else "")


def download_official(name: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Download an official checkpoint into the cache and return its path (a no-op if present).

    The download streams into ``<file>.part`` (resumed by the next call after an interruption),
    holds a file lock so two processes never fetch the same file, and appears under its final
    name only when complete. ``GLIDE_OFFLINE=1`` raises ``OfflineError`` naming the file.
    """
    from ..download import fetch_to

    ckpt = official_checkpoint(name)
    return fetch_to(ckpt.url, official_path(name, cache_dir), sha256=ckpt.sha256, progress=progress)


def official_status(cache_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Official checkpoints with their download state, for ``glide models``."""
    rows = []
    for name, ckpt in OFFICIAL_CHECKPOINTS.items():
        path = official_path(name, cache_dir)
        converted = path.with_suffix(".safetensors")
        rows.append(dict(name=name, preset=ckpt.preset, url=ckpt.url, path=str(path),
                         downloaded=path.is_file() or converted.is_file(), converted=converted.is_file()))
    return rows
