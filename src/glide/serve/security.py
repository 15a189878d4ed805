"""What stands between a client and the sampler: a body-size cap applied before any parsing,
image decoding that checks dimensions before pixels are decompressed, and the API key check.

Every refusal is a :class:`RequestRefused` carrying its HTTP status and a readable message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import io
import json
import warnings

from PIL import Image

ACCEPTED_FORMATS = ("PNG", "JPEG")


class RequestRefused(Exception):
    """A client error: ``status`` (413, 422, ...) and a message naming the field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------------------------
# Request bodies
# --------------------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413, by Content-Length up front and by
    counting the streamed bytes (a chunked upload has no Content-Length), before anything parses them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        received = 0
        too_large = refused = False

        async def counted_receive():
            nonlocal received, too_large
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # stop reading: the app sees a client that went away
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def checked_send(message):
            nonlocal refused
            if not too_large:
                return await send(message)
            if not refused:  # whatever the app makes of the cut-off body, the client gets the 413
                refused = True
                await self._refuse(send)

        try:
            await self.app(scope, counted_receive, checked_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not refused:  # the app failed or answered nothing on the cut-off body
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"detail": f"the request body is larger than this server's limit of "
                                     f"{self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def decode_image(data: str, field: str, max_size: int) -> Image.Image:
    """A base64 PNG/JPEG as a decoded PIL image, refusing bad base64, non-images, other formats and
    images over ``max_size`` px a side (checked from the header, before decompression)."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(422, f"{field} is not valid base64 (standard alphabet, padded)") from None
    with warnings.catch_warnings():  # Pillow's DecompressionBombWarning becomes an error here
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RequestRefused(413, f"{field} is too large to decode (max {max_size}x{max_size} px)") from None
        except Exception:  # Pillow raises several types for data it cannot identify
            raise RequestRefused(422, f"{field} is not an image Pillow can read (send a base64 PNG)") from None
        if image.format not in ACCEPTED_FORMATS:
            raise RequestRefused(422, f"{field} is a {image.format} image; send a PNG or JPEG")
        width, height = image.size
        if width > max_size or height > max_size:
            raise RequestRefused(413, f"{field} is {width}x{height} px; this server accepts at most "
                                      f"{max_size}x{max_size}")
        if width < 1 or height < 1:
            raise RequestRefused(422, f"{field} has no pixels")
        try:
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RequestRefused(413, f"{field} is too large to decode (max {max_size}x{max_size} px)") from None
        except Exception:
            raise RequestRefused(422, f"{field} is truncated or corrupt and cannot be decoded") from None
    return image


def fingerprint(*images: Image.Image) -> str:
    """A digest of images' pixels: requests editing the same image can share a sampling run."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------------
def presented_key(headers) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key")


def key_matches(presented: str | None, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a key was right."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())
