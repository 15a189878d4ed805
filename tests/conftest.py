"""Test fixtures and session set-up; shared helper functions live in ``helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import FIXTURES, VOCAB, require

# Tests run tiny models, where one thread is several times faster than two (thread hand-off
# costs more than the work); multi-process tests (torchrun) set their own.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return require(FIXTURES)


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    return require(VOCAB)


@pytest.fixture(autouse=True)
def _vocab_cache(monkeypatch, tmp_path_factory):
    """Point the download cache at a temp dir and let vocabularies come from shared/vocab.

    Tests never touch the network: GLIDE_VOCAB_DIR makes the tokenizer read the official
    vocabulary files from shared/vocab (checksums still verified).
    """
    monkeypatch.setenv("GLIDE_CACHE", str(tmp_path_factory.mktemp("glide_cache")))
    if VOCAB.exists():
        monkeypatch.setenv("GLIDE_VOCAB_DIR", str(VOCAB))
    monkeypatch.setenv("GLIDE_OFFLINE", "1")
