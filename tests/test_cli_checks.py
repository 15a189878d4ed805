"""The CLI's rules for bad input and big runs: every number, path, prompt and image is checked
before a model loads and named in a one-line error; large runs are sampled in chunks and
streamed; guidances compose; grids are not overwritten.

Every run uses randomly initialised tiny presets and a couple of sampler steps.
"""

from __future__ import annotations

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from glide.checkpoints import save_model
from glide.cli.common import command_body
from glide.models import build_model, preset_config

from .helpers import assert_clean_error, one_torch_thread, png_pixels  # noqa: F401 (a fixture)
from .helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["--model", "random:tiny-base", "--upsampler", "random:tiny-upsample"]
BASE_ONLY = ["--model", "random:tiny-base", "--upsampler", "none"]
FAST = ["--steps", "2", "--upsample-steps", "2", "--no-progress"]


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if any model is loaded or built: the error must come before."""
    import glide.checkpoints.specs as specs

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(specs, "load_for_role", refuse)


@pytest.fixture
def image_and_mask(tmp_path):
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :, 1] = 180
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return str(tmp_path / "image.png"), str(tmp_path / "mask.png")


@pytest.fixture
def classifier_path(tmp_path):
    """A tiny noisy classifier at the tiny base's 64 px, saved as a checkpoint (config inside)."""
    config = preset_config("tiny-classifier", image_size=preset_config("tiny-base").image_size)
    torch.manual_seed(0)
    return str(save_model(build_model({**config.to_dict(), "model_type": "classifier"}), tmp_path / "clf.safetensors"))


# ------------------------------------------------------------------------------------ numbers
BAD_NUMBERS = [
    ("--steps", "0", "integer >= 1"), ("--steps", "1.5", "integer"), ("--upsample-steps", "-3", ">= 1"),
    ("--guidance-scale", "inf", "finite number >= 0"), ("--guidance-scale", "nan", "finite"),
    ("--guidance-scale", "-1", ">= 0"), ("-g", "-inf", "finite"), ("--upsample-temp", "nan", "finite"),
    ("--upsample-temp", "-0.5", ">= 0"), ("--num-images", "0", ">= 1"), ("-n", "inf", "integer"),
    ("--max-batch", "0", ">= 1"), ("--seed", "-1", ">= 0"), ("--seed", "nan", "integer"),
    ("--threads", "0", ">= 1"), ("--clip-scale", "inf", "finite"), ("--clip-scale", "-2", ">= 0"),
    ("--classifier-scale", "nan", "finite"), ("--class-label", "-1", ">= 0"), ("--rerank", "0", ">= 1"),
]


@pytest.mark.parametrize("flag,value,why", BAD_NUMBERS)
def test_sample_numbers_are_checked_before_anything_loads(flag, value, why, no_loading, tmp_path):
    out = tmp_path / "out"
    result = run("sample", "x", *TINY, flag, value, "-o", str(out))
    long_flag = {"-g": "--guidance-scale", "-n": "--num-images"}.get(flag, flag)
    assert_clean_error(result, f"{long_flag} must be", why, repr(value))
    assert not out.exists()


SHARED_BAD = [("--guidance-scale", "inf"), ("-n", "-1"), ("--upsample-temp", "nan"), ("--clip-scale", "nan")]
EDIT_BAD = [("--strength", "0"), ("--strength", "1.5"), ("--strength", "nan")]


@pytest.mark.parametrize("command,flag,value", [("inpaint", *bad) for bad in SHARED_BAD]
                         + [("edit", *bad) for bad in SHARED_BAD + EDIT_BAD])
def test_inpaint_and_edit_numbers_are_checked(command, flag, value, image_and_mask, no_loading):
    image, mask = image_and_mask
    extra = ["--mask", mask] if command == "inpaint" else []
    result = run(command, "x", "--image", image, *extra, flag, value)
    assert_clean_error(result, {"-n": "--num-images"}.get(flag, flag), "must be")


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "0"), ("--steps", "-1"), ("--batch-size", "0")])
def test_train_numbers_are_checked_before_a_run_starts(flag, value, tmp_path):
    result = run("train", "--model", "tiny-base", "--data", "shapes", flag, value, "--out", str(tmp_path / "run"))
    assert_clean_error(result, flag, "must be")
    assert not (tmp_path / "run").exists()


