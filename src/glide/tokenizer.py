"""Text -> token ids + mask: the official GLIDE and CLIP tokenizers, and a trainable one.

Three tokenizers share one interface (see docs/design.md)::

    tok.encode(text) -> list[int]
    tok.padded_tokens_and_mask(tokens, text_ctx) -> (list[int], list[bool])
    tok.batch(texts, text_ctx) -> (LongTensor [B, text_ctx], BoolTensor [B, text_ctx])
    tok.n_vocab, tok.pad_id, tok.to_config(), tokenizer_from_config(cfg)

* ``GlideBPETokenizer`` ({"kind": "glide-bpe"}): GLIDE's text tokenizer, GPT-2 byte-level BPE
  with the 50257-entry vocabulary. Text is lower-cased and split with the GPT-2 pattern; no
  start/end token; padding with 50256 (``<|endoftext|>``, = n_vocab - 1), which the literal
  text ``<|endoftext|>`` never produces.
* ``ClipTokenizer`` ({"kind": "clip-bpe"}): CLIP's SimpleTokenizer (49408 ids) used by the
  noised CLIP text encoder: start 49406, end 49407, zeros after.
* ``ByteTokenizer`` ({"kind": "bytes"}): UTF-8 bytes, no vocabulary file (tiny/offline models).
* ``TrainedBPETokenizer`` ({"kind": "bpe", "json": ...}): a byte-level BPE trained on captions
  with ``train_tokenizer`` for new models; its pad token is the last id, like GLIDE's.

The BPE merging itself is done by Hugging Face ``tokenizers``; the official tokenizers keep the
reference's own pre-split (the ``regex`` module with the reference patterns, Python's
``str.lower``) so ids match the official code exactly.

The official vocabulary files and the BPE tables read from them are in ``glide.vocab``.
"""

from __future__ import annotations

import html
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import regex
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from glide.vocab import (
    CLIP_MERGES,
    GPT2_ENCODER,
    GPT2_MERGES,
    VocabFile,
    file_key,
    load_clip_bpe,
    load_glide_bpe,
    unicode_to_bytes,
    vocab_path,
)

__all__ = [
    "CLIP_MERGES",
    "GPT2_ENCODER",
    "GPT2_MERGES",
    "BaseTokenizer",
    "ClipTokenizer",
    "GlideBPETokenizer",
    "TrainedBPETokenizer",
    "VocabFile",
    "get_clip_tokenizer",
    "get_glide_tokenizer",
    "tokenizer_from_config",
    "train_tokenizer",
    "vocab_path",
]


def _encode_pieces(tok: Tokenizer, pieces: list[str]) -> list[int]:
    if not pieces:
        return []
    return tok.encode(pieces, is_pretokenized=True, add_special_tokens=False).ids


# --------------------------------------------------------------------------- common interface


