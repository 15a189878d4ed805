"""A real uvicorn server on a free loopback port, in a background thread, for the serve tests;
and base64 PNG helpers."""

from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, timeout: float = 30) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (its lifespan included) until the block ends; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


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
