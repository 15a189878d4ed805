"""One model-spec grammar (``glide.checkpoints.specs``): parsing, role checks before any tensor
is read, random presets, downloads reported at once; the same loader behind ``from_pretrained``;
and the torch-free error module."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from glide import errors
from glide.checkpoints import is_random, load_model, parse_spec, plan_models, resolve_pair, save_model, specs
from glide.errors import CheckpointError, SpecError
from glide.models import build_model, preset_config
from glide.pipelines import InpaintPipeline, Text2ImagePipeline


@pytest.fixture
def no_tensor_reads(monkeypatch):
    """Fail the test if any checkpoint's tensors are read (role checks must use the header)."""
    import glide.checkpoints.load as load

    monkeypatch.setattr(load.files, "read_checkpoint", lambda *a, **k: pytest.fail("read tensors"))


def _saved(tmp_path, preset: str):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = build_model(preset_config(preset), model_type="text2im")
    return save_model(model, tmp_path / f"{preset}.safetensors")


@pytest.mark.parametrize("given, role, inpaint, kind, name", [
    ("openai", "base", False, "official", "base"),
    ("openai", "upsampler", False, "official", "upsample"),
    ("openai", "base", True, "official", "base-inpaint"),
    ("openai", "upsampler", True, "official", "upsample-inpaint"),
    ("openai:base", "base", False, "official", "base"),
    ("base_inpaint", "base", True, "official", "base-inpaint"),
    ("random:tiny-base", "base", False, "random", "tiny-base"),
    ("openai", "clip", False, "clip-pair", "clip-image-enc"),
    ("random", "clip", False, "random-clip", "random"),
])
def test_parse_spec_forms(given, role, inpaint, kind, name):
    spec = parse_spec(given, role, inpaint=inpaint)
    assert (spec.kind, spec.name, spec.given) == (kind, name, given)


def test_parse_spec_paths_win_over_names_and_unknown_specs_list_the_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()  # a folder named like an official checkpoint
    assert parse_spec("base").kind == "path"
    assert parse_spec("openai:base").kind == "official"
    with pytest.raises(SpecError, match="'nope.pt'.*openai.*random:PRESET.*tiny-base") as info:
        parse_spec("nope.pt", "upsampler")
    assert info.value.option == "--upsampler" and isinstance(info.value, ValueError)
    with pytest.raises(SpecError, match="unknown preset 'huge'.*tiny-base"):
        parse_spec("random:huge")
    with pytest.raises(SpecError, match="no CLIP checkpoint 'x.pt'"):
        parse_spec("x.pt", "clip")


def test_resolve_pair_fills_openai_and_the_automatic_upsampler():
    base, up = resolve_pair("sample", "openai", None)
    assert (base.name, up.name) == ("base", "upsample")
    base, up = resolve_pair("inpaint", "openai", "openai")
    assert (base.name, up.name) == ("base-inpaint", "upsample-inpaint")
    base, up = resolve_pair("inpaint", "random:tiny-base-inpaint", None)
    assert up.given == "random:tiny-upsample-inpaint"
    assert resolve_pair("sample", "random:tiny-upsample", "none")[1] is None
    _, up = resolve_pair("edit", "random:tiny-base", None)
    assert up.given == "random:tiny-upsample"


@pytest.mark.parametrize("command, model, upsampler, message", [
    ("sample", "random:tiny-upsample", "none", "is an upsampler; pass it as --upsampler"),
    ("sample", "random:tiny-base", "random:tiny-base", "not an upsampler"),
    ("sample", "random:tiny-base-inpaint", "none", "is an inpainting model"),
    ("inpaint", "random:tiny-base", "none", "not an inpainting model"),
    ("sample", "upsample", "none", "is an upsampler"),  # official, not downloaded: checked from its preset
    ("sample", "random:clip-image-enc", "none", "not a text-to-image model"),
])
def test_wrong_roles_fail_before_loading(command, model, upsampler, message, no_tensor_reads):
    with pytest.raises(SpecError, match=message) as info:
        plan_models(command, model, upsampler)
    assert model in str(info.value)


