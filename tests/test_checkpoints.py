"""Checkpoints: config-in-file round trips, name/path/folder resolution, safe loading, clear errors.

Everything uses tiny models and files in temp folders; the one download test talks to an
``http.server`` on 127.0.0.1. Official-size models are only ever built on the meta device.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import math
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from glide import checkpoints as ck
from glide.checkpoints import CheckpointError, files
from glide.checkpoints.fit import guess_config, meta_model
from glide.download import OfflineError
from glide.models import build_preset, preset_config
from glide.models.classifier import ClassifierConfig, NoisyClassifier
from glide.models.clip import CLIP_CHANNEL_MEANS, CLIP_CHANNEL_STDS, ClipConfig, NoisedClip

from .helpers import FIXTURES, load_fixture, load_json


# --------------------------------------------------------------------------------------------
# Tiny models and inputs
# --------------------------------------------------------------------------------------------
def _tiny_clip_config(**overrides) -> ClipConfig:
    d = dict(diffusion_steps=10, image_size=16, patch_size=8, n_vocab=64, max_text_len=12, n_embd=8,
             n_head_state_text=4, n_head_text=2, n_xf_blocks_text=1, n_head_state_image=4, n_head_image=2,
             n_xf_blocks_image=1, logit_scale=50.0)
    return ClipConfig(**{**d, **overrides})


def _tiny_classifier() -> NoisyClassifier:
    config = ClassifierConfig(num_classes=3, image_size=16, num_channels=32, num_res_blocks=1,
                              channel_mult=(1, 2), attention_resolutions=(8,), num_head_channels=16)
    return NoisyClassifier(config).eval()


@pytest.fixture(scope="module")
def tiny_base():
    torch.manual_seed(0)
    return build_preset("tiny-base").eval()


@pytest.fixture(scope="module")
def tiny_base_out(tiny_base) -> torch.Tensor:
    return _text2im_out(tiny_base)


def _assert_same_weights(loaded, model) -> None:
    """Exactly the weights of ``model`` (then the outputs agree too: see the round-trip tests)."""
    expected = model.state_dict()
    actual = loaded.state_dict()
    assert actual.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(actual[k], v.to(actual[k].dtype)), k


def _text2im_out(model, seed: int = 0) -> torch.Tensor:
    """One forward pass; 16 px inputs (the U-Net is convolutional) keep it fast."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 16, 16, generator=g)
    tokens = torch.randint(0, model.config.n_vocab, (2, model.config.text_ctx), generator=g)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        return model(x, torch.tensor([10, 900]), tokens, mask).float()


def _clip_out(model: NoisedClip) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    s = model.config.image_size
    x = torch.rand(2, 3, s, s, generator=g) * 2 - 1
    tokens = torch.randint(0, model.config.n_vocab, (2, 6), generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([0, 7]), tokens, torch.tensor([6, 3]))


def _official_pt(cache: Path, name: str, state: dict) -> Path:
    """Place ``state`` where ``glide download NAME`` would have put the official file."""
    path = ck.official_path(name, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "ckpts"


@pytest.fixture
def tiny_official_base(monkeypatch):
    """Pretend the official 'base' is the tiny-base preset (the registry maps names to presets)."""
    entry = dataclasses.replace(ck.OFFICIAL_CHECKPOINTS["base"], preset="tiny-base")
    monkeypatch.setitem(ck.OFFICIAL_CHECKPOINTS, "base", entry)


# --------------------------------------------------------------------------------------------
# Round trips: every checkpoint carries its config
# --------------------------------------------------------------------------------------------
def test_text2im_round_trip_identical_outputs_and_config_in_metadata(tmp_path, tiny_base, tiny_base_out):
    path = ck.save_model(tiny_base, tmp_path / "m.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    stored = json.loads(meta[ck.CONFIG_KEY])
    assert stored["model_type"] == "text2im"
    assert stored == {**tiny_base.config.to_dict(), "model_type": "text2im"}
    assert ck.checkpoint_config(path) == stored

    loaded = ck.load_model(path)
    assert not loaded.training
    assert loaded.config == tiny_base.config
    assert torch.equal(_text2im_out(loaded), tiny_base_out)


def test_clip_round_trip_restores_non_persistent_buffers(tmp_path):
    torch.manual_seed(1)
    clip = NoisedClip(_tiny_clip_config()).eval()
    path = ck.save_model(clip, tmp_path / "clip.safetensors")
    assert "logit_scale" not in ck.read_checkpoint(path)[0]  # derived from the config, not stored

    loaded = ck.load_model(path)
    assert isinstance(loaded, NoisedClip)
    assert loaded.logit_scale.dtype == torch.float32
    assert loaded.logit_scale.item() == torch.tensor(math.log(50.0)).item()
    embedding = loaded.image_encoder.blocks["input"]
    assert torch.equal(embedding.channel_means.flatten(), torch.tensor(CLIP_CHANNEL_MEANS))
    assert torch.equal(embedding.channel_stds.flatten(), torch.tensor(CLIP_CHANNEL_STDS))
    assert torch.equal(_clip_out(loaded), _clip_out(clip))


def test_clip_image_encoder_alone_gets_its_pixel_statistics(tmp_path):
    clip = NoisedClip(_tiny_clip_config()).eval()
    path = ck.save_model(clip.image_encoder, tmp_path / "image.safetensors")
    loaded = ck.load_model(path)
    assert type(loaded).__name__ == "ClipImageEncoder"
    assert torch.equal(loaded.blocks["input"].channel_stds.flatten(), torch.tensor(CLIP_CHANNEL_STDS))
    x, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), clip.image_encoder(x, t))


