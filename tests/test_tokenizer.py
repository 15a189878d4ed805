"""Tokenizers: exact ids of the official GLIDE and CLIP tokenizers, padding, truncation,
the trainable BPE, configs, and vocabulary-file checks."""

from __future__ import annotations

import gzip
import shutil
import warnings

import pytest
import torch

from glide.download import ChecksumError, OfflineError
from glide.tokenizer import (
    ClipTokenizer,
    GlideBPETokenizer,
    TrainedBPETokenizer,
    get_clip_tokenizer,
    get_glide_tokenizer,
    tokenizer_from_config,
    train_tokenizer,
)

from .helpers import load_json

CAPTIONS = [
    "a red fox jumping over a lazy dog",
    "An oil painting of a corgi wearing a party hat",
    "a bowl of fruit on a wooden table",
    "a photo of an astronaut riding a horse",
    "a lighthouse by the sea at sunset",
] * 20


@pytest.fixture(scope="module")
def glide_fixture():
    return load_json("tokenizer_glide.json")


@pytest.fixture(scope="module")
def clip_fixture():
    return load_json("tokenizer_clip.json")


def _ids(entries):
    return [e["prompt"][:24] for e in entries]


# ----------------------------------------------------------------------------- GLIDE BPE


def test_glide_tokenizer_matches_reference_ids_and_padding(glide_fixture, vocab_dir):
    tok = get_glide_tokenizer()
    assert tok.n_vocab == glide_fixture["n_vocab"] == 50257
    assert tok.pad_id == tok.end_token == glide_fixture["pad_token"] == 50256
    assert len(glide_fixture["entries"]) >= 10
    for entry in glide_fixture["entries"]:
        prompt = bytes.fromhex(entry["prompt_utf8_hex"]).decode("utf-8")
        assert prompt == entry["prompt"]
        tokens = tok.encode(prompt)
        assert tokens == entry["raw_tokens"], prompt
        assert tok.decode(tokens) == entry["decoded_raw"], prompt
        assert set(entry["padded"]) == {str(n) for n in glide_fixture["text_ctx_values"]}
        for text_ctx, expected in entry["padded"].items():
            padded, mask = tok.padded_tokens_and_mask(tokens, int(text_ctx))
            assert padded == expected["tokens"], (prompt, text_ctx)
            assert mask == expected["mask"], (prompt, text_ctx)


