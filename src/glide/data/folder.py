"""Map-style datasets of image files with captions: a folder tree, or a CSV / JSONL table.

Folder layout (recursive)::

    root/cat/001.jpg  root/cat/001.txt  root/dog.png  root/dog.txt ...

Table layout: CSV with a header ``path,caption[,label]`` or JSONL lines
``{"path": "img/1.jpg", "caption": "...", "label": 3}``; relative paths are resolved against the
table's folder (or ``image_root``).

Bad data is never fatal: an unreadable image or a caption file that is not UTF-8 is logged once,
counted in ``dataset.stats`` and replaced by the next valid sample (index + 1, wrapping around).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from glide.data.common import IMAGE_EXTENSIONS, DataStats
from glide.data.transforms import ImageTransform, clean_caption
from glide.images import load_image


@dataclass(frozen=True)
class _Entry:
    image: Path
    caption: str | None = None  # given inline (tables)
    caption_file: Path | None = None  # read lazily (folders)
    label: int | None = None


class _CaptionedImages(Dataset):
    """Shared loading / skipping logic over a list of entries."""

    def __init__(self, entries: list[_Entry], resolution: int, source: Path):
        self.entries = entries
        self.source = source
        self.transform = ImageTransform(resolution)
        self.stats = DataStats()
        self._bad: set[int] = set()  # indices already found unusable in this process

    @property
    def resolution(self) -> int:
        return self.transform.resolution

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.entries)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        for step in range(n):
            i = (index + step) % n
            if i in self._bad:
                continue
            sample = self._load(self.entries[i])
            if sample is not None:
                return sample
            self._bad.add(i)
        raise RuntimeError(f"none of the {n} samples in {self.source} could be read; {self.stats.report()}")

    def _load(self, entry: _Entry) -> dict[str, Any] | None:
        caption = entry.caption or ""
        if entry.caption_file is not None:
            try:
                caption = entry.caption_file.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError:
                self.stats.add("skipped_captions", str(entry.caption_file), f"skipping {entry.image}: caption "
                               f"file {entry.caption_file} is not UTF-8")
                return None
            except OSError as exc:
                self.stats.add("skipped_captions", str(entry.caption_file), f"skipping {entry.image}: cannot "
                               f"read caption file {entry.caption_file}: {exc}")
                return None
        try:
            image = load_image(entry.image)
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBomb...
            self.stats.add("skipped_images", str(entry.image), f"skipping unreadable image {entry.image}: {exc!r}")
            return None
        sample: dict[str, Any] = {
            "image": self.transform(image),
            "caption": clean_caption(caption),
            "path": str(entry.image),
        }
        if entry.label is not None:
            sample["label"] = entry.label
        return sample


class ImageFolderDataset(_CaptionedImages):
    """Images under ``root`` (recursive) with same-named ``.txt`` captions.

    A missing caption gives ``""`` (counted in ``stats.missing_captions``). With
    ``class_labels=True`` every image also gets ``"label"``: the index of its top-level
    subfolder in ``self.classes`` (sorted names), for classifier training.
    Hidden files and folders (names starting with ".") are ignored.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int,
        class_labels: bool = False,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    ):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"image folder {root} does not exist or is not a directory "
                             f"(expected a folder of images with same-named .txt captions)")
        images = sorted(
            p for p in root.rglob("*")
            if p.suffix.lower() in extensions and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
        if not images:
            raise ValueError(f"no images found in {root} (expected files ending in {', '.join(extensions)})")
        self.classes: list[str] = []
        if class_labels:
            if any(len(p.relative_to(root).parts) < 2 for p in images):
                raise ValueError(f"class_labels=True needs every image of {root} inside a class subfolder")
            self.classes = sorted({p.relative_to(root).parts[0] for p in images})
        class_index = {name: i for i, name in enumerate(self.classes)}
        entries = []
        missing = []
        for path in images:
            caption_file = path.with_suffix(".txt")
            if not caption_file.is_file():
                caption_file = None
                missing.append(str(path))
            label = class_index[path.relative_to(root).parts[0]] if class_labels else None
            entries.append(_Entry(path, caption_file=caption_file, label=label))
        super().__init__(entries, resolution, root)
        for key in missing:
            self.stats.add("missing_captions", key)


class CaptionTableDataset(_CaptionedImages):
    """Images listed in a CSV (header ``path,caption`` required, optional ``label``) or JSONL file.

    Relative image paths resolve against ``image_root`` or else the table's folder. An empty
    caption counts in ``stats.missing_captions``; a missing or unreadable image is skipped at load.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int,
        image_root: str | os.PathLike | None = None,
    ):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"caption table {path} does not exist (expected a .csv with a 'path,caption' "
                             f"header or a .jsonl of {{\"path\": ..., \"caption\": ...}} lines)")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            rows = _read_csv(path)
        elif suffix in (".jsonl", ".ndjson"):
            rows = _read_jsonl(path)
        else:
            raise ValueError(f"caption table {path}: unknown format {suffix!r} (expected .csv or .jsonl)")
        if not rows:
            raise ValueError(f"caption table {path} lists no images")
        base = Path(image_root) if image_root is not None else path.parent
        entries = []
        missing = []
        for number, row in enumerate(rows, 1):
            caption = row.get("caption")
            caption = "" if caption is None else str(caption)
            if not caption.strip():
                missing.append(f"{path} row {number}")  # rows, not images: one image may be listed twice
            label = row.get("label")
            label = int(label) if label not in (None, "") else None
            entries.append(_Entry(base / Path(row["path"]), caption=caption, label=label))
        super().__init__(entries, resolution, path)
        for key in missing:
            self.stats.add("missing_captions", key)


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "path" not in header or "caption" not in header:
                raise ValueError(f"caption table {path}: header must name the columns 'path' and 'caption', "
                                 f"got {header}")
            rows = [row for row in reader if row.get("path")]
    except UnicodeDecodeError as exc:
        raise ValueError(f"caption table {path} is not UTF-8: {exc}") from None
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"caption table {path}:{line_no}: invalid JSON ({exc})") from None
                if not isinstance(row, dict) or not row.get("path"):
                    raise ValueError(f"caption table {path}:{line_no}: expected an object with a 'path' key")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise ValueError(f"caption table {path} is not UTF-8: {exc}") from None
    return rows
