"""The bundled cascade as the default model: the ``bundled`` spec of every role, checkpoints that
carry their recommended sampling (``glide convert --sampler``), and the upsampler's partial start
(``StageOptions.strength``). Tiny random models stand in for the shipped files here; the shipped
files themselves are checked at the end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import glide.checkpoints.load as load_module
from glide.checkpoints import checkpoint_sampling, load_model, save_model
from glide.checkpoints.files import SAMPLING_KEY, read_metadata
from glide.checkpoints.load import seeded_build
from glide.checkpoints.specs import BUNDLED_CASCADE, bundled_for, parse_spec, resolve_pair
from glide.errors import SpecError
from glide.models import preset_config
from glide.pipelines import InpaintPipeline, StageOptions, Text2ImagePipeline, run_stage

from .helpers import one_torch_thread, png_pixels, run_cli  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SHIPPED = load_module.BUNDLED_DIR


def _tiny(preset: str, **overrides):
    return seeded_build(preset_config(preset, **overrides))


@pytest.fixture
def bundled_dir(tmp_path, monkeypatch):
    """An empty stand-in for glide/bundled: tests put tiny random models in it."""
    folder = tmp_path / "bundled"
    folder.mkdir()
    monkeypatch.setattr(load_module, "BUNDLED_DIR", folder)
    return folder


def _bundle(folder, name: str, preset: str, **overrides) -> None:
    save_model(_tiny(preset, **overrides), folder / "tmp.safetensors")
    load_module.convert_checkpoint(folder / "tmp.safetensors", folder / f"{name}.safetensors", half=True,
                                   sampling={"sampler": "ddim", "timesteps": 3, "guidance_scale": 2.0})
    (folder / "tmp.safetensors").unlink()


# ------------------------------------------------------------------------- recommended sampling
def test_convert_half_records_the_recommended_sampling_and_loads_back(tmp_path):
    model = _tiny("tiny-base")
    save_model(model, tmp_path / "m.safetensors")
    out = load_module.convert_checkpoint(tmp_path / "m.safetensors", tmp_path / "h.safetensors", half=True,
                                         sampling={"sampler": "ddpm", "timesteps": 7, "guidance_scale": 4.0})
    assert json.loads(read_metadata(out)[SAMPLING_KEY]) == {"sampler": "ddpm", "timesteps": 7, "guidance_scale": 4.0}
    assert out.stat().st_size < 0.6 * (tmp_path / "m.safetensors").stat().st_size  # float16 storage
    loaded = load_model(out)
    assert loaded.recommended_sampling == checkpoint_sampling(out) == {
        "sampler": "ddpm", "timesteps": 7, "guidance_scale": 4.0}
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert b.dtype == a.dtype, name  # upcast again on load
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), name
    assert load_model(tmp_path / "m.safetensors").recommended_sampling is None


def test_pipelines_sample_as_the_checkpoint_recommends_unless_told_otherwise():
    base = _tiny("tiny-base")
    pipe = Text2ImagePipeline(base)
    recommended = StageOptions(sampler="ddim", timesteps=3, guidance_scale=2.0)
    base.recommended_sampling = {"sampler": "ddim", "timesteps": 3, "guidance_scale": 2.0}

    def steps(**kw):
        calls = []
        out = pipe("a red circle", seed=0, progress=False, callback=calls.append, **kw)
        return out, [(c["t"], c["pred_xstart"]) for c in calls]

    out, default = steps()
    assert [t for t, _ in default] == [999, 500, 0]  # three DDIM steps, not the default recipe's 20
    same, explicit = steps(base=recommended)
    assert torch.equal(out.samples, same.samples)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(default, explicit, strict=True))
    assert len(steps(base=StageOptions(sampler="ddim", timesteps=4))[1]) == 4  # an explicit stage wins
    base.recommended_sampling = {"sampler": "nope", "timesteps": 3}
    with pytest.raises(ValueError, match="recommended sampling .* is not valid"):
        pipe("a red circle", seed=0, progress=False)


def test_convert_cli_validates_and_records_the_sampling(tmp_path):
    save_model(_tiny("tiny-upsample"), tmp_path / "u.safetensors")
    result = run_cli("convert", str(tmp_path / "u.safetensors"), str(tmp_path / "o.safetensors"), "--half",
                     "--sampler", "ddpm", "--steps", "40", "--strength", "0.3")
    assert result.exit_code == 0, result.output
    assert checkpoint_sampling(tmp_path / "o.safetensors") == {
        "sampler": "ddpm", "timesteps": 40, "guidance_scale": 3.0, "strength": 0.3}
    result = run_cli("convert", str(tmp_path / "u.safetensors"), str(tmp_path / "s.safetensors"),
                     "--sampler", "dpm++2m-sde", "--steps", "trailing10")  # a spacing, kept as text
    assert result.exit_code == 0, result.output
    assert checkpoint_sampling(tmp_path / "s.safetensors")["timesteps"] == "trailing10"
    result = run_cli("convert", str(tmp_path / "u.safetensors"), str(tmp_path / "p.safetensors"),
                     "--sampler", "ddpm", "--steps", "trailing0")
    assert result.exit_code == 2 and "--steps" in result.output
    result = run_cli("convert", str(tmp_path / "u.safetensors"), str(tmp_path / "p.safetensors"), "--steps", "4")
    assert result.exit_code == 2 and "give --sampler too" in result.output
    result = run_cli("convert", str(tmp_path / "u.safetensors"), str(tmp_path / "p.safetensors"),
                     "--sampler", "ddpm", "--strength", "1.5")
    assert result.exit_code == 2 and "--strength" in result.output
    assert not (tmp_path / "p.safetensors").exists()


# ------------------------------------------------------------------------- partial upsampling
def test_an_upsampler_stage_can_start_from_its_noised_input():
    up = _tiny("tiny-upsample", image_size=64)
    low_res = torch.rand(2, 3, 16, 16) * 2 - 1

    def upsample(strength: float, seed: int = 0, calls=None):
        return run_stage(up, ["a", "b"], StageOptions(sampler="ddpm", timesteps=10, strength=strength),
                         [torch.Generator().manual_seed(seed + i) for i in range(2)], low_res=low_res,
                         progress=False, callback=None if calls is None else calls.append)

    calls = []
    partial = upsample(0.3, calls=calls)
    assert len(calls) == 3 and calls[0]["t"] < 999  # three of the ten steps, from t well below T
    assert torch.equal(partial, upsample(0.3))
    assert not torch.equal(partial, upsample(0.3, seed=5))
    assert not torch.equal(partial, upsample(1.0))
    with pytest.raises(ValueError, match="only an upsampler"):
        run_stage(_tiny("tiny-base"), ["a"], StageOptions(strength=0.5), torch.Generator(), progress=False)
    with pytest.raises(ValueError, match="strength"):
        StageOptions(strength=0.0)


# ------------------------------------------------------------------------- the bundled spec
def test_the_bundled_spec_names_each_roles_model_or_says_it_is_missing(bundled_dir):
    with pytest.raises(SpecError, match="no bundled base model"):
        parse_spec("bundled", "base")
    _bundle(bundled_dir, "shapes-base", "tiny-base", image_size=32)
    assert parse_spec("bundled", "base").name.endswith("shapes-base.safetensors")
    assert bundled_for("upsampler") is None
    base, up = resolve_pair("sample", "bundled", None)
    assert base.kind == "bundled" and up is None  # no bundled upsampler: the 32 px base alone
    _bundle(bundled_dir, "shapes-upsample", "tiny-upsample", image_size=64)
    base, up = resolve_pair("sample", "bundled", None)
    assert up is not None and up.name.endswith("shapes-upsample.safetensors")
    with pytest.raises(SpecError, match="no bundled inpainting base"):
        resolve_pair("inpaint", "bundled", None)
    assert set(BUNDLED_CASCADE.values()) >= {"shapes-base", "shapes-upsample", "shapes-clip", "shapes-classifier"}


def test_glide_sample_defaults_to_the_bundled_cascade_and_its_recommended_sampling(bundled_dir, tmp_path):
    _bundle(bundled_dir, "shapes-base", "tiny-base", image_size=32)
    _bundle(bundled_dir, "shapes-upsample", "tiny-upsample", image_size=64)
    result = run_cli("sample", "a red circle", "-o", str(tmp_path / "out"), "--seed", "0", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "ddim 3 steps, guidance scale 2 at 32 px" in result.output
    assert "RANDOM" not in result.output
    (image,) = [p for p in (tmp_path / "out").glob("*.png") if not p.name.startswith("grid")]
    assert png_pixels(image).shape == (64, 64, 3)
    from PIL import Image

    with Image.open(image) as im:
        meta = json.loads(im.info["glide"])
    assert meta["model"] == "bundled" and meta["base_stage"] == "ddim 3 steps, guidance scale 2"
    flags = run_cli("sample", "a red circle", "-o", str(tmp_path / "o2"), "--seed", "0", "--no-progress",
                    "--steps", "2", "--upsampler", "none")
    assert flags.exit_code == 0, flags.output
    assert "ddim 2 steps, guidance scale 2 at 32 px" in flags.output  # flags override the recommendation
    official = run_cli("sample", "a red circle", "--model", "openai", "-o", str(tmp_path / "o3"),
                       "--cache-dir", str(tmp_path / "cache"))
    assert official.exit_code != 0 and "glide download" in official.output


def test_inpaint_defaults_to_the_bundled_inpainting_models(bundled_dir, tmp_path):
    _bundle(bundled_dir, "shapes-base-inpaint", "tiny-base-inpaint", image_size=32)
    image = np.full((32, 32, 3), 255, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:24, 8:24] = 255
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = run_cli("inpaint", "a red circle", "-i", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                     "-o", str(tmp_path / "out"), "--seed", "0", "--no-progress")
    assert result.exit_code == 0, result.output
    (out,) = [p for p in (tmp_path / "out").glob("*.png") if not p.name.startswith("grid")]
    pixels = png_pixels(out)
    assert pixels.shape == (32, 32, 3)
    keep = mask < 128
    assert np.abs(pixels[keep].astype(int) - image[keep]).max() <= 1  # the known region is kept
    assert isinstance(InpaintPipeline(load_model(parse_spec("bundled", "base", inpaint=True).source)), InpaintPipeline)


# ------------------------------------------------------------------------- the shipped cascade
def test_the_shipped_cascade_is_complete_small_and_half_precision():
    from glide.checkpoints import bundled_names, checkpoint_config

    names = set(bundled_names())
    assert set(BUNDLED_CASCADE.values()) | {"shapes-judge"} <= names
    total = sum((SHIPPED / f"{n}.safetensors").stat().st_size for n in names)
    assert total < 40 * 2**20, f"the bundled models take {total / 2**20:.1f} MB"
    for role, inpaint in (("base", False), ("upsampler", False), ("base", True), ("upsampler", True)):
        spec = parse_spec("bundled", role, inpaint=inpaint)
        config = checkpoint_config(spec.source)
        assert bool(config["inpaint"]) == inpaint and bool(config["super_res"]) == (role == "upsampler")
        assert config["tokenizer"]["kind"] != "glide-bpe"  # no vocabulary download: works offline
        assert checkpoint_sampling(spec.source) is not None
    assert checkpoint_config(parse_spec("bundled", "clip").source)["image_size"] == 32


def test_the_readme_command_follows_its_caption(tmp_path):
    """``glide sample`` with no options: the bundled cascade, offline, 64 px pictures that the
    shapes judge reads as the caption (most of them: it is a small model)."""
    from glide.evaluation.judge import judge_images, load_judge, score_captions

    caption = "a large blue square"
    result = run_cli("sample", caption, "-n", "6", "--seed", "0", "-o", str(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    files = sorted(p for p in tmp_path.glob("*.png") if not p.name.startswith("grid"))
    assert len(files) == 6
    pixels = np.stack([png_pixels(p) for p in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert images.shape == (6, 3, 64, 64)
    scenes, _ = judge_images(load_judge(), images)
    scores = score_captions([caption] * 6, scenes)
    assert sum(s["caption"] for s in scores) >= 4, scenes
