"""Writing a run's images as they come: ``<prompt>-<seed>-<k>.png`` per image (k counts the
prompt's images), then ``grid-<seed>.png``; every file atomic (``glide.images.save_png``), every
path printed to stdout as soon as it exists."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

import click

# The grid shows every image of a run up to this many; a larger run writes no grid (a grid of
# thousands of images would be huge, and holding them all would defeat the chunked sampling).
GRID_MAX_IMAGES = 64


def slugify(text: str, max_length: int = 60) -> str:
    """A file-name-safe form of a prompt: ascii, lower case, words joined by '-'."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "image"


def grid_name(seed: int) -> str:
    """Per seed, so another run into the same folder does not overwrite the grid."""
    return f"grid-{seed}.png"


class ImageWriter:
    """Writes each chunk's images as soon as it is sampled, then the grid."""

    def __init__(self, folder: Path, seed: int, metadata: dict[str, Any], total: int, columns: int | None):
        self.folder, self.seed, self.metadata, self.columns = folder, seed, metadata, columns
        self.keep_for_grid = total <= GRID_MAX_IMAGES
        self.images: list = []
        self.paths: list[Path] = []
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(e) from e

    def _error(self, e: OSError) -> click.ClickException:
        return click.ClickException(f"cannot write the images to {self.folder}: {e.strerror or e}")

    def write(self, images, prompts: list[str], indices: list[int], numbers: list[int]) -> None:
        """``indices``: each image's number among its prompt's (k); ``numbers``: among the run's."""
        from ..images import save_png

        for image, prompt, k, number in zip(images, prompts, indices, numbers, strict=True):
            path = self.folder / f"{slugify(prompt)}-{self.seed}-{k}.png"
            meta = {**self.metadata, "prompt": prompt, "index": k, "image_number": number}
            try:
                save_png(image, path, {"glide": meta})
            except OSError as e:
                raise self._error(e) from e
            self.paths.append(path)
            click.echo(str(path))
            if self.keep_for_grid:
                self.images.append(image)

    def finish(self) -> Path | None:
        """Write the grid (when the run is small enough for one); returns its path."""
        from ..images import image_grid, save_png

        if not self.keep_for_grid or not self.images:
            return None
        path = self.folder / grid_name(self.seed)
        try:
            save_png(image_grid(self.images, self.columns), path, {"glide": self.metadata})
        except OSError as e:
            raise self._error(e) from e
        click.echo(str(path))
        return path