class BaseTokenizer:
    """Shared padding/batching logic. Subclasses define ``encode``, ``n_vocab``, ``pad_id``."""

    n_vocab: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, tokens: Sequence[int]) -> str:
        raise NotImplementedError

    def to_config(self) -> dict:
        raise NotImplementedError

    def capacity(self, text_ctx: int) -> int:
        """How many ids of ``encode(text)`` fit in a sequence of ``text_ctx`` positions."""
        return text_ctx

    def padded_tokens_and_mask(self, tokens: Sequence[int], text_ctx: int) -> tuple[list[int], list[bool]]:
        """Keep the first ``text_ctx`` ids and pad with ``pad_id``; mask is True for kept ids."""
        kept = list(tokens[:text_ctx])
        padding = text_ctx - len(kept)
        return kept + [self.pad_id] * padding, [True] * len(kept) + [False] * padding

    def batch(self, texts: str | Sequence[str], text_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize prompts to ``tokens`` int64 ``[B, text_ctx]`` and ``mask`` bool ``[B, text_ctx]``.

        Prompts longer than the context are truncated, with one warning per call that says how
        many tokens were dropped.
        """
        return self._batch(texts, text_ctx, stacklevel=3)

    def tokenize(self, texts: str | Sequence[str], context_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` int64 ``[B, context_length]`` and ``lens`` int64 ``[B]`` (the noised CLIP's
        text input: it reads the token at ``lens - 1``; CLIP's BPE counts its start and end tokens)."""
        tokens, mask = self._batch(texts, context_length, stacklevel=3)
        return tokens, mask.sum(dim=1)

    def _batch(self, texts: str | Sequence[str], text_ctx: int, stacklevel: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if text_ctx < 1:
            raise ValueError(f"text_ctx must be positive, got {text_ctx}")
        rows, masks, dropped = [], [], {}
        for i, text in enumerate(texts):
            ids = self.encode(text)
            extra = len(ids) - self.capacity(text_ctx)
            if extra > 0:
                dropped[i] = extra
            padded, mask = self.padded_tokens_and_mask(ids, text_ctx)
            rows.append(padded)
            masks.append(mask)
        if dropped:
            _warn_truncated(dropped, len(texts), text_ctx, stacklevel=stacklevel + 1)
        tokens = torch.tensor(rows, dtype=torch.long).reshape(len(rows), text_ctx)
        return tokens, torch.tensor(masks, dtype=torch.bool).reshape(len(rows), text_ctx)


def _warn_truncated(dropped: dict[int, int], n_texts: int, text_ctx: int, stacklevel: int) -> None:
    detail = ", ".join(f"prompt {i}: {n}" for i, n in list(dropped.items())[:8])
    if len(dropped) > 8:
        detail += ", ..."
    warnings.warn(
        f"{len(dropped)} of {n_texts} prompt(s) do not fit text_ctx={text_ctx}; "
        f"{sum(dropped.values())} token(s) were dropped ({detail}).",
        UserWarning,
        stacklevel=stacklevel,
    )


# --------------------------------------------------------------------------- GLIDE (GPT-2) BPE

_GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")



class GlideBPETokenizer(BaseTokenizer):
    """GLIDE's tokenizer: GPT-2 byte-level BPE, 50257 ids, lower-cased, pads with 50256.

    Same names as the official ``model.tokenizer``: ``encode``, ``decode``,
    ``padded_tokens_and_mask``, ``n_vocab``, ``end_token``.
    """

    def __init__(self, encoder_path: str | os.PathLike | None = None, merges_path: str | os.PathLike | None = None):
        encoder_path = Path(encoder_path) if encoder_path else vocab_path(GPT2_ENCODER)
        merges_path = Path(merges_path) if merges_path else vocab_path(GPT2_MERGES)
        self._tok = load_glide_bpe(file_key(encoder_path), file_key(merges_path))
        self.n_vocab = self._tok.get_vocab_size()
        self.pad_id = self.n_vocab - 1

    @property
    def end_token(self) -> int:
        """The official name of the padding id (``<|endoftext|>`` = 50256)."""
        return self.pad_id

    def encode(self, text: str) -> list[int]:
        return _encode_pieces(self._tok, _GPT2_PATTERN.findall(text.lower()))

    def decode(self, tokens: Sequence[int]) -> str:
        return self._tok.decode(list(tokens), skip_special_tokens=False)

    def to_config(self) -> dict:
        return {"kind": "glide-bpe"}


# --------------------------------------------------------------------------- CLIP BPE

_CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")


class ClipTokenizer(BaseTokenizer):
    """CLIP's SimpleTokenizer (49408 ids), as used by GLIDE's noised CLIP text encoder.

    Text is repaired with ftfy, HTML-unescaped twice, whitespace-collapsed, stripped and
    lower-cased. ``encode`` gives the bare BPE ids; ``padded_tokens_and_mask`` / ``batch`` /
    ``tokenize`` wrap them as ``[start, ids[:text_ctx-2], end, 0, ...]``. ``pad_id`` is 0
    (CLIP pads with zeros; the model reads the end token at ``lens - 1``).
    """

    start_token = 49406
    end_token = 49407

    def __init__(self, merges_path: str | os.PathLike | None = None):
        merges_path = Path(merges_path) if merges_path else vocab_path(CLIP_MERGES)
        self._tok, self._encoder = load_clip_bpe(file_key(merges_path))
        self.n_vocab = len(self._encoder)
        self.pad_id = 0
        self._specials = {t: self._encoder[t] for t in ("<|startoftext|>", "<|endoftext|>")}

    @staticmethod
    def clean(text: str) -> str:
        """CLIP's text clean-up: ftfy, HTML unescape twice, whitespace collapsed, lower-cased."""
        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return _WHITESPACE.sub(" ", text).strip().lower()

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        run: list[str] = []
        for piece in _CLIP_PATTERN.findall(self.clean(text)):
            special = self._specials.get(piece)
            if special is None:
                run.append(piece)
                continue
            ids += _encode_pieces(self._tok, run)  # the literal special strings map to their ids
            ids.append(special)
            run = []
        return ids + _encode_pieces(self._tok, run)

    def decode(self, tokens: Sequence[int]) -> str:
        text = "".join(self._tok.id_to_token(int(t)) for t in tokens)
        data = bytes(unicode_to_bytes()[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")

    def to_config(self) -> dict:
        return {"kind": "clip-bpe"}

    def capacity(self, text_ctx: int) -> int:
        return text_ctx - 2

    def padded_tokens_and_len(self, tokens: Sequence[int], text_ctx: int) -> tuple[list[int], int]:
        """``[start, tokens[:text_ctx-2], end]`` padded with zeros, and its length (official name)."""
        if text_ctx < 2:
            raise ValueError(f"CLIP text_ctx must be at least 2, got {text_ctx}")
        ids = [self.start_token, *tokens[: text_ctx - 2], self.end_token]
        return ids + [0] * (text_ctx - len(ids)), len(ids)

    def padded_tokens_and_mask(self, tokens: Sequence[int], text_ctx: int) -> tuple[list[int], list[bool]]:
        padded, length = self.padded_tokens_and_len(tokens, text_ctx)
        return padded, [True] * length + [False] * (text_ctx - length)



# --------------------------------------------------------------------------- trainable BPE

PAD_TOKEN = "<|pad|>"


class TrainedBPETokenizer(BaseTokenizer):
    """A byte-level BPE trained on captions for new models (see ``train_tokenizer``).

    Lower-cased, GPT-2 pre-split, no start/end token; the pad token is the last id
    (``pad_id = n_vocab - 1``) and, like GLIDE's, is never produced from text. Stored inside a
    model config as ``{"kind": "bpe", "json": <HF tokenizer JSON>}``.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self.n_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        self.pad_id = self.n_vocab - 1

    @classmethod
    def from_json(cls, text: str) -> TrainedBPETokenizer:
        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self._tok.to_str()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: Sequence[int]) -> str:
        return self._tok.decode([int(t) for t in tokens if int(t) != self.pad_id])

    def to_config(self) -> dict:
        return {"kind": "bpe", "json": self.to_json()}


class ByteTokenizer(BaseTokenizer):
    """UTF-8 bytes of the lower-cased text (ids 0-255) and a pad id 256: no vocabulary file at all.

    For small models trained from scratch and for offline demos; ``{"kind": "bytes"}``.
    """

    n_vocab = 257
    pad_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.lower().encode("utf-8"))

    def decode(self, tokens: Sequence[int]) -> str:
        return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")

    def to_config(self) -> dict:
        return {"kind": "bytes"}


def train_tokenizer(captions: Iterable[str], vocab_size: int = 16384, *, min_frequency: int = 2) -> TrainedBPETokenizer:
    """Train a lower-cased byte-level BPE on ``captions``; ``vocab_size`` counts the pad token.

    Every byte is in the vocabulary, so any text encodes. A small corpus may yield fewer than
    ``vocab_size`` ids (no more merges to learn); ``n_vocab`` is the real size.
    """
    if vocab_size < 257:
        raise ValueError(f"vocab_size must be at least 257 (256 bytes + pad), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer=trainer)
    # Put the pad token in the model's own vocabulary (not as an "added token"), as the last id,
    # so the literal text "<|pad|>" is split like any other text.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise RuntimeError("trained BPE vocabulary ids are not contiguous")
    vocab[PAD_TOKEN] = len(vocab)
    return TrainedBPETokenizer(Tokenizer.from_str(json.dumps(spec)))


# --------------------------------------------------------------------------- registry


def get_glide_tokenizer() -> GlideBPETokenizer:
    """The official GLIDE tokenizer (vocabulary parsed once per file version, then cached)."""
    return GlideBPETokenizer()


def get_clip_tokenizer() -> ClipTokenizer:
    """The official CLIP tokenizer (vocabulary parsed once per file version, then cached)."""
    return ClipTokenizer()


def tokenizer_from_config(cfg: dict) -> BaseTokenizer:
    """Rebuild a tokenizer from ``to_config()``: kinds "glide-bpe", "clip-bpe", "bpe"."""
    kind = cfg.get("kind") if isinstance(cfg, dict) else None
    if kind == "glide-bpe":
        return get_glide_tokenizer()
    if kind == "clip-bpe":
        return get_clip_tokenizer()
    if kind == "bpe":
        if not isinstance(cfg.get("json"), str):
            raise ValueError('a "bpe" tokenizer config needs the tokenizer JSON string under "json"')
        return TrainedBPETokenizer.from_json(cfg["json"])
    if kind == "bytes":
        return ByteTokenizer()
    raise ValueError(
        f'unknown tokenizer config {cfg!r}: "kind" must be one of "glide-bpe", "clip-bpe", "bpe", "bytes"'
    )