def test_classifier_round_trip(tmp_path):
    torch.manual_seed(2)
    model = _tiny_classifier()
    path = ck.save_model(model, tmp_path / "classifier.safetensors")
    loaded = ck.load_model(path)
    assert isinstance(loaded, NoisyClassifier) and loaded.config == model.config
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 600])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))


def test_load_model_dtype_and_device(tmp_path, tiny_base, tiny_base_out):
    path = ck.save_model(tiny_base, tmp_path / "m.safetensors")
    half = ck.load_model(path, dtype=torch.bfloat16, device="cpu")
    assert half.dtype == torch.bfloat16
    assert half.out[0].weight.dtype == torch.float32  # norms stay float32 (convert_to_half)
    assert half.token_embedding.weight.dtype == torch.bfloat16
    assert half.positional_embedding.device.type == "cpu"
    out = _text2im_out(half)
    assert torch.isfinite(out).all()
    assert (out - tiny_base_out).abs().max() < 0.25

    clip = NoisedClip(_tiny_clip_config()).eval()
    clip_half = ck.load_model(ck.save_model(clip, tmp_path / "clip.safetensors"), dtype=torch.bfloat16)
    assert clip_half.text_encoder.blocks["input"].w_voc.dtype == torch.bfloat16
    assert clip_half.logit_scale.dtype == torch.float32
    assert torch.allclose(_clip_out(clip_half), _clip_out(clip), atol=0.5)


def test_save_model_writes_only_safetensors(tmp_path, tiny_base):
    with pytest.raises(CheckpointError, match="safetensors"):
        ck.save_model(tiny_base, tmp_path / "m.pt")