def test_role_of_a_file_is_read_from_its_header(tmp_path, no_tensor_reads):
    upsampler = str(_saved(tmp_path, "tiny-upsample"))
    with pytest.raises(SpecError, match="is an upsampler") as info:
        plan_models("sample", upsampler, "none")
    assert upsampler in str(info.value) and info.value.option == "--model"
    plan = plan_models("sample", "random:tiny-base", upsampler)
    assert plan.upsampler.kind == "path" and plan.random == ("random:tiny-base",)


def test_missing_downloads_are_reported_all_at_once(tmp_path):
    with pytest.raises(CheckpointError, match="glide download base upsample clip-image-enc clip-text-enc"):
        plan_models("sample", "openai", None, "openai", cache_dir=tmp_path)
    with pytest.raises(CheckpointError, match="glide download base-inpaint$"):
        plan_models("inpaint", "base-inpaint", "random:tiny-upsample-inpaint", cache_dir=None)


def test_random_preset_is_seeded_marked_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = load_model("random:tiny-base"), load_model("random:tiny-base")
    assert torch.equal(torch.get_rng_state(), before)
    assert is_random(a) and a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not is_random(build_model(preset_config("tiny-base"), model_type="text2im"))
    half = load_model("random:tiny-base", dtype=torch.float16)
    assert half.input_blocks[0][0].weight.dtype == torch.float16


def test_a_bare_pt_is_role_checked_once_loaded(tmp_path):
    up = build_model(preset_config("tiny-upsample"), model_type="text2im")
    torch.save(up.state_dict(), tmp_path / "up.pt")
    with pytest.raises(CheckpointError):  # no config and not an official size: cannot be loaded at all
        specs.load_for_role(str(tmp_path / "up.pt"), "base")
    path = _saved(tmp_path, "tiny-upsample")
    with pytest.raises(SpecError, match="is an upsampler"):
        specs.load_for_role(str(path), "base")
    assert specs.load_for_role(str(path), "upsampler").config.super_res


def test_from_pretrained_uses_the_same_loader(tmp_path):
    pipe = Text2ImagePipeline.from_pretrained("random:tiny-base", "random:tiny-upsample", clip="random")
    assert is_random(pipe.base) and is_random(pipe.upsampler) and is_random(pipe.clip)
    assert pipe.clip.config.image_size == pipe.base.config.image_size
    assert Text2ImagePipeline.from_pretrained("random:tiny-base", None).upsampler is None
    with pytest.raises(SpecError, match="is an upsampler"):
        Text2ImagePipeline.from_pretrained("random:tiny-upsample", None)
    with pytest.raises(SpecError, match="not an inpainting model"):
        InpaintPipeline.from_pretrained("random:tiny-base", None)
    inpaint = InpaintPipeline.from_pretrained("random:tiny-base-inpaint", "random:tiny-upsample-inpaint")
    assert inpaint.base.config.inpaint and inpaint.upsampler.config.inpaint
    with pytest.raises(CheckpointError, match="glide download base upsample"):
        Text2ImagePipeline.from_pretrained("openai", "openai", cache_dir=tmp_path)
    bundled = Text2ImagePipeline.from_pretrained()  # the default: the bundled cascade, no download
    assert bundled.base.config.image_size == 32 and bundled.upsampler.config.super_res
    assert not is_random(bundled.base)


def test_errors_import_without_torch_and_old_modules_reexport_them():
    code = "import sys, glide.errors; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    from glide import checkpoints, download
    from glide.training import config, distributed, state

    assert checkpoints.CheckpointError is errors.CheckpointError
    assert (download.DownloadError, download.OfflineError) == (errors.DownloadError, errors.OfflineError)
    assert (config.ConfigError, distributed.LaunchError, state.ResumeError) == (
        errors.ConfigError, errors.LaunchError, errors.ResumeError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.GlideError)
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.CheckpointError, RuntimeError)
