"""Images in and out: load / convert / resize, tensor <-> PIL, grids, atomic PNGs with metadata.

Tensors are ``FloatTensor [3, H, W]`` (or ``[N, 3, H, W]``) in [-1, 1]. Resizing follows
guided-diffusion's ``center_crop_arr``: halve with a BOX filter while the image is at least twice
the target (cheap antialiasing), then BICUBIC so the shorter side equals the target, then crop the
centre. Used by inference and training alike; imports nothing from ``glide.data``.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo


def load_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Open and fully decode an image (a path or encoded bytes), upright per EXIF, as RGB.

    Raises whatever Pillow raises for unreadable data (``OSError``, ``SyntaxError``, ...);
    datasets catch it and skip the sample.
    """
    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    with Image.open(source) as image:
        image.load()  # decode now so corrupt data fails here, not later
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparent pixels are composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            array = array / 257.0
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (BOX halving, then BICUBIC) and crop the centre."""
    while min(image.size) >= 2 * resolution:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.Resampling.BOX)
    scale = resolution / min(image.size)
    size = tuple(max(resolution, round(s * scale)) for s in image.size)
    image = image.resize(size, resample=Image.Resampling.BICUBIC)
    left = (image.width - resolution) // 2
    top = (image.height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``FloatTensor [3, H, W]`` in [-1, 1]."""
    array = np.asarray(to_rgb(image), dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [-1, 1] -> RGB PIL image (values clamped)."""
    array = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).cpu().numpy(), "RGB")


# --------------------------------------------------------------------------------------------
# Editing inputs: an image and a mask at a model's size
# --------------------------------------------------------------------------------------------
def _open(source: Image.Image | str | Path, what: str) -> Image.Image:
    if isinstance(source, (str, Path)):
        if not Path(source).is_file():
            raise ValueError(f"{what} file not found: {source}")
        return Image.open(source)
    return source


def load_rgb(image: Image.Image | str | Path | torch.Tensor, size: int) -> torch.Tensor:
    """An image as ``[1, 3, size, size]`` in [-1, 1]. PIL/paths are resized and centre-cropped;
    tensors ([3,H,W] or [1,3,H,W] in [-1, 1]) must already have the right size."""
    image = _open(image, "image")
    if isinstance(image, Image.Image):
        return image_to_tensor(resize_center_crop(to_rgb(image), size))[None]
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[:2] != (1, 3) or tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"image tensor must be [1, 3, {size}, {size}] (or [3, {size}, {size}]) in [-1, 1], "
                         f"got {list(image.shape)}")
    return x.float()


def load_mask(mask: Image.Image | str | Path | torch.Tensor, size: int) -> torch.Tensor:
    """An edit mask as ``inpaint_mask`` ``[1, 1, size, size]``: 1 = keep, 0 = fill.

    Mask images follow the usual editor convention: **white = repaint**, black = keep.
    Tensors are taken as that same "1 = repaint" convention, [H,W], [1,H,W] or [1,1,H,W].
    """
    mask = _open(mask, "mask")
    if isinstance(mask, Image.Image):
        mask = resize_center_crop(mask.convert("L"), size)
        repaint = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None]
    else:
        repaint = mask.float()
        while repaint.dim() < 4:
            repaint = repaint[None]
        if repaint.shape[:2] != (1, 1):
            raise ValueError(f"mask must have one channel ([H, W], [1, H, W] or [1, 1, H, W]), got {list(mask.shape)}")
        if tuple(repaint.shape[2:]) != (size, size):
            repaint = F.interpolate(repaint, (size, size), mode="nearest")
    keep = (repaint < 0.5).float()
    if keep.all():
        raise ValueError("the mask marks nothing to repaint (paint the region to change white)")
    return keep


# --------------------------------------------------------------------------------------------
# Grids and files
# --------------------------------------------------------------------------------------------
def grid_columns(count: int) -> int:
    """A near-square layout: ``ceil(sqrt(count))`` columns (4 -> 2, 5 -> 3, 9 -> 3, 10 -> 4)."""
    return max(1, math.ceil(math.sqrt(count) - 1e-9))  # the epsilon keeps perfect squares exact


def image_grid(images: Sequence[Image.Image], columns: int | None = None) -> Image.Image:
    """Tile equally sized PIL images into one on white (``columns`` defaults to a near-square layout)."""
    if not images:
        raise ValueError("no images to tile")
    columns = columns or grid_columns(len(images))
    rows = -(-len(images) // columns)
    w, h = images[0].size
    grid = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def make_grid(images: torch.Tensor, columns: int, padding: int = 2) -> torch.Tensor:
    """``[N, 3, H, W]`` in [-1, 1] -> one ``[3, rows * (H + p) + p, columns * (W + p) + p]`` image
    with white (1) borders."""
    n, c, h, w = images.shape
    rows = (n + columns - 1) // columns
    grid = torch.ones(c, rows * (h + padding) + padding, columns * (w + padding) + padding)
    for i, image in enumerate(images.detach().float().cpu()):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, top:top + h, left:left + w] = image
    return grid


def save_png(image: Image.Image, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write a PNG atomically: a temporary file in the same folder, then ``os.replace``, so an
    interrupted run never leaves a half-written image under the final name. ``metadata`` values
    are stored as PNG text chunks (non-strings as JSON)."""
    path = Path(path)
    info = PngInfo()
    for key, value in (metadata or {}).items():
        info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