def test_save_model_refuses_a_module_without_a_glide_config(tmp_path):
    with pytest.raises(CheckpointError, match="Linear is not a glide model"):
        ck.save_model(torch.nn.Linear(2, 2), tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_official_registry_model_types_come_from_the_preset_table():
    types = {name: c.model_type for name, c in ck.OFFICIAL_CHECKPOINTS.items()}
    assert types == {"base": "text2im", "upsample": "text2im", "base-inpaint": "text2im",
                     "upsample-inpaint": "text2im", "clip-image-enc": "clip-image-enc",
                     "clip-text-enc": "clip-text-enc"}


def test_clip_config_object_takes_the_type_of_the_half_it_loads(tmp_path):
    from glide.models.clip import ClipTextEncoder

    config = _tiny_clip_config()
    text = ClipTextEncoder(config)
    torch.save(text.state_dict(), tmp_path / "text.pt")
    loaded = ck.load_model(tmp_path / "text.pt", config=config)  # config.model_type is "clip"
    assert isinstance(loaded, ClipTextEncoder) and loaded.config.model_type == "clip-text-enc"


# --------------------------------------------------------------------------------------------
# Folders: model / EMA files and training runs
# --------------------------------------------------------------------------------------------
def _offset_state(model, offset: float) -> dict[str, torch.Tensor]:
    return {k: v + offset if v.is_floating_point() else v for k, v in model.state_dict().items()}


def test_folder_picks_weights_file(tmp_path):
    model = _tiny_classifier()
    folder = tmp_path / "ckpt"
    for stem, offset in [("model", 0.0), ("ema-0.999", 1.0), ("ema-0.9999", 2.0)]:
        ck.save_model(model, folder / f"{stem}.safetensors", state_dict=_offset_state(model, offset))

    def bias(**kw) -> float:
        loaded = ck.load_model(folder, **kw)
        return (loaded.head[-1].bias - model.head[-1].bias).mean().item()

    assert bias() == pytest.approx(2.0)  # "ema": the slowest-moving average
    assert bias(weights="ema") == pytest.approx(2.0)
    assert bias(weights="model") == pytest.approx(0.0)
    assert bias(weights="ema-0.999") == pytest.approx(1.0)
    assert bias(weights="0.9999") == pytest.approx(2.0)
    with pytest.raises(CheckpointError, match=r"ema-0\.99\.safetensors.*ema-0\.999"):
        ck.load_model(folder, weights="ema-0.99")


def test_folder_without_ema_falls_back_to_model(tmp_path):
    model = _tiny_classifier()
    ck.save_model(model, tmp_path / "ckpt" / "model.safetensors")
    assert isinstance(ck.load_model(tmp_path / "ckpt"), NoisyClassifier)


def _write_step(run: Path, step: int, model, offset: float = 0.0, emas: tuple[float, ...] = ()) -> Path:
    """A step folder as the trainer writes it: model (listing its EMA files), EMAs, trainer state."""
    folder = run / "checkpoints" / f"step-{step:08d}"
    names = [files.ema_file_name(rate) for rate in emas]
    ck.save_model(model, folder / files.MODEL_FILE, state_dict=_offset_state(model, offset),
                  metadata={files.EMA_FILES_KEY: json.dumps(names)})
    for name in names:
        ck.save_model(model, folder / name, state_dict=_offset_state(model, offset + 0.5))
    torch.save({"step": step}, folder / files.STATE_FILE)
    return folder


def test_training_run_folder_loads_latest_step(tmp_path):
    model = _tiny_classifier()
    run = tmp_path / "run"
    for step, offset in [(5, 5.0), (9, 9.0), (10, 10.0)]:
        _write_step(run, step, model, offset)
    (run / "checkpoints" / "step-00000011").mkdir()  # a step still being written: no weights yet
    assert ck.resolve_weights_file(run).parent.name == "step-00000010"
    assert ck.latest_step_dir(run).name == "step-00000010"
    loaded = ck.load_model(run, weights="model")
    assert (loaded.head[-1].bias - model.head[-1].bias).mean().item() == pytest.approx(10.0)

    empty = tmp_path / "empty_run"
    (empty / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no saved checkpoints"):
        ck.load_model(empty)


def test_padded_and_unpadded_step_folders_sort_by_number(tmp_path):
    model = _tiny_classifier()
    _write_step(tmp_path / "run", 10, model)
    folder = _write_step(tmp_path / "run", 100, model)
    folder.rename(folder.with_name("step-100"))
    assert ck.resolve_weights_file(tmp_path / "run").parent.name == "step-100"
    assert [p.name for p in ck.list_step_dirs(tmp_path / "run")] == ["step-00000010", "step-100"]


@pytest.mark.parametrize("damage", ["empty", "only-ema", "no-state", "no-model", "one-ema-gone", "renamed-away"])
def test_incomplete_step_folders_are_skipped_by_loading_and_resuming(tmp_path, damage):
    """What kill -9 during pruning (or saving) can leave: loading and resuming both skip it."""
    from glide.training.state import find_step_to_resume

    model = _tiny_classifier()
    run = tmp_path / "run"
    _write_step(run, 1, model, offset=1.0, emas=(0.9, 0.99))
    broken = _write_step(run, 2, model, offset=2.0, emas=(0.9, 0.99))
    if damage == "empty":
        for f in broken.iterdir():
            f.unlink()
    elif damage == "only-ema":
        for f in broken.iterdir():
            if f.name != "ema-0.99.safetensors":
                f.unlink()
    elif damage == "no-state":
        (broken / files.STATE_FILE).unlink()
    elif damage == "no-model":
        (broken / files.MODEL_FILE).unlink()
    elif damage == "one-ema-gone":
        (broken / "ema-0.9.safetensors").unlink()
    else:
        broken.rename(broken.with_name(f".trash-{broken.name}-123"))
    assert not files.is_complete_step(broken)
    assert [p.name for p in ck.list_step_dirs(run)] == ["step-00000001"]
    assert find_step_to_resume(run).name == "step-00000001"
    loaded = ck.load_model(run)  # the slowest EMA of step 1
    assert (loaded.head[-1].bias - model.head[-1].bias).mean().item() == pytest.approx(1.5)
    if broken.exists() and (broken / files.STATE_FILE).exists():
        with pytest.raises(Exception, match="incomplete"):
            find_step_to_resume(broken)


def test_checkpoints_get_the_umask_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = ck.save_model(_tiny_classifier(), tmp_path / "a.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        path = ck.save_model(_tiny_classifier(), tmp_path / "b.safetensors")
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------------
# Official names and bare .pt files
# --------------------------------------------------------------------------------------------
def test_official_name_with_wrong_weights_names_keys_and_lookalike(cache, tiny_base, monkeypatch):
    state = tiny_base.state_dict()
    _official_pt(cache, "base", state)
    # The official base is checked on the meta device: nothing of its 385M parameters is allocated.
    monkeypatch.setattr(ck.load, "materialize", lambda *a: pytest.fail("materialised a model that does not fit"))
    with pytest.raises(CheckpointError) as info:
        ck.load_model("base", cache_dir=cache)
    msg = str(info.value)
    assert "official 'base'" in msg
    assert "missing keys, first: [" in msg and "unexpected keys, first: [" in msg
    assert "exactly those of the 'tiny-base' preset (load it with config='tiny-base')" in msg

    damaged = {k: v for k, v in state.items() if k != "out.2.bias"}
    _official_pt(cache, "base", damaged)
    n = len(state)
    with pytest.raises(CheckpointError, match=rf"look most like the 'tiny-base' preset \({n - 1} of {n} keys"):
        ck.load_model("base", cache_dir=cache)


def test_official_name_with_explicit_config(cache, tiny_base):
    _official_pt(cache, "base", tiny_base.state_dict())
    _assert_same_weights(ck.load_model("base", cache_dir=cache, config="tiny-base"), tiny_base)


def test_official_name_resolution_uses_registry_preset(cache, tiny_base, tiny_official_base):
    half = {k: v.half() for k, v in tiny_base.state_dict().items()}  # official files are float16
    _official_pt(cache, "base", half)
    for name in ("base", "openai:base"):
        loaded = ck.load_model(name, cache_dir=cache)
        assert loaded.positional_embedding.dtype == torch.float32
        assert loaded.config == preset_config("tiny-base")
    # A bare .pt given by path is recognised by its keys and shapes.
    loaded = ck.load_model(ck.official_path("base", cache))
    assert loaded.config == preset_config("tiny-base")


def test_guess_config_of_official_size_state_on_meta():
    state = meta_model(preset_config("upsample-inpaint")).state_dict()
    assert sum(v.numel() for v in state.values()) > 300_000_000  # official size, no memory
    config = guess_config(state, Path("x.pt"))
    assert config.model_type == "text2im" and config == preset_config("upsample-inpaint")
    clip_text = meta_model(preset_config("clip-text-enc")).state_dict()
    assert guess_config(clip_text, Path("x.pt")).model_type == "clip-text-enc"


def test_bare_pt_of_unknown_size_asks_for_a_config(tmp_path):
    model = _tiny_classifier()
    path = tmp_path / "classifier.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="no glide config.*config="):
        ck.load_model(path)
    loaded = ck.load_model(path, config={**model.config.to_dict(), "model_type": "classifier"})
    assert torch.equal(loaded.head[-1].weight, model.head[-1].weight)


def test_keys_saved_from_a_wrapper_are_recognised_in_the_error(tmp_path, tiny_base):
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in tiny_base.state_dict().items()}, path)
    with pytest.raises(CheckpointError, match="removing the 'module.' prefix.*exactly those of the 'tiny-base'"):
        ck.load_model(path)


def test_missing_official_checkpoint_says_how_to_download(cache):
    with pytest.raises(CheckpointError, match="glide download base$"):
        ck.load_model("base", cache_dir=cache)
    with pytest.raises(CheckpointError, match="glide download upsample-inpaint"):
        ck.load_model("openai:upsample_inpaint")
    with pytest.raises(CheckpointError, match="glide download clip-image-enc clip-text-enc"):
        ck.load_model("clip", cache_dir=cache)
    _official_pt(cache, "clip-image-enc", NoisedClip(_tiny_clip_config()).image_encoder.state_dict())
    with pytest.raises(CheckpointError, match="glide download clip-text-enc$"):
        ck.load_clip(cache_dir=cache)


def test_unknown_name_lists_valid_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("bsae", "openai:nope"):
        with pytest.raises(CheckpointError) as info:
            ck.load_model(name)
        for valid in ck.OFFICIAL_CHECKPOINTS:
            assert valid in str(info.value)
    with pytest.raises(CheckpointError, match="file not found"):
        ck.load_model("no/such/model.safetensors")
    with pytest.raises(CheckpointError, match="valid names: base, upsample"):
        ck.official_checkpoint("bsae")


class _Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(1), "payload": exploit}, path)
    with pytest.raises(CheckpointError, match=r"could run code.*weights_only=True.*GLOBAL (posix|nt)\.system"):
        ck.load_model(path)
    with pytest.raises(CheckpointError, match="refusing"):
        ck.convert_checkpoint(path, tmp_path / "evil.safetensors")
    assert not marker.exists()
    assert not (tmp_path / "evil.safetensors").exists()


