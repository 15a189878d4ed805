"""The download cache: fresh, resumed and restarted downloads, checksums, offline mode.

A local ``http.server`` on 127.0.0.1 (in a thread) serves the files; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from pathlib import Path

import pytest

from glide import download as dl

PAYLOAD = bytes(range(256)) * 1000  # 256 kB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files[path]``; honours ``Range`` when ``server.ranges`` is on."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append(dict(self.headers))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        range_header = self.headers.get("Range")
        if self.server.ranges and range_header and range_header.startswith("bytes="):
            start = int(range_header[len("bytes=") :].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cut_after is not None:  # simulate a dropped connection
            self.wfile.write(body[: self.server.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files = {"/file.bin": PAYLOAD}
    httpd.ranges = True
    httpd.cut_after = None
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("GLIDE_OFFLINE", raising=False)


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def test_cache_dir_prefers_glide_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("GLIDE_CACHE", str(tmp_path / "a"))
    assert dl.cache_dir() == tmp_path / "a" and (tmp_path / "a").is_dir()
    monkeypatch.delenv("GLIDE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dl.cache_dir() == tmp_path / "xdg" / "glide"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dl.cache_dir() == tmp_path / "home" / ".cache" / "glide"


def test_fresh_download_verifies_and_moves_into_place(server, online, tmp_path):
    dest = tmp_path / "sub" / "file.bin"
    assert dl.download(server.url, dest, sha256=PAYLOAD_SHA, progress=False) == dest
    assert dest.read_bytes() == PAYLOAD
    assert not _part(dest).exists()
    assert "Range" not in server.requests[-1]


def test_resume_from_partial_file_uses_range(server, online, tmp_path):
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(PAYLOAD[:1000])
    dl.download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests[-1]["Range"] == "bytes=1000-"
    assert dest.read_bytes() == PAYLOAD


def test_restart_when_server_ignores_range(server, online, tmp_path):
    server.ranges = False
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(b"garbage that must not stay in front")
    dl.download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_restart_when_partial_is_longer_than_remote(server, online, tmp_path):
    dest = tmp_path / "file.bin"
    _part(dest).write_bytes(PAYLOAD + b"extra")  # server answers 416
    dl.download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_partial_then_resumes(server, online, tmp_path):
    dest = tmp_path / "file.bin"
    server.cut_after = 5000
    with pytest.raises(dl.DownloadError, match="resume") as info:
        dl.download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.url in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()
    assert _part(dest).read_bytes() == PAYLOAD[:5000]
    server.cut_after = None
    dl.download(server.url, dest, sha256=PAYLOAD_SHA, progress=False)
    assert server.requests[-1]["Range"] == "bytes=5000-"
    assert dest.read_bytes() == PAYLOAD


def test_sha256_mismatch_deletes_partial_and_leaves_no_file(server, online, tmp_path):
    dest = tmp_path / "file.bin"
    with pytest.raises(dl.ChecksumError, match="sha256 mismatch"):
        dl.download(server.url, dest, sha256="0" * 64, progress=False)
    assert not dest.exists()
    assert not _part(dest).exists()


def test_http_error_names_url_and_destination(server, online, tmp_path):
    dest = tmp_path / "missing.bin"
    url = server.url.replace("file.bin", "missing.bin")
    with pytest.raises(dl.DownloadError, match="HTTP 404") as info:
        dl.download(url, dest, progress=False)
    assert url in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()


def test_unreachable_server_raises_download_error(online, tmp_path):
    with pytest.raises(dl.DownloadError, match="failed to download"):
        dl.download("http://127.0.0.1:9/nothing", tmp_path / "x", progress=False)


def test_offline_refuses_and_says_where_to_put_the_file(server, monkeypatch, tmp_path):
    monkeypatch.setenv("GLIDE_OFFLINE", "1")
    dest = tmp_path / "file.bin"
    with pytest.raises(dl.OfflineError) as info:
        dl.download(server.url, dest, progress=False)
    assert server.url in str(info.value) and str(dest) in str(info.value)
    assert server.requests == []
    with pytest.raises(dl.OfflineError, match="file.bin"):
        dl.fetch_cached(server.url, sha256=PAYLOAD_SHA)


def test_fetch_cached_downloads_once(server, online):
    path = dl.fetch_cached(server.url, sha256=PAYLOAD_SHA, subdir="things", progress=False)
    assert path == dl.cache_dir() / "things" / "file.bin"
    assert path.read_bytes() == PAYLOAD
    n = len(server.requests)
    assert dl.fetch_cached(server.url, sha256=PAYLOAD_SHA, subdir="things", progress=False) == path
    assert len(server.requests) == n


def test_fetch_cached_works_offline_once_cached(server, online, monkeypatch):
    path = dl.fetch_cached(server.url, filename="named.bin", sha256=PAYLOAD_SHA, progress=False)
    assert path.name == "named.bin"
    monkeypatch.setenv("GLIDE_OFFLINE", "1")
    assert dl.fetch_cached(server.url, filename="named.bin", sha256=PAYLOAD_SHA) == path


def test_fetch_cached_replaces_a_corrupted_cached_file(server, online):
    path = dl.fetch_cached(server.url, sha256=PAYLOAD_SHA, progress=False)
    path.write_bytes(b"corrupted")
    os.utime(path, ns=(1, 1))  # a changed file is re-verified even if the size matched
    assert dl.fetch_cached(server.url, sha256=PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD


def test_concurrent_fetches_download_once(server, online):
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(dl.fetch_cached(server.url, progress=False))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(p.read_bytes() == PAYLOAD for p in results)
    assert len(server.requests) == 1