def test_batch_is_now_num_images():
    result = run("sample", "x", *TINY, "--batch", "2")
    assert result.exit_code != 0 and "No such option" in result.output and "--batch" in result.output


# -------------------------------------------------------------------------------- output paths
def test_unusable_output_paths_are_refused_first(tmp_path, no_loading, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert_clean_error(run("sample", "x", *TINY, "-o", str(tmp_path / "file")), "--output", "not a folder")
    assert_clean_error(run("sample", "x", *TINY, "-o", str(tmp_path / "file" / "sub" / "out")),
                       "--output", "is a file")
    import glide.cli.options as options

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = options.os.access

    def access(path, mode):  # as root every folder is writable: simulate a read-only one
        return not (str(path) == str(locked) and mode & options.os.W_OK) and real_access(path, mode)

    monkeypatch.setattr(options.os, "access", access)
    assert_clean_error(run("sample", "x", *TINY, "-o", str(locked)), "--output", "not writable")
    assert_clean_error(run("sample", "x", *TINY, "-o", str(locked / "new")), "--output", "not writable")


def test_an_os_error_naming_a_path_is_one_line_but_a_bug_keeps_its_traceback(tmp_path):
    @click.command()
    @click.argument("kind")
    @command_body
    def fails(kind: str) -> None:
        if kind == "path":
            open(tmp_path / "missing" / "x.png")
        if kind == "value":
            raise ValueError("a bad value")
        raise OSError("no path here")

    runner = CliRunner()
    assert_clean_error(runner.invoke(fails, ["path"]), "missing")
    assert_clean_error(runner.invoke(fails, ["value"]), "a bad value")
    result = runner.invoke(fails, ["other"])
    assert isinstance(result.exception, OSError) and not isinstance(result.exception, SystemExit)


# ------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize("prompts", [[""], ["   "], ["a cat", "\t\n"]])
def test_empty_prompts_are_refused(prompts, no_loading, image_and_mask):
    assert_clean_error(run("sample", *prompts, *TINY), "PROMPT", "empty")
    image, mask = image_and_mask
    assert_clean_error(run("edit", prompts[-1], "--image", image, *TINY), "PROMPT", "empty")
    assert_clean_error(run("inpaint", prompts[-1], "--image", image, "--mask", mask), "PROMPT", "empty")


def test_too_long_prompt_is_refused_for_edit_too(no_loading, image_and_mask):
    image, _ = image_and_mask
    too_long = "y" * (preset_config("tiny-base").text_ctx + 5)
    assert_clean_error(run("edit", too_long, "--image", image, *TINY), "PROMPT", "tokens")


def test_bad_images_are_refused_before_loading(tmp_path, image_and_mask, no_loading):
    image, mask = image_and_mask
    (tmp_path / "text.png").write_text("not a png")
    Image.new("L", (64, 64), 100).save(tmp_path / "grey.png")  # below white: nothing to repaint
    inpaint = ["inpaint", "x", "--model", "random:tiny-base-inpaint"]
    assert_clean_error(run(*inpaint, "--image", str(tmp_path / "text.png"), "--mask", mask), "--image", "cannot read")
    assert_clean_error(run(*inpaint, "--image", image, "--mask", str(tmp_path / "grey.png")), "--mask", "nothing")
    assert_clean_error(run("edit", "x", "--image", str(tmp_path / "nope.jpg")), "--image", "nope.jpg")


# ------------------------------------------------------------------------ classifier checks
def test_classifier_options_are_checked_from_the_config(classifier_path, no_loading):
    classes = preset_config("tiny-classifier").num_classes
    assert_clean_error(run("sample", "x", *TINY, "--classifier", classifier_path), "--class-label")
    assert_clean_error(run("sample", "x", *TINY, "--class-label", "1"), "--classifier")
    assert_clean_error(run("sample", "x", *TINY, "--classifier", classifier_path, "--class-label", str(classes)),
                       "--class-label", f"0..{classes - 1}")
    assert_clean_error(run("sample", "x", *TINY, "--classifier", "random:tiny-base", "--class-label", "0"),
                       "--classifier", "not a noised classifier")


def test_a_classifier_of_another_image_size_is_refused(tmp_path, no_loading):
    config = preset_config("tiny-classifier", image_size=32)
    path = save_model(build_model({**config.to_dict(), "model_type": "classifier"}), tmp_path / "small.safetensors")
    assert_clean_error(run("sample", "x", *TINY, "--classifier", str(path), "--class-label", "0"),
                       "--classifier", "32 px")


def test_threads_auto_uses_one_thread_only_for_small_models_on_the_cpu():
    import torch
    from torch import nn

    from glide.cli.prepare import set_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        set_threads("auto", [nn.Linear(1000, 21_000)], torch.device("cpu"))  # 21M parameters: left alone
        assert torch.get_num_threads() == 2
        set_threads("auto", [nn.Linear(10, 10)], torch.device("cpu"))
        assert torch.get_num_threads() == 1
        set_threads(2, [nn.Linear(10, 10)], torch.device("cpu"))  # an explicit count always wins
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("speedup, expected", [(2.0, "bfloat16"), (0.6, "float32")])
def test_dtype_auto_picks_bf16_only_where_the_probe_found_it_faster(tmp_path, monkeypatch, speedup, expected,
                                                                    one_torch_thread):  # noqa: F811
    import glide.cli.prepare as prepare
    from glide import devices

    monkeypatch.setattr(prepare, "SMALL_MODEL_PARAMS", 1000)  # treat the tiny base as a large model
    monkeypatch.setattr(devices, "bf16_speedup", lambda: speedup)
    result = run("sample", "a red circle", "--model", "random:tiny-base", "--upsampler", "none", "--steps", "2",
                 "--seed", "1", "-o", str(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    assert f"dtype: {expected} (auto: bf16 ran {speedup:.2f}x the fp32 speed" in result.output
    # a large model left in fp32 on a CPU runs its 3x3 convolutions as Winograd; in bf16 it does not
    assert ("convolutions: Winograd" in result.output) == (expected == "float32")
    assert (tmp_path / "grid-1.png").is_file()


def test_no_winograd_keeps_the_direct_convolutions(tmp_path, monkeypatch, one_torch_thread):  # noqa: F811
    import glide.cli.prepare as prepare
    from glide import devices

    monkeypatch.setattr(prepare, "SMALL_MODEL_PARAMS", 1000)
    monkeypatch.setattr(devices, "bf16_speedup", lambda: 0.6)  # fp32 stays
    outputs = {}
    for flag in ("--winograd", "--no-winograd"):
        out = tmp_path / flag
        result = run("sample", "a red circle", "--model", "random:tiny-base", "--upsampler", "none", "--steps",
                     "2", "--seed", "1", "-o", str(out), "--no-progress", flag)
        assert result.exit_code == 0, result.output
        assert ("convolutions: Winograd" in result.output) == (flag == "--winograd")
        outputs[flag] = png_pixels(out / "grid-1.png").astype(int)
    # the same picture up to rounding: 8-bit pixels move by at most one level
    assert np.abs(outputs["--winograd"] - outputs["--no-winograd"]).max() <= 1


def test_steps_take_a_spacing_by_noise_level(tmp_path, one_torch_thread):  # noqa: F811
    result = run("sample", "a red circle", "--model", "random:tiny-base", "--upsampler", "none", "--steps",
                 "logsnr3", "--sampler", "dpm++2m-sde", "--seed", "1", "-o", str(tmp_path), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "dpm++2m-sde logsnr3" in result.output and (tmp_path / "grid-1.png").is_file()
    assert_clean_error(run("sample", "x", "--steps", "karras0", "-o", str(tmp_path)), "--steps", "cannot take 0 steps")
