"""Helpers of the serve tests: a real server in a background thread, and base64 PNGs."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from glide.serve.background import background_server as running_server  # noqa: F401 (re-exported)


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(b64: str) -> np.ndarray:
    """A base64 PNG's pixels as uint8 [H, W, 3] (and proof that it is a PNG)."""
    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG"), raw[:8]
    with Image.open(io.BytesIO(raw)) as image:
        return np.asarray(image.convert("RGB"))
