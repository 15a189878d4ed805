"""EmojiDataset: every single-code-point emoji of Noto Color Emoji, captioned with its Unicode name.

Noto Color Emoji (Debian/Ubuntu: ``apt-get install fonts-noto-color-emoji``) is a CBDT bitmap font;
Pillow loads it only at size 109 and draws it with ``embedded_color=True``. The dataset holds the
code points in ``ranges`` that are emoji symbols (category "So", not skin-tone modifiers) and that
the font actually has a glyph for. Each is drawn centred on white and resized to ``resolution``;
the caption is ``caption_format.format(name=unicodedata.name(ch).lower())``, e.g. "grinning face",
and ``"label"`` is the emoji's index in ``dataset.emoji``.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from torch.utils.data import Dataset

from glide.images import image_to_tensor, resize_center_crop

DEFAULT_FONT_PATHS = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian / Ubuntu
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
    "/usr/share/fonts/google-noto-color-emoji/NotoColorEmoji.ttf",  # Fedora
)
FONT_SIZE = 109  # the only size of the CBDT strikes Pillow can load
EMOJI_RANGES: tuple[tuple[int, int], ...] = ((0x2600, 0x27BF), (0x1F300, 0x1FAFF))
_SKIN_TONES = range(0x1F3FB, 0x1F400)


def find_emoji_font(font_path: str | os.PathLike | None = None) -> Path:
    """The emoji font to use: ``font_path`` if given, else ``$GLIDE_EMOJI_FONT``, else a system path."""
    candidates = [font_path] if font_path is not None else (
        [os.environ["GLIDE_EMOJI_FONT"]] if os.environ.get("GLIDE_EMOJI_FONT") else DEFAULT_FONT_PATHS)
    for candidate in candidates:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        f"emoji font not found (looked at {', '.join(str(c) for c in candidates)}); install it with "
        f"`apt-get install fonts-noto-color-emoji` (Debian/Ubuntu) or pass font_path= to a "
        f"NotoColorEmoji.ttf")


@functools.lru_cache(maxsize=4)
def _load_font(path: str) -> ImageFont.FreeTypeFont:
    try:
        return ImageFont.truetype(path, FONT_SIZE)
    except OSError as exc:
        raise ValueError(f"cannot load {path} as a color emoji font at size {FONT_SIZE}: {exc}") from None


@functools.lru_cache(maxsize=4)
def available_emoji(font_path: str, ranges: tuple[tuple[int, int], ...] = EMOJI_RANGES) -> tuple[str, ...]:
    """Single-code-point emoji in ``ranges`` (inclusive) that have a name and a glyph in the font."""
    font = _load_font(font_path)
    found = []
    for low, high in ranges:
        for code_point in range(low, high + 1):
            ch = chr(code_point)
            if code_point in _SKIN_TONES or unicodedata.category(ch) != "So" or not unicodedata.name(ch, ""):
                continue
            left, top, right, bottom = font.getbbox(ch)
            if right > left and bottom > top:  # a missing glyph has an empty box
                found.append(ch)
    return tuple(found)


def render_emoji(ch: str, font: ImageFont.FreeTypeFont, padding: float = 0.08) -> Image.Image:
    """Draw one emoji, crop to its pixels and centre it on a white square (RGB, ~150 px)."""
    left, top, right, bottom = font.getbbox(ch)
    canvas = Image.new("RGBA", (right + 8, bottom + 8), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((4, 4), ch, font=font, embedded_color=True)
    box = canvas.getchannel("A").getbbox()
    if box is None:
        raise ValueError(f"the font draws nothing for U+{ord(ch):04X}")
    glyph = canvas.crop(box)
    side = round(max(glyph.size) * (1 + 2 * padding))
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB")


class EmojiDataset(Dataset):
    """Map-style dataset ``{"image": [3, R, R] in [-1, 1], "caption", "label", "emoji"}``.

    Raises ``FileNotFoundError`` (naming the apt package) when the font is missing.
    """

    def __init__(self, resolution: int = 64, font_path: str | os.PathLike | None = None,
                 ranges: tuple[tuple[int, int], ...] = EMOJI_RANGES, caption_format: str = "{name}"):
        self.font_path = find_emoji_font(font_path)
        self.font = _load_font(str(self.font_path))
        self.emoji = available_emoji(str(self.font_path), tuple(tuple(r) for r in ranges))
        if not self.emoji:
            raise ValueError(f"{self.font_path} has no glyphs for the code points in {ranges}")
        self.resolution = resolution
        self.caption_format = caption_format

    def __len__(self) -> int:
        return len(self.emoji)

    def caption(self, index: int) -> str:
        return self.caption_format.format(name=unicodedata.name(self.emoji[index]).lower())

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.emoji):
            raise IndexError(f"index {index} out of range for {len(self.emoji)} emoji")
        ch = self.emoji[index]
        image = resize_center_crop(render_emoji(ch, self.font), self.resolution)
        return {"image": image_to_tensor(image), "caption": self.caption(index), "label": index, "emoji": ch}
