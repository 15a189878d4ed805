"""The official BPE vocabularies: where the files come from, their checksums, and the BPE
tables built from them (GPT-2's for GLIDE, CLIP's), cached per file version.

Vocabulary files come from ``$GLIDE_VOCAB_DIR`` (plain or ``.gz`` copies) when set, else from
the download cache (``glide.download.cache_dir() / "vocab"``), downloaded from their official
URLs when missing. Their content is always checked against the official sha256.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from glide.download import ChecksumError, OfflineError, cache_dir, fetch_cached


@dataclass(frozen=True)
class VocabFile:
    """An official vocabulary file: where it is published and what its content hashes to."""

    name: str  # file name as published
    url: str
    sha256: str  # of the published file
    content_sha256: str  # of the (gunzipped) content; equals sha256 for plain files

    def local_names(self) -> tuple[str, ...]:
        """Names accepted in ``$GLIDE_VOCAB_DIR``: the published one first, then plain/.gz."""
        other = self.name[: -len(".gz")] if self.name.endswith(".gz") else self.name + ".gz"
        return (self.name, other)


GPT2_ENCODER = VocabFile(
    name="encoder.json",
    url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    content_sha256="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
)
GPT2_MERGES = VocabFile(
    name="vocab.bpe",
    url="https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    content_sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
)
CLIP_MERGES = VocabFile(
    name="bpe_simple_vocab_16e6.txt.gz",
    url="https://raw.githubusercontent.com/openai/CLIP/main/clip/bpe_simple_vocab_16e6.txt.gz",
    sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
    content_sha256="67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8",
)


def vocab_path(spec: VocabFile) -> Path:
    """Local path of an official vocabulary file, downloading it into the cache if needed.

    Looks in ``$GLIDE_VOCAB_DIR`` first (plain or ``.gz``), then in ``cache_dir()/vocab``.
    """
    env = os.environ.get("GLIDE_VOCAB_DIR")
    if env:
        for name in spec.local_names():
            path = Path(env).expanduser() / name
            if path.is_file():
                return path
    try:
        return fetch_cached(spec.url, filename=spec.name, sha256=spec.sha256, subdir="vocab")
    except OfflineError as e:
        cached = cache_dir() / "vocab" / spec.name
        raise OfflineError(
            f"tokenizer vocabulary file {spec.name!r} is missing and GLIDE_OFFLINE is set "
            f"(GLIDE_VOCAB_DIR={env or '<not set>'}). It is published at {spec.url}. Fix: set "
            f"GLIDE_VOCAB_DIR to a folder holding it (plain or .gz), put it at {cached}, or "
            f"unset GLIDE_OFFLINE to download it."
        ) from e


def read_vocab(path: Path, spec: VocabFile) -> bytes:
    """The (gunzipped) content of a vocabulary file, checked against the official sha256."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.content_sha256:
        raise ChecksumError(
            f"vocabulary file {path} is not the official {spec.name} ({spec.url}): sha256 of its "
            f"content is {actual}, expected {spec.content_sha256}. Replace or delete it."
        )
    return data


def file_key(path: Path) -> tuple[str, int, int]:
    """Cache key of a file version: path, size and mtime."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (also CLIP's), in its own order.

    Printable latin-1 bytes map to themselves; the other 68 bytes, in increasing order, map to
    chr(256), chr(257), ... The insertion order matters: CLIP's vocabulary lists these chars.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(printable))
    return table


@functools.lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def pretokenized_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], **bpe_kwargs) -> Tokenizer:
    """A HF tokenizer that maps bytes to characters and runs BPE on already split pieces."""
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False, **bpe_kwargs))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@functools.lru_cache(maxsize=4)
def load_glide_bpe(encoder_key: tuple, merges_key: tuple) -> Tokenizer:
    encoder = json.loads(read_vocab(Path(encoder_key[0]), GPT2_ENCODER))
    lines = read_vocab(Path(merges_key[0]), GPT2_MERGES).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1:-1]]  # first line is "#version: 0.2"
    return pretokenized_bpe(encoder, merges)


@functools.lru_cache(maxsize=4)
def load_clip_bpe(merges_key: tuple) -> tuple[Tokenizer, dict[str, int]]:
    lines = read_vocab(Path(merges_key[0]), CLIP_MERGES).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(bytes_to_unicode().values())
    vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {token: i for i, token in enumerate(vocab)}
    return pretokenized_bpe(encoder, merges, end_of_word_suffix="</w>"), encoder
