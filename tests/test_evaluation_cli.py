"""``glide eval samples`` / ``glide eval sweep`` end to end on tiny inputs, and every bad-input error."""

from __future__ import annotations

import csv
import json
import re

import pytest
from PIL import Image

from glide.data import heldout_captions
from glide.data.shapes import render_shapes

from .helpers import assert_clean_error, run_cli

COUNT = 12


@pytest.fixture
def renders(tmp_path):
    """COUNT real 32 px renders of held-out captions in DIR, with captions.txt in file order."""
    folder = tmp_path / "images"
    folder.mkdir()
    pairs = heldout_captions(COUNT, 2, seed=3)
    for i, (_, scene) in enumerate(pairs):
        render_shapes(scene, 32).save(folder / f"{i:03d}.png")
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(c for c, _ in pairs) + "\n")
    return folder, captions, [c for c, _ in pairs]


def test_eval_samples_writes_numbers_grid_and_plot(renders, tmp_path):
    folder, captions, _ = renders
    out = tmp_path / "out"
    result = run_cli("eval", "samples", str(folder), "--captions", str(captions), "-o", str(out), "--clip", "random")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["images"] == COUNT and summary["accuracy"]["caption"] >= 0.9  # real renders
    low, high = summary["caption_accuracy_ci95"]
    assert low <= summary["accuracy"]["caption"] <= high
    assert summary["fid"] >= 0 and 0 <= summary["precision"] <= 1 and 0 <= summary["recall"] <= 1
    assert 0 <= summary["clip_score"] <= 100
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["file"] for r in rows] == [f"{i:03d}.png" for i in range(COUNT)]
    assert Image.open(out / "grid.png").size[0] > 32
    assert (out / "accuracy.png").stat().st_size > 1000


def test_eval_samples_reads_jsonl_captions_and_a_reference_folder(renders, tmp_path):
    folder, _, captions = renders
    table = tmp_path / "captions.jsonl"
    # in reverse order: the file names, not the line order, pair captions with images
    table.write_text("".join(json.dumps({"file": f"{i:03d}.png", "caption": c}) + "\n"
                             for i, c in reversed(list(enumerate(captions)))))
    out = tmp_path / "out"
    result = run_cli("eval", "samples", str(folder), "--captions", str(table), "--reference", str(folder),
                     "-o", str(out))
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "results.json").read_text())
    assert summary["fid"] == pytest.approx(0.0, abs=1e-4)  # the same images as reference
    assert summary["precision"] == summary["recall"] == 1.0
    assert summary["accuracy"]["caption"] >= 0.9


def test_eval_samples_bad_inputs_get_one_line_errors(renders, tmp_path):
    folder, captions, _ = renders
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run_cli("eval", "samples", str(empty), "--captions", str(captions)), "holds no images")

    short = tmp_path / "short.txt"
    short.write_text("a small red circle\n")
    assert_clean_error(run_cli("eval", "samples", str(folder), "--captions", str(short)),
                       f"has 1 captions for {COUNT} images")

    bad_caption = tmp_path / "free.txt"
    bad_caption.write_text("a photo of a corgi\n" * COUNT)
    assert_clean_error(run_cli("eval", "samples", str(folder), "--captions", str(bad_caption)),
                       "does not follow the shapes grammar")

    few = tmp_path / "few"
    few.mkdir()
    for i in range(3):
        (folder / f"{i:03d}.png").rename(few / f"{i:03d}.png")
    three = tmp_path / "three.txt"
    three.write_text("\n".join(captions_of(captions)[:3]))
    assert_clean_error(run_cli("eval", "samples", str(few), "--captions", str(three), "-o", str(tmp_path / "o")),
                       "FID needs at least 10 images per set, got 3", "--no-fid")
    result = run_cli("eval", "samples", str(few), "--captions", str(three), "--no-fid", "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output

    Image.new("RGB", (64, 64), "white").save(few / "big.png")
    three.write_text("\n".join(captions_of(captions)[:4]))
    assert_clean_error(run_cli("eval", "samples", str(few), "--captions", str(three)),
                       "images of different sizes", "000.png is 32x32, big.png is 64x64")

    (few / "big.png").write_bytes(b"not a png")
    assert_clean_error(run_cli("eval", "samples", str(few), "--captions", str(three)), "cannot read image",
                       "big.png")


def captions_of(path):
    return path.read_text().splitlines()


def test_eval_samples_refuses_a_judge_that_is_not_one(renders):
    folder, captions, _ = renders
    assert_clean_error(run_cli("eval", "samples", str(folder), "--captions", str(captions),
                               "--judge", "random:tiny-classifier"), "not a shapes judge")


def test_eval_sweep_samples_each_scale_and_writes_results(tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("eval", "sweep", "--model", "random:tiny-base", "--scales", "1,3", "--captions", "heldout:1:10",
                     "--steps", "2", "-o", str(out), "--no-progress")
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    assert [r["guidance_scale"] for r in rows] == [1.0, 3.0]
    assert all({"acc_caption", "fid", "precision", "recall", "fid_real"} <= set(r) for r in rows)
    assert rows[0]["fid_real"] == rows[1]["fid_real"] < min(r["fid"] for r in rows)  # real renders: the floor
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 2
    assert (out / "grid-scale-1.png").exists() and (out / "grid-scale-3.png").exists()
    assert (out / "sweep.png").stat().st_size > 1000
    assert "scale 3: caption accuracy" in result.output


@pytest.mark.parametrize("args, message", [
    (("--scales", "1,x"), "comma-separated guidance scales"),
    (("--captions", "heldout:4:10"), "heldout:OBJECTS:COUNT"),
    (("--captions", "missing.txt"), "not a file"),
])
def test_eval_sweep_bad_options(args, message):
    assert_clean_error(run_cli("eval", "sweep", "--model", "random:tiny-base", *args), message)


def test_models_lists_the_bundled_models():
    result = run_cli("models")
    assert result.exit_code == 0, result.output
    assert re.search(r"bundled:shapes-judge +shapes judge, 32 px", result.output)
    assert re.search(r"bundled:shapes-base +base, 32 px", result.output)
    assert re.search(r"bundled:shapes-upsample-inpaint +upsampler, inpainting, 64 px", result.output)