def test_pt_that_is_not_a_flat_state_dict(tmp_path):
    path = tmp_path / "nested.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, path)
    with pytest.raises(CheckpointError, match="flat state dict"):
        ck.read_checkpoint(path)


# --------------------------------------------------------------------------------------------
# Conversion and atomic writes
# --------------------------------------------------------------------------------------------
def test_convert_pt_to_safetensors_keeps_dtype_and_stores_config(cache, tiny_base, tiny_official_base):
    src = _official_pt(cache, "base", {k: v.half() for k, v in tiny_base.state_dict().items()})
    dst = ck.convert_checkpoint("base", cache_dir=cache)
    assert dst == src.with_suffix(".safetensors")
    state, config = ck.read_checkpoint(dst)
    assert config == {**preset_config("tiny-base").to_dict(), "model_type": "text2im"}
    assert state["out.2.weight"].dtype == torch.float16
    assert ck.resolve_weights_file("base", cache_dir=cache) == dst  # the converted file is preferred
    _assert_same_weights(ck.load_model(dst), ck.load_model(src))

    with pytest.raises(CheckpointError, match="already exists.*--force"):
        ck.convert_checkpoint("base", cache_dir=cache)  # converts base.pt again, not base.safetensors
    with pytest.raises(CheckpointError, match="already exists"):
        ck.convert_checkpoint(src, dst)
    assert ck.convert_checkpoint(src, dst, overwrite=True) == dst
    with pytest.raises(CheckpointError, match="refusing to overwrite the source"):
        ck.convert_checkpoint(dst)
    with pytest.raises(CheckpointError, match="refusing to overwrite the source"):
        ck.convert_checkpoint(dst, dst, overwrite=True)
    assert src.is_file() and dst.is_file()


