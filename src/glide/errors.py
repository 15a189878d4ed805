"""Every expected error of the library, in one torch-free module.

``GlideError`` is the common base: a caller (the CLI, a server) catches it, plus ``ValueError``
for bad arguments, and shows the message; anything else is a bug and keeps its traceback. Each
type also derives from the builtin it used to be (``RuntimeError`` / ``ValueError``), so code that
caught those keeps working. Importing this module imports nothing heavy.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError", "ChecksumError", "ConfigError", "DownloadError", "GlideError", "LaunchError",
    "OfflineError", "ResumeError", "SamplingError", "SpecError",
]


class GlideError(Exception):
    """Base of glide's expected failures: the message says what went wrong and how to fix it."""


class CheckpointError(GlideError, RuntimeError):
    """A checkpoint is missing, unreadable, unsafe, or does not fit the model."""


class SpecError(GlideError, ValueError):
    """A model spec (``openai``, a name, a path, ``random:PRESET``) is unknown or given in the wrong role.

    ``option`` names the command-line option the spec came from (e.g. ``"--upsampler"``), if any.
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


class DownloadError(GlideError, RuntimeError):
    """A file could not be fetched (network failure, bad response, offline mode, bad checksum)."""


class ChecksumError(DownloadError):
    """A file's sha256 is not the expected one."""


class OfflineError(DownloadError):
    """A download was needed while ``GLIDE_OFFLINE`` is set."""


class ConfigError(GlideError, ValueError):
    """A training option or option combination that cannot work; the message names the option."""


class LaunchError(GlideError, RuntimeError):
    """A launch setting that cannot work (device, torchrun environment, batch divisibility)."""


class ResumeError(GlideError, RuntimeError):
    """A checkpoint to resume from is missing, incomplete, or belongs to a different run."""


class SamplingError(GlideError, ValueError):
    """A sampling run produced non-finite values (corrupt weights or a precision overflow)."""
