"""The download cache: resumable, locked, checksummed, atomic downloads.

Shared by the tokenizers (vocabulary files) and the checkpoint registry (weights).

* ``cache_dir()`` is ``$GLIDE_CACHE``, else ``$XDG_CACHE_HOME/glide``, else ``~/.cache/glide``.
* ``download(url, dest)`` streams into ``dest.part``; an interrupted download resumes from there
  with an HTTP ``Range`` request (or restarts when the server ignores ranges). A
  ``filelock.FileLock`` on ``dest.lock`` keeps two processes from fetching the same file, the
  sha256 is checked before the file is moved into place with ``os.replace``, so ``dest`` is
  either absent or complete.
* ``GLIDE_OFFLINE=1`` turns every network access into an ``OfflineError`` that says which file
  was wanted and where to put it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from .errors import ChecksumError, DownloadError, OfflineError

__all__ = [
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "cache_dir",
    "download",
    "fetch_cached",
    "fetch_to",
    "is_offline",
    "sha256_file",
]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_USER_AGENT = "glide-downloader/1.0 (+python urllib)"


def is_offline() -> bool:
    """True when ``GLIDE_OFFLINE`` is set to a true-looking value (``1``, ``true``, ``yes``)."""
    return os.environ.get("GLIDE_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """The glide cache folder (created on demand).

    ``$GLIDE_CACHE`` if set, else ``$XDG_CACHE_HOME/glide``, else ``~/.cache/glide``.
    """
    root = os.environ.get("GLIDE_CACHE")
    if root:
        path = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        path = base / "glide"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (always fetches; see ``fetch_cached`` for the cached form).

    Resumes from ``dest.part`` when one is left by an interrupted run. On a network failure the
    partial file is kept (run again to resume) and a ``DownloadError`` naming the URL and the
    destination is raised; on a sha256 mismatch the partial file is deleted and a
    ``ChecksumError`` is raised. ``dest`` itself only ever appears complete and verified.
    """
    dest = Path(dest)
    _refuse_if_offline(url, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        return _download_locked(url, dest, sha256=sha256, progress=progress)


def fetch_cached(
    url: str,
    *,
    filename: str | None = None,
    sha256: str | None = None,
    subdir: str = "",
    progress: bool = True,
) -> Path:
    """Path of ``url``'s file in the cache, downloading it first if it is not there.

    The file lives at ``cache_dir() / subdir / filename`` (``filename`` defaults to the last
    component of the URL path); see ``fetch_to`` for the rest.
    """
    if filename is None:
        filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
        if not filename:
            raise ValueError(f"cannot derive a file name from {url!r}; pass filename=")
    return fetch_to(url, cache_dir() / subdir / filename, sha256=sha256, progress=progress)


def fetch_to(url: str, dest: str | os.PathLike, *, sha256: str | None = None, progress: bool = True) -> Path:
    """``dest``, downloading ``url`` into it first unless it is already there (and verified).

    With ``sha256``, an existing file is verified once (a ``<file>.sha256`` note records the
    verified size and mtime, so large checkpoints are not re-hashed on every load); a file that
    fails verification is fetched again. Two processes asking for the same ``dest`` download it
    once: the second waits on the lock, then finds the file. ``GLIDE_OFFLINE`` raises
    ``OfflineError`` naming the file instead of downloading.
    """
    dest = Path(dest)
    if _cached_ok(dest, sha256):
        return dest
    _refuse_if_offline(url, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        if _cached_ok(dest, sha256):  # another process finished it while we waited
            return dest
        _download_locked(url, dest, sha256=sha256, progress=progress)
    if sha256 is not None:
        _write_verified_note(dest, sha256)
    return dest


def _refuse_if_offline(url: str, dest: Path) -> None:
    if is_offline():
        raise OfflineError(
            f"GLIDE_OFFLINE is set, so {url} was not downloaded. Put the file at {dest} "
            f"(or unset GLIDE_OFFLINE to download it)."
        )


def _note_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _stat_key(dest: Path) -> str:
    st = dest.stat()
    return f"{st.st_size} {st.st_mtime_ns}"


def _write_verified_note(dest: Path, sha256: str) -> None:
    try:
        _note_path(dest).write_text(f"{sha256.lower()} {_stat_key(dest)}\n")
    except OSError:  # read-only cache: we simply verify again next time
        pass


def _cached_ok(dest: Path, sha256: str | None) -> bool:
    """True if ``dest`` exists and (when ``sha256`` is given) has that hash."""
    if not dest.is_file():
        return False
    if sha256 is None:
        return True
    note = _note_path(dest)
    try:
        if note.read_text().strip() == f"{sha256.lower()} {_stat_key(dest)}":
            return True
    except OSError:
        pass
    if sha256_file(dest) == sha256.lower():
        _write_verified_note(dest, sha256)
        return True
    return False


def _download_locked(url: str, dest: Path, *, sha256: str | None, progress: bool) -> Path:
    """Fetch ``url`` into ``dest.part`` (resuming it), verify, then move it to ``dest``."""
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file does not fit the remote one: restart
            part.unlink()
            offset = 0
            response = _open_or_raise(url, dest, 0)
        else:
            raise DownloadError(f"failed to download {url} to {dest}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"failed to download {url} to {dest}: {e}") from e

    with response:
        if offset and response.status != 206:  # server ignored the Range header: start over
            offset = 0
        elif offset and _range_start(response.headers.get("Content-Range")) != offset:
            part.unlink()
            raise DownloadError(
                f"failed to resume {url} to {dest}: the server answered a different range "
                f"({response.headers.get('Content-Range')!r}); the partial file was deleted, run again."
            )
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        mode = "ab" if offset else "wb"
        try:
            with (
                open(part, mode) as f,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise DownloadError(
                f"download of {url} to {dest} was interrupted: {e}. The partial file {part} "
                f"is kept; run again to resume."
            ) from e

    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(
            f"download of {url} to {dest} is incomplete ({size} of {total} bytes). The partial "
            f"file {part} is kept; run again to resume."
        )
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256.lower():
            part.unlink()
            raise ChecksumError(
                f"sha256 mismatch for {url}: expected {sha256.lower()}, got {actual}. The download "
                f"was deleted; {dest} was not written."
            )
    os.replace(part, dest)
    return dest


def _open(url: str, offset: int) -> http.client.HTTPResponse:
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)


def _range_start(content_range: str | None) -> int | None:
    """First byte of a ``Content-Range: bytes START-END/TOTAL`` header, or None."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    start = content_range[len("bytes ") :].split("-", 1)[0]
    return int(start) if start.strip().isdigit() else None


def _open_or_raise(url: str, dest: Path, offset: int) -> http.client.HTTPResponse:
    try:
        return _open(url, offset)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"failed to download {url} to {dest}: {e}") from e