def test_convert_checks_the_weights_fit(cache, tiny_base, tmp_path):
    _official_pt(cache, "base", tiny_base.state_dict())
    with pytest.raises(CheckpointError, match="missing keys"):
        ck.convert_checkpoint("base", tmp_path / "out.safetensors", cache_dir=cache)
    assert not (tmp_path / "out.safetensors").exists()


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch, tiny_base):
    import safetensors.torch

    path = ck.save_model(tiny_base, tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a header")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        ck.save_model(tiny_base, path, state_dict=_offset_state(tiny_base, 1.0))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temporary left


# --------------------------------------------------------------------------------------------
# The CLIP pair
# --------------------------------------------------------------------------------------------
def test_load_clip_from_two_official_style_halves(cache):
    config = _tiny_clip_config()
    torch.manual_seed(3)
    clip = NoisedClip(config).eval()
    _official_pt(cache, "clip-image-enc", clip.image_encoder.state_dict())
    _official_pt(cache, "clip-text-enc", clip.text_encoder.state_dict())

    loaded = ck.load_clip(config=config, cache_dir=cache)
    assert loaded.logit_scale.item() == torch.tensor(math.log(50.0)).item()
    assert torch.equal(_clip_out(loaded), _clip_out(clip))
    by_path = ck.load_clip(ck.official_path("clip-image-enc", cache), ck.official_path("clip-text-enc", cache),
                           config=config.to_dict())
    assert torch.equal(_clip_out(by_path), _clip_out(clip))

    with pytest.raises(CheckpointError, match="shape mismatches"):  # tiny halves, official config
        ck.load_clip(cache_dir=cache)
    with pytest.raises(CheckpointError, match="look most like the .*'clip-text-enc'"):  # swapped halves
        ck.load_clip(ck.official_path("clip-text-enc", cache), ck.official_path("clip-image-enc", cache),
                     config=config)


def test_load_clip_from_glide_saved_files(tmp_path):
    clip = NoisedClip(_tiny_clip_config()).eval()
    image = ck.save_model(clip.image_encoder, tmp_path / "image.safetensors")
    text = ck.save_model(clip.text_encoder, tmp_path / "text.safetensors")
    assert torch.equal(_clip_out(ck.load_clip(image, text)), _clip_out(clip))

    whole = ck.save_model(clip, tmp_path / "clip.safetensors")
    assert torch.equal(_clip_out(ck.load_clip(whole)), _clip_out(clip))
    with pytest.raises(CheckpointError, match="whole noised CLIP"):
        ck.load_clip(whole, text)
    with pytest.raises(CheckpointError, match="'clip-image-enc' checkpoint, but the text_encoder"):
        ck.load_clip(image, image)


def test_load_clip_matches_reference_fixtures(fixtures_dir, tmp_path):
    config = ClipConfig.from_dict(load_json("clip_config.json")["config_yaml_keys"])
    clip = ck.load_clip(fixtures_dir / "clip_image_enc_state_dict.pt", fixtures_dir / "clip_text_enc_state_dict.pt",
                        config=config)
    ref = load_fixture("clip_forward.pt")
    assert clip.text_encoder.blocks["input"].w_voc.is_contiguous()  # stored as an overlapping view
    assert clip.logit_scale.item() == pytest.approx(ref["logit_scale"].item(), abs=0)
    with torch.no_grad():
        text = clip.text_features(ref["clip_tokens"], ref["clip_lens"])
        image = clip.image_features(ref["x_t"], ref["t"])
    assert torch.allclose(text, ref["text_features"], atol=1e-4)
    assert torch.allclose(image, ref["image_features"], atol=1e-4)


def test_reference_base_fixture_converts_and_reproduces_its_output(fixtures_dir, tmp_path):
    options = load_json("base_options.json")["create_model_and_diffusion_kwargs"]
    keys = {f.name for f in dataclasses.fields(type(preset_config("tiny-base")))}
    config = {k: v for k, v in options.items() if k in keys} | {"model_type": "text2im"}
    dst = ck.convert_checkpoint(FIXTURES / "base_state_dict.pt", tmp_path / "base.safetensors", config=config)
    model = ck.load_model(dst)
    ref = load_fixture("base_forward.pt")
    with torch.no_grad():
        out = model(ref["x_t"], ref["timesteps"], ref["tokens"], ref["mask"])
    assert torch.allclose(out, ref["output"], atol=1e-4)


# --------------------------------------------------------------------------------------------
# Download into the cache
# --------------------------------------------------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_official_into_cache(server, tiny_base, tmp_path, monkeypatch, tiny_official_base):
    src = tmp_path / "served.pt"
    torch.save(tiny_base.state_dict(), src)
    server.files["/base.pt"] = src.read_bytes()
    entry = dataclasses.replace(ck.OFFICIAL_CHECKPOINTS["base"], url=f"{server.url}/base.pt")
    monkeypatch.setitem(ck.OFFICIAL_CHECKPOINTS, "base", entry)
    dest = ck.official_path("base")
    assert dest.parent == Path(os.environ["GLIDE_CACHE"]) / "checkpoints"

    with pytest.raises(OfflineError, match="GLIDE_OFFLINE"):  # conftest sets GLIDE_OFFLINE=1
        ck.download_official("base", progress=False)
    assert not dest.exists() and server.requests == []

    monkeypatch.delenv("GLIDE_OFFLINE")
    assert ck.download_official("base", progress=False) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert ck.download_official("base", progress=False) == dest  # already there: no second request
    assert server.requests == ["/base.pt"]
    assert [row["downloaded"] for row in ck.official_status() if row["name"] == "base"] == [True]
    _assert_same_weights(ck.load_model("base"), tiny_base)


def test_load_model_download_flag(server, tiny_base, cache, monkeypatch, tiny_official_base):
    buffer = cache.parent / "served.pt"
    torch.save(tiny_base.state_dict(), buffer)
    server.files["/base.pt"] = buffer.read_bytes()
    entry = dataclasses.replace(ck.OFFICIAL_CHECKPOINTS["base"], url=f"{server.url}/base.pt")
    monkeypatch.setitem(ck.OFFICIAL_CHECKPOINTS, "base", entry)
    monkeypatch.delenv("GLIDE_OFFLINE")
    model = ck.load_model("base", cache_dir=cache, download=True)
    assert (cache / "base.pt").is_file()
    _assert_same_weights(model, tiny_base)
