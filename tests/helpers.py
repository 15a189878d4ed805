"""Helpers shared by several test files: where the reference data lives, loaders for the
reference fixtures (the official code's tiny random models and their outputs), and a
seconds-long training configuration.

The official-code fixtures sit in ``../shared`` beside the repository (override with
``GLIDE_SHARED``). When they are missing, fixture tests skip locally but *fail* under CI
(``CI`` set), so a missing oracle is never mistaken for a passing one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from glide.checkpoints import read_checkpoint
from glide.compat import config_from_options
from glide.models import Text2ImUNet
from glide.models.clip import ClipConfig, NoisedClip
from glide.training import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GLIDE_SHARED", REPO_ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "glide_reference"
VOCAB = SHARED / "vocab"


def require(path: Path) -> Path:
    """``path`` if it exists; otherwise skip the test (fail it under CI)."""
    if not path.exists():
        msg = f"reference data not found at {path} (set GLIDE_SHARED to the shared/ folder)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    """Load one ``.pt`` fixture file (a flat dict of tensors) safely."""
    return torch.load(require(FIXTURES / name), map_location="cpu", weights_only=True)


def load_json(name: str):
    with open(require(FIXTURES / name)) as f:
        return json.load(f)


def _float_state(name: str) -> dict[str, torch.Tensor]:
    return {k: v.float().contiguous() for k, v in load_fixture(name).items()}


def load_fixture_model(variant: str) -> Text2ImUNet:
    """The reference's tiny random U-Net ``variant`` ("base", "upsample", "base_inpaint", ...)."""
    options = load_json(f"{variant}_options.json")["create_model_and_diffusion_kwargs"]
    model = Text2ImUNet(config_from_options(options))
    model.load_state_dict(_float_state(f"{variant}_state_dict.pt"), strict=True)
    return model.eval()


def load_fixture_clip() -> NoisedClip:
    """The reference's tiny random noised CLIP (image and text encoders)."""
    clip = NoisedClip(ClipConfig.from_dict(load_json("clip_config.json")["config_yaml_keys"]))
    clip.image_encoder.load_state_dict(_float_state("clip_image_enc_state_dict.pt"), strict=True)
    clip.text_encoder.load_state_dict(_float_state("clip_text_enc_state_dict.pt"), strict=True)
    return clip.eval()


def tiny(out: Path, **overrides) -> TrainConfig:
    """A seconds-long run: tiny U-Net at 16 px, 4 shapes images, a 300-token BPE trained on the captions."""
    options = dict(
        out=str(out), stage="base", model="tiny-base", image_size=16, model_overrides={"text_ctx": 24},
        tokenizer="train:300", data="shapes:4", batch_size=4, steps=4, lr=1e-3, num_workers=0, log_every=1,
        save_every=0, sample_every=0, ema=(0.9, 0.99), progress=False, tensorboard=False,
    )
    options.update(overrides)
    return TrainConfig(**options)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differing, f"{len(differing)} of {len(a)} tensors differ, worst {max(differing.values()):.3g}"


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -------------------------------------------------------------------------------------- CLI
@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest on one thread (and the test machine's cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args: str):
    """``glide ARGS`` in-process (click's CliRunner): the result has exit_code, output, stdout."""
    from click.testing import CliRunner

    from glide.cli import cli

    return CliRunner().invoke(cli, list(args))


def assert_clean_error(result, *fragments: str) -> None:
    """Exit status != 0, an ``Error:`` line with every fragment, no traceback."""
    assert result.exit_code != 0, result.output
    assert "Error:" in result.output, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    for fragment in fragments:
        assert fragment in result.output, result.output


def png_pixels(path) -> np.ndarray:
    """A PNG's pixels as uint8 [H, W, 3]."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def torchrun_glide(*args: str, nproc: int = 2, timeout: int = 300):
    """``torchrun --standalone --nproc_per_node NPROC -m glide ARGS`` (one thread per process): the
    CompletedProcess. Skips where torch has no torch.distributed (fails in CI, where it must)."""
    import importlib.util
    import os
    import subprocess
    import sys

    import pytest
    import torch

    if importlib.util.find_spec("torch.distributed.run") is None or not torch.distributed.is_available():
        message = "torch.distributed.run is not available in this torch build"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "glide", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