def test_glide_batch_matches_reference_rows(glide_fixture, vocab_dir):
    tok = get_glide_tokenizer()
    prompts = [e["prompt"] for e in glide_fixture["entries"]]
    for text_ctx in glide_fixture["text_ctx_values"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokens, mask = tok.batch(prompts, text_ctx)
        assert tokens.dtype == torch.long and mask.dtype == torch.bool
        assert tokens.shape == mask.shape == (len(prompts), text_ctx)
        for row, entry in enumerate(glide_fixture["entries"]):
            assert tokens[row].tolist() == entry["padded"][str(text_ctx)]["tokens"]
            assert mask[row].tolist() == entry["padded"][str(text_ctx)]["mask"]


def test_glide_endoftext_literal_is_not_special(vocab_dir):
    tokens = get_glide_tokenizer().encode("<|endoftext|>")
    assert 50256 not in tokens and len(tokens) > 1


def test_glide_tokenizer_is_lowercased_and_has_no_start_or_end_token(vocab_dir):
    tok = get_glide_tokenizer()
    assert tok.encode("A CORGI") == tok.encode("a corgi")
    assert tok.encode("") == []


def test_batch_warns_once_with_the_number_of_dropped_tokens(vocab_dir):
    tok = get_glide_tokenizer()
    long_prompt = "a red fox " * 10  # 30 tokens
    n_tokens = len(tok.encode(long_prompt))
    with pytest.warns(UserWarning) as record:
        tokens, mask = tok.batch(["a corgi", long_prompt, long_prompt], 16)
    assert len(record) == 1
    message = str(record[0].message)
    assert "2 of 3" in message and f"{2 * (n_tokens - 16)} token(s) were dropped" in message
    assert record[0].filename == __file__  # points at the caller
    assert tokens[1].tolist() == tok.encode(long_prompt)[:16] and mask[1].all()


def test_batch_does_not_warn_when_everything_fits(vocab_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokens, mask = get_glide_tokenizer().batch("an oil painting of a corgi", 16)
    assert tokens.shape == (1, 16) and mask.sum() == 7


def test_official_tokenizers_are_loaded_once(vocab_dir):
    assert get_glide_tokenizer()._tok is get_glide_tokenizer()._tok
    assert get_clip_tokenizer()._tok is tokenizer_from_config({"kind": "clip-bpe"})._tok


# ----------------------------------------------------------------------------- CLIP BPE


def test_clip_tokenizer_matches_reference(clip_fixture, vocab_dir):
    tok = get_clip_tokenizer()
    assert tok.n_vocab == clip_fixture["vocab_size"] == 49408
    assert (tok.start_token, tok.end_token) == (clip_fixture["start_token"], clip_fixture["end_token"])
    assert tok.pad_id == clip_fixture["pad_token"] == 0
    for entry in clip_fixture["entries"]:
        assert tok.encode(entry["prompt"]) == entry["raw_tokens"], entry["prompt"]
        for text_ctx, expected in entry["padded"].items():
            padded, text_len = tok.padded_tokens_and_len(entry["raw_tokens"], int(text_ctx))
            assert padded == expected["tokens"] and text_len == expected["text_len"], entry["prompt"]


def test_clip_tokenize_batch_matches_reference(clip_fixture, vocab_dir):
    tok = get_clip_tokenizer()
    prompts = [e["prompt"] for e in clip_fixture["entries"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokens, lens = tok.tokenize(prompts, context_length=77)
    assert tokens.dtype == lens.dtype == torch.long and tokens.shape == (len(prompts), 77)
    for row, entry in enumerate(clip_fixture["entries"]):
        assert tokens[row].tolist() == entry["padded"]["77"]["tokens"], entry["prompt"]
        assert lens[row].item() == entry["padded"]["77"]["text_len"], entry["prompt"]


def test_clip_batch_mask_covers_start_to_end_and_warns_on_truncation(vocab_dir):
    tok = get_clip_tokenizer()
    with pytest.warns(UserWarning, match="token\\(s\\) were dropped"):
        tokens, mask = tok.batch(["a corgi", "a red fox " * 30], 77)
    assert mask[0].tolist() == [True] * 4 + [False] * 73
    assert tokens[1, 0] == 49406 and tokens[1, -1] == 49407 and mask[1].all()


def test_clip_decode_roundtrip(vocab_dir):
    tok = get_clip_tokenizer()
    assert tok.decode(tok.encode("An Oil Painting of a corgi")) == "an oil painting of a corgi "


# ----------------------------------------------------------------------------- trained BPE


def test_trained_tokenizer_pads_with_last_id_and_roundtrips_through_config():
    tok = train_tokenizer(CAPTIONS, vocab_size=320)
    assert isinstance(tok, TrainedBPETokenizer)
    assert 257 <= tok.n_vocab <= 320 and tok.pad_id == tok.n_vocab - 1
    ids = tok.encode("A Red Fox on a WOODEN table")
    assert ids == tok.encode("a red fox on a wooden table")
    assert tok.pad_id not in tok.encode("<|pad|> is plain text")
    assert tok.decode(ids) == "a red fox on a wooden table"
    assert max(tok.encode("unseen words: 東京 🚀")) < tok.pad_id  # every byte is in the vocabulary

    cfg = tok.to_config()
    assert cfg["kind"] == "bpe" and isinstance(cfg["json"], str)
    again = tokenizer_from_config(cfg)
    assert isinstance(again, TrainedBPETokenizer)
    assert (again.n_vocab, again.pad_id) == (tok.n_vocab, tok.pad_id)
    for caption in CAPTIONS[:5] + ["something new entirely"]:
        assert again.encode(caption) == tok.encode(caption)
    padded, mask = again.padded_tokens_and_mask(ids, 32)
    assert padded == ids + [tok.pad_id] * (32 - len(ids)) and mask == [True] * len(ids) + [False] * (32 - len(ids))


def test_trained_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="at least 257"):
        train_tokenizer(CAPTIONS, vocab_size=100)


# ----------------------------------------------------------------------------- configs and files


def test_official_configs_roundtrip(vocab_dir):
    assert isinstance(tokenizer_from_config({"kind": "glide-bpe"}), GlideBPETokenizer)
    assert isinstance(tokenizer_from_config({"kind": "clip-bpe"}), ClipTokenizer)
    assert get_glide_tokenizer().to_config() == {"kind": "glide-bpe"}
    assert get_clip_tokenizer().to_config() == {"kind": "clip-bpe"}
    with pytest.raises(ValueError, match="glide-bpe"):
        tokenizer_from_config({"kind": "nope"})


def test_plain_vocab_files_are_accepted(vocab_dir, tmp_path, monkeypatch):
    for name in ("encoder.json", "vocab.bpe"):
        (tmp_path / name).write_bytes(gzip.decompress((vocab_dir / f"{name}.gz").read_bytes()))
    monkeypatch.setenv("GLIDE_VOCAB_DIR", str(tmp_path))
    assert GlideBPETokenizer().encode("an oil painting of a corgi") == [272, 3056, 12036, 286, 257, 1162, 12397]


def test_corrupted_vocab_copy_fails_checksum(vocab_dir, tmp_path, monkeypatch):
    shutil.copy(vocab_dir / "encoder.json.gz", tmp_path / "encoder.json.gz")
    plain = gzip.decompress((vocab_dir / "vocab.bpe.gz").read_bytes())
    (tmp_path / "vocab.bpe").write_bytes(plain.replace(b"t h", b"h t", 1))
    monkeypatch.setenv("GLIDE_VOCAB_DIR", str(tmp_path))
    with pytest.raises(ChecksumError, match="vocab.bpe"):
        GlideBPETokenizer()


def test_corrupted_clip_vocab_fails_checksum(vocab_dir, tmp_path, monkeypatch):
    data = gzip.decompress((vocab_dir / "bpe_simple_vocab_16e6.txt.gz").read_bytes())
    (tmp_path / "bpe_simple_vocab_16e6.txt.gz").write_bytes(gzip.compress(data + b"extra\n"))
    monkeypatch.setenv("GLIDE_VOCAB_DIR", str(tmp_path))
    with pytest.raises(ChecksumError, match="bpe_simple_vocab_16e6"):
        ClipTokenizer()


def test_missing_vocab_offline_says_which_file_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIDE_VOCAB_DIR", str(tmp_path))  # empty folder
    monkeypatch.setenv("GLIDE_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        GlideBPETokenizer()
    message = str(info.value)
    assert "encoder.json" in message and "openaipublic.blob.core.windows.net" in message
    assert "GLIDE_VOCAB_DIR" in message and "GLIDE_OFFLINE" in message


def test_vocab_files_in_the_cache_are_used_offline(vocab_dir, tmp_path, monkeypatch):
    from glide.download import cache_dir

    monkeypatch.delenv("GLIDE_VOCAB_DIR")
    (cache_dir() / "vocab").mkdir(parents=True, exist_ok=True)
    for name in ("encoder.json", "vocab.bpe"):
        data = gzip.decompress((vocab_dir / f"{name}.gz").read_bytes())
        (cache_dir() / "vocab" / name).write_bytes(data)
    assert GlideBPETokenizer().encode("a corgi") == [64, 1162, 12397]


def test_byte_tokenizer_needs_no_vocabulary_and_pads_with_its_last_id():
    from glide.tokenizer import ByteTokenizer, tokenizer_from_config

    tok = tokenizer_from_config({"kind": "bytes"})
    assert isinstance(tok, ByteTokenizer) and tok.to_config() == {"kind": "bytes"}
    ids = tok.encode("Café")
    assert ids == list("café".encode()) and tok.decode(ids) == "café"
    tokens, mask = tok.batch(["ab", ""], 4)
    assert tokens.tolist() == [[97, 98, 256, 256], [256, 256, 256, 256]]
    assert mask.tolist() == [[True, True, False, False], [False] * 4]
    assert tok.pad_id == tok.n_vocab - 1  # the empty-prompt rule of classifier-free guidance
