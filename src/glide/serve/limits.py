"""The per-request bounds of a server (``glide serve --max-images ...``), torch- and FastAPI-free
so the command can check them before anything heavy is imported."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Hard ceilings: the schemas refuse anything above them whatever a server is configured to allow.
HARD_MAX_IMAGES = 64
HARD_MAX_STEPS = 1000
HARD_MAX_IMAGE_SIZE = 4096
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class Limits:
    """``max_images``: images per request; ``max_steps``: sampling steps per stage;
    ``max_image_size``: width and height of an uploaded image, px; ``queue_size``: requests
    waiting for the sampler (more get 503); ``max_batch``: images sampled together in one run."""

    max_images: int = 8
    max_steps: int = 250
    max_image_size: int = 1024
    queue_size: int = 16
    max_batch: int = 16

    def __post_init__(self) -> None:
        for name, high in (("max_images", HARD_MAX_IMAGES), ("max_steps", HARD_MAX_STEPS),
                           ("max_image_size", HARD_MAX_IMAGE_SIZE), ("queue_size", 10_000), ("max_batch", 1024)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer in [1, {high}], got {value!r}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: two uncompressed RGBA images of the largest size as base64
        (an image and its mask), plus room for the other fields."""
        return 2 * (self.max_image_size**2 * 4 * 4 // 3 + 1024) + 64 * 1024


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None, insecure_no_auth: bool) -> None:
    """Refuse to listen beyond this machine without an API key, unless explicitly told to."""
    if is_loopback(host) or api_key or insecure_no_auth:
        return
    raise ValueError(f"--host {host} makes the server reachable from other machines: set an API key "
                     f"(--api-key KEY or the GLIDE_API_KEY environment variable), or pass --insecure-no-auth "
                     f"to serve without one")
