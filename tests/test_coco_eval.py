"""``glide eval coco``: the zero-shot MS-COCO protocol on a tiny stand-in of the COCO layout
(annotation JSON + image folder), with a tiny feature network in place of Inception (tests never
download its weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from glide.evaluation import metrics
from glide.evaluation.coco import read_coco_captions

from .helpers import assert_clean_error, run_cli

IMAGES = 14


@pytest.fixture
def coco(tmp_path):
    """COCO's layout: annotations/captions_val2014.json and val2014/ of non-square JPEGs."""
    folder = tmp_path / "val2014"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(IMAGES):
        name = f"COCO_val2014_{i:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(folder / name)
        images.append({"id": 100 + i, "file_name": name, "height": 30 + i, "width": 40})
        annotations += [{"id": 2 * i + k, "image_id": 100 + i, "caption": f"a photo  number {i}, take {k}\n"}
                        for k in range(2)]
    path = tmp_path / "annotations" / "captions_val2014.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path, folder


class TinyFeatures(torch.nn.Module):
    """A fixed random stand-in for Inception: uint8 [B, 3, H, W] -> [B, 16]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=2)

    def forward(self, images):
        return self.conv(images.float() / 127.5 - 1).mean((2, 3))


@pytest.fixture
def tiny_inception(monkeypatch):
    calls = []

    def network(weights=None):
        calls.append(weights)
        return TinyFeatures()

    monkeypatch.setattr(metrics, "inception_network", network)
    return calls


def test_captions_are_distinct_images_drawn_by_seed(coco):
    path, _ = coco
    pairs = read_coco_captions(path, 10, seed=1)
    assert len({name for name, _ in pairs}) == 10
    assert pairs == read_coco_captions(path, 10, seed=1) != read_coco_captions(path, 10, seed=2)
    assert all(caption.startswith("a photo number") and "\n" not in caption for _, caption in pairs)


def test_the_protocol_end_to_end_then_resumed(coco, tmp_path, tiny_inception):
    annotations, images = coco
    out = tmp_path / "eval"
    args = ("eval", "coco", "--annotations", str(annotations), "--images", str(images), "--count", "12",
            "--scales", "1,3", "--recipe", "default", "--model", "random:tiny-base", "--upsampler", "none",
            "--device", "cpu", "-o", str(out), "--no-progress")
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    refs = sorted((out / "reference-64").glob("*.png"))
    assert len(refs) == 12 and all(Image.open(p).size == (64, 64) for p in refs)  # centre-cropped, resized
    for scale in ("1", "3"):
        folder = out / f"samples-scale-{scale}"
        assert len(list(folder.glob("*.png"))) == 12
        assert len((folder / "captions.jsonl").read_text().splitlines()) == 12
    report = json.loads((out / "results.json").read_text())
    assert [r["guidance_scale"] for r in report["rows"]] == [1.0, 3.0]
    assert all(r["fid"] > 0 and r["fid_ci95"][0] <= r["fid"] <= r["fid_ci95"][1] for r in report["rows"])
    assert report["paper"]["GLIDE (classifier-free guidance), 256 px"] == 12.24
    assert (out / "fid.png").stat().st_size > 1000 and "scale 3: FID" in result.output

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png") if p.parent.name.startswith(("samples", "ref"))}
    assert len(stamps) == 3 * 12  # references and both scales' samples
    again = run_cli(*args)
    assert again.exit_code == 0, again.output
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing sampled or resized again
    assert json.loads((out / "results.json").read_text())["rows"] == report["rows"]


def test_bad_coco_inputs_get_clear_errors(coco, tmp_path, tiny_inception):
    annotations, images = coco
    base = ("eval", "coco", "--model", "random:tiny-base", "--upsampler", "none", "-o", str(tmp_path / "o"),
            "--no-progress")
    assert_clean_error(run_cli(*base, "--annotations", str(annotations), "--images", str(images), "--count", "20"),
                       f"captions for {IMAGES} images, fewer than the 20 asked for")
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": []}')
    assert_clean_error(run_cli(*base, "--annotations", str(broken), "--images", str(images), "--count", "10"),
                       "is not a COCO captions file")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(run_cli(*base, "--annotations", str(annotations), "--images", str(empty), "--count", "10"),
                       "cannot read the COCO image")
