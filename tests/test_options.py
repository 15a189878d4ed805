"""StageOptions (one frozen options object, validated once), devices, and the pipelines' up-front
argument checks: every bad value is a ValueError naming the argument, before any model runs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import glide.pipelines as pipelines
from glide import devices, errors
from glide.cli.prepare import stage_options
from glide.devices import auto_dtype, bf16_speedup, resolve_device, resolve_dtype
from glide.guidance import ClassifierGuidance, ClipGuidance
from glide.models import build_preset
from glide.models.classifier import ClassifierConfig, NoisyClassifier
from glide.pipelines import (
    DEFAULT_BASE,
    DEFAULT_UPSAMPLE,
    FAST_BASE,
    FAST_UPSAMPLE,
    NOTEBOOK_BASE,
    NOTEBOOK_UPSAMPLE,
    ImageToImagePipeline,
    InpaintPipeline,
    SamplingError,
    StageOptions,
    Text2ImagePipeline,
    stage_diffusion,
)
from glide.pipelines.text2im import strength_steps
from glide.training.distributed import LaunchError
from glide.training.distributed import resolve_device as training_resolve_device

BAD_NUMBERS = [math.nan, math.inf, -math.inf, -1.0]


# -- StageOptions ------------------------------------------------------------------------------
def test_stage_options_are_frozen_and_replace_revalidates():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_BASE.timesteps = 5  # type: ignore[misc]
    changed = dataclasses.replace(DEFAULT_BASE, timesteps="fast27")
    assert changed.timesteps == "fast27" and DEFAULT_BASE.timesteps == 20
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        dataclasses.replace(DEFAULT_BASE, sampler="euler")


def test_sampler_options_are_a_private_read_only_copy():
    extras = {"eta": 0.5}
    options = StageOptions("ddim", 10, sampler_options=extras)
    extras["eta"] = 1.0
    assert options.sampler_options["eta"] == 0.5
    with pytest.raises(TypeError):
        options.sampler_options["eta"] = 2.0  # type: ignore[index]
    assert hash(options) == hash(StageOptions("ddim", 10, sampler_options={"eta": 0.5}))


@pytest.mark.parametrize("timesteps", [1, 25, "25", "fast27", "ddim50", "10,10,3", "logsnr8", "karras10", "trailing4"])
def test_valid_timesteps(timesteps):
    assert StageOptions(timesteps=timesteps).respacing == str(timesteps)


@pytest.mark.parametrize("timesteps", [0, -3, True, 2.5, None, "", "fast", "ddim0", "ten", "10,0", "logsnr0", "karras"])
def test_invalid_timesteps_name_the_argument(timesteps):
    with pytest.raises(ValueError, match="timesteps"):
        StageOptions(timesteps=timesteps)


@pytest.mark.parametrize("scale", [*BAD_NUMBERS, "high"])
def test_invalid_guidance_scale_names_the_argument(scale):
    with pytest.raises(ValueError, match="guidance_scale must be"):
        StageOptions(guidance_scale=scale)


def test_int_timesteps_are_evenly_spaced_and_must_fit_the_model():
    model = build_preset("tiny-base")
    as_int = stage_diffusion(model, StageOptions(timesteps=10))
    as_str = stage_diffusion(model, StageOptions(timesteps="10"))
    assert as_int.timestep_map.tolist() == as_str.timestep_map.tolist()
    assert len(as_int.timestep_map) == 10 and as_int.timestep_map[-1] == model.config.diffusion_steps - 1
    too_many = model.config.diffusion_steps + 1
    with pytest.raises(ValueError, match=f"timesteps={too_many} does not fit the model's"):
        stage_diffusion(model, StageOptions(timesteps=too_many))


def test_cli_recipes_are_the_constants_themselves_unless_overridden():
    assert stage_options("default", None, None, None, None, None) == (DEFAULT_BASE, DEFAULT_UPSAMPLE)
    base, up = stage_options("notebook", None, None, None, None, None)
    assert base is NOTEBOOK_BASE and up is NOTEBOOK_UPSAMPLE
    base, up = stage_options("notebook", "ddim", 7, None, 3, 2.0)
    assert (base.sampler, base.timesteps, base.guidance_scale) == ("ddim", 7, 2.0)
    assert (up.sampler, up.timesteps) == ("ddpm", 3) and NOTEBOOK_UPSAMPLE.timesteps == "fast27"
    base, up = stage_options("fast", None, None, None, None, None, recommended=({"sampler": "ddpm"}, None))
    assert base is FAST_BASE and up is FAST_UPSAMPLE  # a named recipe ignores the checkpoints' recommendations
    # the fast recipe's model calls: 10 base steps, and 3 of the upsampler's 10 (strength 0.3)
    assert stage_diffusion(build_preset("tiny-base"), base).num_timesteps == 10
    assert strength_steps(stage_diffusion(build_preset("tiny-upsample"), up).num_timesteps, up.strength) == 3


# -- devices -----------------------------------------------------------------------------------
def test_device_and_dtype_resolution(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device 'gpu0' is not a device"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(LaunchError, match="CUDA is not available"):  # training keeps its error type
        training_resolve_device("cuda")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype 'fp64'"):
        resolve_dtype("fp64", torch.device("cpu"))


def test_auto_dtype_follows_the_cpu_probe_and_the_model_size(monkeypatch):
    cpu, big, small = torch.device("cpu"), 400_000_000, 2_000_000
    monkeypatch.setattr(devices, "bf16_speedup", lambda: pytest.fail("small models need no probe"))
    assert auto_dtype(cpu, small, 20_000_000)[0] == torch.float32
    assert auto_dtype(torch.device("cuda"), small, 20_000_000) == (torch.float16, "auto: fp16 on CUDA")
    for speedup, expected in ((2.1, torch.bfloat16), (1.0, torch.float32), (0.6, torch.float32)):
        monkeypatch.setattr(devices, "bf16_speedup", lambda speedup=speedup: speedup)
        dtype, why = auto_dtype(cpu, big, 20_000_000)
        assert dtype == expected and f"{speedup:.2f}x" in why


def test_bf16_probe_is_measured_once_and_cached(monkeypatch, tmp_path):
    measured = []
    monkeypatch.setattr(devices, "_measure_bf16_speedup", lambda: measured.append(1) or 1.7)
    path = tmp_path / "probe.json"
    assert bf16_speedup(path) == bf16_speedup(path) == 1.7 and len(measured) == 1
    path.write_text("not json")  # a damaged cache is measured again, not an error
    assert bf16_speedup(path) == 1.7 and len(measured) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["probe.json"]  # no partial file left
    monkeypatch.undo()
    assert 0.05 < devices._measure_bf16_speedup(repeats=1) < 20  # the real probe runs and is sane


# -- pipelines: bad arguments fail before sampling ---------------------------------------------
@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    classifier = NoisyClassifier(ClassifierConfig(num_classes=3, num_channels=32, num_res_blocks=1,
                                                  channel_mult=(1, 2), attention_resolutions=()))
    return build_preset("tiny-base").eval(), build_preset("tiny-base-inpaint").eval(), classifier.eval()


@pytest.fixture
def no_sampling(monkeypatch):
    for module in (pipelines.text2im, pipelines.edit):
        monkeypatch.setattr(module, "run_stage", lambda *a, **k: pytest.fail("sampled before checking arguments"))


BAD_CALLS = [
    (dict(num_images_per_prompt=0), "num_images_per_prompt"),
    (dict(num_images_per_prompt=1.5), "num_images_per_prompt"),
    (dict(num_images_per_prompt=True), "num_images_per_prompt"),
    *[(dict(guidance_scale=v), "guidance_scale") for v in BAD_NUMBERS],
    *[(dict(upsample_temp=v), "upsample_temp") for v in BAD_NUMBERS],
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(base="fast"), "base"),
    (dict(upsample=3), "upsample"),
    (dict(cond_fns=lambda x, t: x), "cond_fns"),
    (dict(cond_fns=(3,)), "cond_fns"),
]


@pytest.mark.parametrize("kwargs, name", BAD_CALLS)
def test_every_pipeline_rejects_bad_arguments_up_front(models, no_sampling, kwargs, name):
    base, inpaint, _ = models
    image = torch.zeros(1, 3, 64, 64)
    mask = torch.ones(64, 64)
    calls = [lambda: Text2ImagePipeline(base)("x", **kwargs),
             lambda: InpaintPipeline(inpaint)("x", image, mask, **kwargs),
             lambda: ImageToImagePipeline(base)("x", image, **kwargs)]
    for call in calls:
        with pytest.raises(ValueError, match=name):
            call()


@pytest.mark.parametrize("strength", [*BAD_NUMBERS, 0.0, 1.5])
def test_strength_out_of_range(models, no_sampling, strength):
    with pytest.raises(ValueError, match="strength must be a finite number in"):
        ImageToImagePipeline(models[0])("x", torch.zeros(1, 3, 64, 64), strength=strength)


@pytest.mark.parametrize("rerank", [0, 2.5])
def test_rerank_must_be_a_count(models, no_sampling, rerank):
    from .helpers import load_fixture_clip

    with pytest.raises(ValueError, match="rerank"):
        Text2ImagePipeline(models[0], None, load_fixture_clip())("x", rerank=rerank)


@pytest.mark.parametrize("scale", BAD_NUMBERS)
def test_guidance_scales_are_checked_when_built(models, scale):
    with pytest.raises(ValueError, match="CLIP guidance scale must be"):
        ClipGuidance(torch.nn.Identity(), scale)
    with pytest.raises(ValueError, match="classifier guidance scale must be"):
        ClassifierGuidance(models[2], 0, scale)


@pytest.mark.parametrize("label", [-1, 3, 1.0, True])
def test_class_label_must_be_a_class_of_the_classifier(models, label):
    with pytest.raises(ValueError, match=r"class label must be 0\.\.2"):
        ClassifierGuidance(models[2], label, 1.0)


def test_non_finite_samples_raise_instead_of_returning(models):
    torch.manual_seed(0)
    broken = build_preset("tiny-base").eval()
    with torch.no_grad():
        for p in broken.parameters():
            p.fill_(math.nan)
    with pytest.raises(SamplingError, match="base stage produced non-finite values") as info:
        Text2ImagePipeline(broken)("x", base=StageOptions("ddim", 2), upsample=False, seed=0, progress=False)
    assert isinstance(info.value, errors.GlideError) and SamplingError is errors.SamplingError  # torch-free type
    fine = Text2ImagePipeline(models[0])("x", base=StageOptions("ddim", 2), upsample=False, seed=0, progress=False)
    assert torch.isfinite(fine.samples).all()
