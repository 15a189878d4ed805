"""The one preset table and the config base class: every preset builds, every config round-trips
with its model_type, old key names still load, and every reader (compat, CLI, training) uses it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner

from glide.cli import cli
from glide.compat import (
    config_from_options,
    create_clip_model,
    model_and_diffusion_defaults,
    model_and_diffusion_defaults_upsampler,
)
from glide.models import (
    PRESETS,
    ModelConfig,
    Text2ImConfig,
    build_model,
    build_preset,
    config_from_dict,
    get_preset,
    preset_config,
    preset_names,
)
from glide.models.classifier import ClassifierConfig, NoisyClassifier
from glide.models.clip import ClipConfig, ClipImageEncoder, ClipTextEncoder, NoisedClip
from glide.training import TrainConfig
from glide.training.build import new_model_config
from glide.training.config import DEFAULT_MODEL, STAGES, ConfigError

from .helpers import load_json

MODEL_CLASSES = {"text2im": "Text2ImUNet", "clip": "NoisedClip", "clip-image-enc": "ClipImageEncoder",
                 "clip-text-enc": "ClipTextEncoder", "classifier": "NoisyClassifier",
                 "shapes-judge": "ShapesJudge"}
CLEAN_IMAGE_MODELS = ("shapes-judge",)  # reads finished images: no diffusion to name
TRAINING_ONLY = ("clip", "tiny-clip", "classifier", "tiny-classifier")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_the_model_its_table_row_names(name):
    preset = PRESETS[name]
    with torch.device("meta"):
        model = build_preset(name)
    assert type(model).__name__ == MODEL_CLASSES[preset.model_type]
    assert model.config.model_type == preset.model_type
    assert model.config == preset_config(name)


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_config_round_trips_through_json_with_its_model_type(name):
    config = preset_config(name)
    assert isinstance(config, ModelConfig)
    stored = json.loads(json.dumps(config.to_dict()))
    assert stored["model_type"] == PRESETS[name].model_type
    rebuilt = config_from_dict(stored)
    assert type(rebuilt) is type(config) and rebuilt == config
    assert rebuilt.model_type == config.model_type
    assert type(config).from_dict(stored).model_type == config.model_type


def test_every_config_speaks_one_diffusion_vocabulary():
    for name in PRESETS:
        d = preset_config(name).to_dict()
        if PRESETS[name].model_type not in CLEAN_IMAGE_MODELS:
            assert {"noise_schedule", "diffusion_steps"} <= d.keys(), name
        assert not {"beta_schedule", "n_timesteps"} & d.keys(), name


def test_old_vocabulary_dicts_still_load():
    new = preset_config("tiny-clip", diffusion_steps=10, noise_schedule="linear").to_dict()
    old = {k: v for k, v in new.items() if k not in ("diffusion_steps", "noise_schedule")}
    old.update(n_timesteps=10, beta_schedule="linear")
    config = config_from_dict(old)
    assert config.diffusion_steps == 10 and config.noise_schedule == "linear"
    assert config == config_from_dict(new)
    # The official clip/config.yaml keys (no model_type): the official pair.
    official = ClipConfig.from_dict(load_json("official_configs.json")["clip"]["config_yaml"])
    assert official == preset_config("clip") and official.model_type == "clip"


def test_a_checkpoint_saved_with_the_old_clip_keys_still_loads(tmp_path):
    from glide.checkpoints import load_model, save_state_dict

    model = build_preset("tiny-clip", image_size=16, diffusion_steps=10)
    stored = model.config.to_dict()
    stored["n_timesteps"], stored["beta_schedule"] = stored.pop("diffusion_steps"), stored.pop("noise_schedule")
    path = save_state_dict(model.state_dict(), stored, tmp_path / "old.safetensors")
    loaded = load_model(path)
    assert isinstance(loaded, NoisedClip) and loaded.config == model.config
    assert loaded.config.diffusion_steps == 10
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_old_and_new_name_together_is_an_error():
    d = {**preset_config("tiny-clip").to_dict(), "n_timesteps": 10}
    with pytest.raises(ValueError, match="both 'n_timesteps' and its new name 'diffusion_steps'"):
        config_from_dict(d)


def test_model_type_must_fit_the_config_class():
    with pytest.raises(ValueError, match="Text2ImConfig describes model_type text2im, not 'clip'"):
        Text2ImConfig.from_dict({"model_type": "clip"})
    with pytest.raises(ValueError, match="ClipConfig describes model_type clip / clip-image-enc / clip-text-enc"):
        ClipConfig(model_type="classifier")
    with pytest.raises(ValueError, match="unknown model_type 'nope'"):
        config_from_dict({"model_type": "nope"})
    with pytest.raises(ValueError, match="unknown model_type None"):
        config_from_dict({"image_size": 64})
    with pytest.raises(ValueError, match="ClassifierConfig describes model_type classifier, not 'text2im'"):
        build_model(preset_config("tiny-classifier"), model_type="text2im")


def test_each_clip_module_keeps_a_config_of_its_own_type():
    config = preset_config("tiny-clip")
    with torch.device("meta"):
        pair = NoisedClip(config.as_type("clip-image-enc"))
        image = build_model(config, model_type="clip-image-enc")
        text = build_model({**config.to_dict(), "model_type": "clip-text-enc"})
    assert pair.config.model_type == "clip"
    assert pair.image_encoder.config.model_type == "clip-image-enc"
    assert pair.text_encoder.config.model_type == "clip-text-enc"
    assert isinstance(image, ClipImageEncoder) and image.config.model_type == "clip-image-enc"
    assert isinstance(text, ClipTextEncoder) and text.config.to_dict()["model_type"] == "clip-text-enc"
    assert config.model_type == "clip"  # as_type and build_model copy, never change the caller's config
    assert image.config == text.config == config  # equality is about the architecture


def test_preset_table_is_read_only_and_hands_out_fresh_configs():
    with pytest.raises(TypeError):
        PRESETS["mine"] = PRESETS["base"]  # type: ignore[index]
    with pytest.raises(TypeError):
        PRESETS["tiny-base"].fields["image_size"] = 32  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["tiny-base"].model_type = "clip"  # type: ignore[misc]
    first = preset_config("tiny-base")
    first.tokenizer["kind"] = "changed"
    first.image_size = 32
    again = preset_config("tiny-base")
    assert again.tokenizer == {"kind": "bytes"} and again.image_size == 64


def test_overrides_and_unknown_names():
    assert preset_config("tiny-classifier", num_classes=5).num_classes == 5
    assert build_preset("tiny-clip", image_size=64).config.image_size == 64
    with pytest.raises(ValueError, match="unknown model preset 'nope'; valid presets: base, upsample"):
        get_preset("nope")
    with pytest.raises(ValueError, match="unknown ClassifierConfig keys \\['xf_width'\\]"):
        preset_config("tiny-classifier", xf_width=8)


def test_listing_has_every_preset_with_a_description():
    names = preset_names()
    assert names == list(PRESETS)
    assert {"tiny-clip", "classifier", "tiny-classifier", "clip", "clip-image-enc"} <= set(names)
    assert preset_names("text2im") == [n for n in names if PRESETS[n].model_type == "text2im"]
    assert "tiny-clip" not in preset_names("text2im")
    assert PRESETS["base"].description == "base, 64 px, 192 channels"
    assert PRESETS["tiny-upsample-inpaint"].description == "upsampler, inpainting, 128 px, 32 channels"
    assert PRESETS["tiny-classifier"].description == "noisy-image classifier, 32 px, 32 channels"
    assert PRESETS["clip-text-enc"].description == "noised CLIP text encoder, 512-d embeddings"


def test_glide_models_lists_every_preset():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.split("Presets")[1].splitlines()
    for name, preset in PRESETS.items():
        assert any(line.split() and line.split()[0] == name and line.endswith(preset.description)
                   for line in lines), name


def test_compat_defaults_are_the_official_values_and_the_table_s():
    official = load_json("official_configs.json")["defaults"]
    assert model_and_diffusion_defaults() == official["model_and_diffusion_defaults"]
    assert model_and_diffusion_defaults_upsampler() == official["model_and_diffusion_defaults_upsampler"]
    assert config_from_options(model_and_diffusion_defaults()) == preset_config("base")
    assert config_from_options(model_and_diffusion_defaults_upsampler()) == preset_config("upsample")
    assert model_and_diffusion_defaults() is not model_and_diffusion_defaults()  # a fresh dict each call


def test_compat_clip_config_uses_the_official_key_names():
    official = load_json("official_configs.json")["clip"]["config_yaml"]
    assert create_clip_model(device="meta").config == official


@pytest.mark.parametrize("stage", STAGES)
def test_training_default_models_are_presets_of_the_right_type(stage):
    config = new_model_config(TrainConfig(stage=stage))
    assert config.model_type == PRESETS[DEFAULT_MODEL[stage]].model_type
    assert config == preset_config(DEFAULT_MODEL[stage])


@pytest.mark.parametrize("name", TRAINING_ONLY)
def test_training_reads_the_training_presets_from_the_table(name):
    config = new_model_config(TrainConfig(model=name, num_channels=64 if "class" in name else None))
    assert config.model_type == PRESETS[name].model_type
    assert isinstance(config, ClipConfig if "clip" in name else ClassifierConfig)
    if "class" in name:
        assert config.num_channels == 64
        with torch.device("meta"):
            assert isinstance(build_model(config), NoisyClassifier)


def test_training_unknown_model_lists_every_preset():
    with pytest.raises(ConfigError, match="unknown --model 'nope'; presets: base, .*tiny-clip.*tiny-classifier"):
        new_model_config(TrainConfig(model="nope"))
    with pytest.raises(ConfigError, match="model 'tiny-base' with overrides"):
        new_model_config(TrainConfig(model="tiny-base", model_overrides={"bogus": 1}))
