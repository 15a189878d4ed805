"""The ``glide`` command line: commands end to end on tiny random models, and clear errors.

Every run uses randomly initialised tiny presets and a couple of sampler steps, so the whole
file takes seconds on a CPU. Expected failures must print one ``Error: ...`` line (no traceback).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from glide.checkpoints import OFFICIAL_CHECKPOINTS
from glide.cli import slugify
from glide.images import save_png
from glide.models import preset_config

from .helpers import assert_clean_error, one_torch_thread  # noqa: F401 (a fixture)
from .helpers import png_pixels as pixels
from .helpers import run_cli as run

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = ["--model", "random:tiny-base", "--upsampler", "random:tiny-upsample"]
FAST = ["--steps", "2", "--upsample-steps", "2", "--no-progress"]
BASE_SIZE = preset_config("tiny-base").image_size
UP_SIZE = preset_config("tiny-upsample").image_size
COMMANDS = ["sample", "inpaint", "edit", "download", "convert", "models", "train"]


# -------------------------------------------------------------------------------------- help
@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command):
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: glide {command}" in result.output


def test_top_level_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("launcher", ["module", "script"])
def test_help_in_a_real_process(launcher):
    if launcher == "module":
        argv = [sys.executable, "-m", "glide", "--help"]
    else:
        script = shutil.which("glide") or shutil.which("glide", path=os.path.dirname(sys.executable))
        if script is None:
            if os.environ.get("CI"):  # CI installs the package: the script must be there
                pytest.fail("the glide console script is not installed")
            pytest.skip("the glide console script is not installed")
        argv = [script, "--help"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "sample" in proc.stdout and "download" in proc.stdout


@pytest.mark.parametrize("command", [[], ["train"], ["sample"]])
def test_help_does_not_import_torch(command):
    """Every command is registered directly, yet help stays quick: no module imports torch at load."""
    code = ("import sys\nfrom glide.cli import cli\n"
            f"try:\n    cli.main({[*command, '--help']!r}, prog_name='glide')\nexcept SystemExit as e:\n"
            "    assert e.code == 0, e.code\nassert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: glide" in proc.stdout


# ------------------------------------------------------------------------------------ sample
def test_sample_random_tiny_writes_pngs_and_grid(tmp_path):
    out = tmp_path / "out"
    result = run("sample", "a red circle above a blue square", *TINY, *FAST, "-n", "2", "--seed", "7",
                 "-o", str(out))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["a-red-circle-above-a-blue-square-7-0.png", "a-red-circle-above-a-blue-square-7-1.png",
                     "grid-7.png"]
    assert result.stdout.split() == [str(out / n) for n in names]
    for name in names[:2]:
        assert Image.open(out / name).size == (UP_SIZE, UP_SIZE)
    assert Image.open(out / "grid-7.png").size == (2 * UP_SIZE, UP_SIZE)
    assert "RANDOM WEIGHTS" in result.output


def test_sample_is_deterministic_with_seed(tmp_path):
    paths = []
    for folder, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = run("sample", "a corgi", *TINY, *FAST, "--seed", seed, "-o", str(tmp_path / folder))
        assert result.exit_code == 0, result.output
        paths.append(result.stdout.split()[0])
    assert np.array_equal(pixels(paths[0]), pixels(paths[1]))
    assert not np.array_equal(pixels(paths[0]), pixels(paths[2]))


def test_sample_several_prompts_one_grid_row_each_and_no_upsampler(tmp_path):
    result = run("sample", "one", "two", "--model", "random:tiny-base", "--upsampler", "none", *FAST,
                 "-n", "3", "--seed", "0", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.glob("one-0-*.png"))) == 3 and len(list(tmp_path.glob("two-0-*.png"))) == 3
    assert Image.open(tmp_path / "one-0-0.png").size == (BASE_SIZE, BASE_SIZE)
    assert Image.open(tmp_path / "grid-0.png").size == (3 * BASE_SIZE, 2 * BASE_SIZE)


def test_sample_from_a_checkpoint_file_with_notebook_recipe(tmp_path):
    from glide.checkpoints import save_model
    from glide.models import build_preset

    path = save_model(build_preset("tiny-base"), tmp_path / "tiny.safetensors")
    result = run("sample", "a cat", "--model", str(path), "--upsampler", "none", "--recipe", "notebook",
                 "--steps", "2", "--no-progress", "--seed", "1", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "a-cat-1-0.png").is_file()
    assert "RANDOM WEIGHTS" not in result.output


def test_sample_rerank_and_clip_guidance_with_random_clip(tmp_path):
    result = run("sample", "a dog", *TINY, *FAST, "--clip", "random", "--rerank", "2", "--clip-scale", "1",
                 "--seed", "0", "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a-dog-0-0.png").is_file()


def test_a_prompt_longer_than_the_context_is_refused_before_loading(tmp_path):
    text_ctx = preset_config("tiny-base").text_ctx  # byte tokens: one per character
    fits = "x" * text_ctx
    result = run("sample", fits, "--model", "random:tiny-base", "--upsampler", "none", *FAST, "--seed", "0",
                 "-o", str(tmp_path))
    assert result.exit_code == 0, result.output
    result = run("sample", "ok", fits + "y", "--model", "random:tiny-base", "--upsampler", "none", *FAST,
                 "-o", str(tmp_path / "long"))
    assert_clean_error(result, "PROMPT", "prompt 2", f"{text_ctx + 1} tokens", f"at most {text_ctx}")
    assert "loading models" not in result.output and "model:" not in result.output
    assert not (tmp_path / "long").exists()


def test_no_partial_files_when_saving_is_interrupted(tmp_path, monkeypatch):
    image = Image.new("RGB", (8, 8))

    def interrupted_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_png(image, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_slugify():
    assert slugify("An oil painting of a Corgi!") == "an-oil-painting-of-a-corgi"
    assert slugify("???") == "image"
    assert len(slugify("x" * 500)) <= 60


# ------------------------------------------------------------------------------ inpaint, edit
@pytest.fixture
def image_and_mask(tmp_path):
    image = np.zeros((96, 96, 3), np.uint8)
    image[:, :, 2] = 200
    mask = np.zeros((96, 96), np.uint8)
    mask[24:72, 24:72] = 255
    Image.fromarray(image).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return tmp_path / "image.png", tmp_path / "mask.png"


def test_inpaint_random_tiny(tmp_path, image_and_mask):
    image, mask = image_and_mask
    result = run("inpaint", "a red square", "--image", str(image), "--mask", str(mask), "--model",
                 "random:tiny-base-inpaint", *FAST, "--seed", "0", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    up_size = preset_config("tiny-upsample-inpaint").image_size  # the automatic upsampler
    assert Image.open(tmp_path / "out" / "a-red-square-0-0.png").size == (up_size, up_size)
    assert (tmp_path / "out" / "grid-0.png").is_file()


def test_inpaint_rejects_a_mask_of_another_shape(tmp_path, image_and_mask):
    image, _ = image_and_mask
    Image.new("L", (50, 20), 255).save(tmp_path / "wide.png")
    result = run("inpaint", "x", "--image", str(image), "--mask", str(tmp_path / "wide.png"), "--model",
                 "random:tiny-base-inpaint", *FAST)
    assert_clean_error(result, "aspect ratio")


def test_inpaint_rejects_a_text_to_image_model(tmp_path, image_and_mask):
    image, mask = image_and_mask
    result = run("inpaint", "x", "--image", str(image), "--mask", str(mask), *TINY, *FAST, "-o", str(tmp_path))
    assert_clean_error(result, "not an inpainting model")


def test_inpaint_rejects_missing_and_unreadable_images(tmp_path, image_and_mask):
    image, mask = image_and_mask
    result = run("inpaint", "x", "--image", str(tmp_path / "nope.png"), "--mask", str(mask))
    assert_clean_error(result, "nope.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    result = run("inpaint", "x", "--image", str(image), "--mask", str(tmp_path / "junk.png"))
    assert_clean_error(result, "cannot read image")


def test_inpaint_rejects_a_mask_with_nothing_to_repaint(tmp_path, image_and_mask):
    image, _ = image_and_mask
    Image.new("L", (96, 96), 0).save(tmp_path / "black.png")
    result = run("inpaint", "x", "--image", str(image), "--mask", str(tmp_path / "black.png"), "--model",
                 "random:tiny-base-inpaint", *FAST, "-o", str(tmp_path / "out"))
    assert_clean_error(result, "nothing to repaint")
    assert not (tmp_path / "out").exists()


def test_edit_random_tiny(tmp_path, image_and_mask):
    image, _ = image_and_mask
    result = run("edit", "a green square", "--image", str(image), "--strength", "0.5", *TINY, *FAST,
                 "--seed", "2", "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "a-green-square-2-0.png").size == (UP_SIZE, UP_SIZE)
    assert_clean_error(run("edit", "x", "--image", str(image), "--strength", "0", *TINY), "strength")


# ------------------------------------------------------------------- models, download, convert
def test_models_lists_the_official_checkpoints_and_presets():
    result = run("models")
    assert result.exit_code == 0, result.output
    for name in ["base", "upsample", "base-inpaint", "upsample-inpaint", "clip-image-enc", "clip-text-enc"]:
        assert name in result.output
    assert "glide download base" in result.output and "tiny-base" in result.output
    assert len(OFFICIAL_CHECKPOINTS) == 6


def test_download_offline_gives_a_clear_error(tmp_path):
    assert_clean_error(run("download", "base", "--cache-dir", str(tmp_path)), "GLIDE_OFFLINE")
    assert list(tmp_path.glob("*.pt")) == []


def test_download_unknown_name_lists_valid_names():
    assert_clean_error(run("download", "bas"), "bas", "base-inpaint", "clip-text-enc", "all")


def test_missing_official_checkpoint_says_how_to_download(tmp_path):
    assert_clean_error(run("sample", "a corgi", "--model", "openai", "-o", str(tmp_path)),
                       "glide download base upsample")
    assert_clean_error(run("sample", "a corgi", "--model", "base", "--upsampler", "none"), "glide download base")


def test_clip_guidance_needs_the_official_clip_by_default():
    assert_clean_error(run("sample", "x", *TINY, "--clip-scale", "1"), "glide download clip-image-enc clip-text-enc")


def test_convert_writes_safetensors_and_refuses_to_overwrite(tmp_path):
    from glide.checkpoints import load_model, save_model
    from glide.models import build_preset

    src = save_model(build_preset("tiny-base"), tmp_path / "a.safetensors")
    dst = tmp_path / "b.safetensors"
    result = run("convert", str(src), str(dst))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(dst)
    assert load_model(dst).config == preset_config("tiny-base")
    assert_clean_error(run("convert", str(src), str(dst)), "--force")
    assert_clean_error(run("convert", str(tmp_path / "missing.pt")), "missing.pt")


# ----------------------------------------------------------------------------- bad arguments
def test_unknown_sampler_lists_valid_names():
    assert_clean_error(run("sample", "x", *TINY, "--sampler", "euler"), "euler", "ddpm", "ddim", "plms", "dpm++2m")


def test_negative_guidance_scale_is_rejected():
    assert_clean_error(run("sample", "x", *TINY, "--guidance-scale", "-1"), "--guidance-scale")


def test_unknown_model_and_preset_list_valid_names():
    assert_clean_error(run("sample", "x", "--model", "random:huge"), "huge", "tiny-base")
    assert_clean_error(run("sample", "x", "--model", "nonexistent.pt"), "nonexistent.pt", "openai", "random:")


def test_wrong_model_roles_are_explained():
    result = run("sample", "x", "--model", "random:tiny-upsample", "--upsampler", "none", *FAST)
    assert_clean_error(result, "upsampler")


def test_output_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_clean_error(run("sample", "x", *TINY, "-o", str(tmp_path / "file")), "not a folder")
