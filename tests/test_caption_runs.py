"""``glide sample --captions FILE``: numbered images + captions.jsonl, resumable, refusing to mix
runs, and split across torchrun ranks with the same images as one process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from .helpers import assert_clean_error, run_cli, torchrun_glide

CAPTIONS = ["a small red circle", "a large blue square", "a small green star above a large red circle"]
TINY = ("--model", "random:tiny-base", "--upsampler", "none", "--steps", "2", "--no-progress", "-n", "2")


@pytest.fixture
def caption_file(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("\n".join(CAPTIONS[:2]) + "\n\n" + CAPTIONS[2] + "\n")  # blank lines are skipped
    return path


def pixels(folder, number):
    return np.asarray(Image.open(folder / f"{number:06d}.png"))


def test_a_caption_file_gives_numbered_images_and_captions_for_eval(caption_file, tmp_path):
    out = tmp_path / "out"
    result = run_cli("sample", "--captions", str(caption_file), "-o", str(out), *TINY)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == [f"{j:06d}.png" for j in range(6)]  # no grid: the folder is the sample set
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert rows == [{"file": f"{j:06d}.png", "caption": CAPTIONS[j // 2]} for j in range(6)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"] == 6 and manifest["seed"] == 0 and not (out / "shards").exists()
    from glide.evaluation.report import read_captions

    assert read_captions(out / "captions.jsonl", files) == [CAPTIONS[j // 2] for j in range(6)]


def test_an_interrupted_run_resumes_without_redoing_finished_images(caption_file, tmp_path):
    out = tmp_path / "out"
    assert run_cli("sample", "--captions", str(caption_file), "-o", str(out), *TINY).exit_code == 0
    first = {j: pixels(out, j) for j in range(6)}
    kept = (out / "000001.png").stat().st_mtime_ns
    for j in (3, 4):  # a run killed before these were written
        (out / f"{j:06d}.png").unlink()
    (out / "captions.jsonl").unlink()
    result = run_cli("sample", "--captions", str(caption_file), "-o", str(out), *TINY)
    assert result.exit_code == 0, result.output
    assert "4 of 6 images already there; sampling the other 2" in result.output
    assert (out / "000001.png").stat().st_mtime_ns == kept  # not sampled again
    assert all(np.array_equal(pixels(out, j), first[j]) for j in range(6))  # the same images as before
    assert len((out / "captions.jsonl").read_text().splitlines()) == 6


def test_a_folder_of_another_run_is_refused_and_left_alone(caption_file, tmp_path):
    out = tmp_path / "out"
    assert run_cli("sample", "--captions", str(caption_file), "-o", str(out), *TINY).exit_code == 0
    before = sorted(out.iterdir())
    assert_clean_error(run_cli("sample", "--captions", str(caption_file), "-o", str(out), *TINY, "--seed", "5"),
                       "holds images of another run (differs in: seed)")
    assert sorted(out.iterdir()) == before


@pytest.mark.parametrize("args, message", [
    (("a red circle",), "not both"),
    (("--rerank", "2"), "--rerank is not available with --captions"),
])
def test_caption_file_usage_errors(caption_file, args, message):
    assert_clean_error(run_cli("sample", "--captions", str(caption_file), *args, *TINY), message)


def test_an_empty_caption_file_and_no_prompt_at_all_are_clear_errors(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    assert_clean_error(run_cli("sample", "--captions", str(empty), *TINY), "holds no captions")
    assert_clean_error(run_cli("sample", *TINY), "give a prompt")


@pytest.mark.torchrun
def test_two_torchrun_processes_write_the_images_of_one_process(caption_file, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert run_cli("sample", "--captions", str(caption_file), "-o", str(single), *TINY).exit_code == 0
    result = torchrun_glide("sample", "--captions", str(caption_file), "-o", str(sharded), *TINY, "--device", "cpu")
    assert result.returncode == 0, result.stderr[-4000:]
    for j in range(6):  # rank 0 sampled 0, 2, 4 and rank 1 sampled 1, 3, 5: other batches
        assert np.array_equal(pixels(sharded, j), pixels(single, j)), f"image {j} differs"
    assert (sharded / "captions.jsonl").read_text() == (single / "captions.jsonl").read_text()
    assert not (sharded / "shards").exists()  # merged by rank 0
