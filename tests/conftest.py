"""Shared test helpers: where the reference fixtures and vocabularies live.

The official-code fixtures sit in ``../shared`` beside the repository (override with
``GLIDE_SHARED``). When they are missing, fixture tests skip locally but *fail* under CI
(``CI`` set), so a missing oracle is never mistaken for a passing one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLIDE_SHARED", REPO_ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "glide_reference"
VOCAB = SHARED / "vocab"

# Tests run tiny models, where one thread is several times faster than two (thread hand-off
# costs more than the work); multi-process tests (torchrun) set their own.
torch.set_num_threads(1)


def _require(path: Path) -> Path:
    if not path.exists():
        msg = f"reference data not found at {path} (set GLIDE_SHARED to the shared/ folder)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _require(FIXTURES)


@pytest.fixture(scope="session")
def vocab_dir() -> Path:
    return _require(VOCAB)


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


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    """Load one ``.pt`` fixture file (a flat dict of tensors) safely."""
    return torch.load(_require(FIXTURES / name), map_location="cpu", weights_only=True)


def load_json(name: str):
    with open(_require(FIXTURES / name)) as f:
        return json.load(f)
