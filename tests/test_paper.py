"""``glide eval paper`` (glide.evaluation.paper): the paper's comparisons in miniature, on a few
images and steps: every table, plot and grid written, the inpainting invariants, and a resumed run
that samples nothing again."""

from __future__ import annotations

import json

import pytest
import torch

from glide.evaluation import paper
from glide.evaluation.paper import (
    Models,
    SampleCache,
    Setting,
    best_rows,
    guidance_settings,
    inpainting_inputs,
    object_box,
    psnr,
    run_paper,
)
from glide.pipelines import StageOptions

from .helpers import assert_clean_error, run_cli

BASE = StageOptions(sampler="ddpm", timesteps=2, guidance_scale=3.0)


@pytest.fixture(scope="module")
def models():
    from glide.checkpoints.specs import random_clip

    bundled = Models.bundled()
    bundled.clean_clip = random_clip(32)  # a stand-in: any CLIP of the base's size
    return bundled


def test_sample_cache_makes_once_and_stores_what_a_png_would_hold(tmp_path):
    cache, calls = SampleCache(tmp_path), []

    def make():
        calls.append(1)
        return torch.linspace(-1.2, 1.2, 2 * 3 * 4 * 4).view(2, 3, 4, 4)

    first, seconds = cache.get("k", make)
    again, same_seconds = cache.get("k", make)
    assert len(calls) == 1 and torch.equal(first, again) and seconds == same_seconds >= 0
    assert first.min() == -1 and first.max() == 1  # clamped, quantised to 8 bits
    assert torch.allclose(first, make().clamp(-1, 1), atol=1 / 127.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.safetensors"]  # no partial file left
    # a run with another --count remakes the set instead of judging 2 images against 3 captions
    made = len(calls)
    assert cache.get("k", make, count=2)[0].shape[0] == 2 and len(calls) == made
    assert cache.get("k", lambda: make()[:1].expand(3, -1, -1, -1), count=3)[0].shape[0] == 3
    assert cache.get("k", make, count=3)[0].shape[0] == 3 and len(calls) == made + 1


def test_curves_that_sample_the_same_thing_share_a_key():
    settings = guidance_settings(BASE, clean_clip=True)
    keys = [s.key for s in settings]
    assert len(set(keys)) == len(keys)
    assert Setting("cfg", 3, BASE).key == Setting("ddpm", 2, BASE).key == "ddpm-2-cfg3"
    assert Setting("clip-clean", 3, BASE, "clip-clean").key != Setting("clip-noised", 3, BASE, "clip-noised").key
    assert {s.options.guidance_scale for s in settings if s.guidance} == {1.0}  # gradient guidance without CFG


def test_best_rows_pick_the_most_accurate_then_the_lowest_fid():
    rows = [dict(family="a", acc_caption=0.5, fid=3.0), dict(family="a", acc_caption=0.9, fid=9.0),
            dict(family="a", acc_caption=0.9, fid=4.0), dict(family="b", acc_caption=0.1, fid=1.0)]
    assert best_rows(rows) == [rows[2], rows[3]]


def test_the_inpainting_box_hides_its_object_and_keeps_the_others():
    from glide.data import heldout_captions

    _, scene = heldout_captions(1, 2, seed=4)[0]
    sources, keeps = inpainting_inputs([scene], 32)
    box = object_box(scene[0], 32)
    assert keeps.shape == (1, 1, 32, 32) and set(keeps.unique().tolist()) <= {0.0, 1.0}
    assert (keeps[0] + box >= 1).all()  # everything outside the box is kept
    assert 0 < float((1 - keeps).sum()) <= float(box.sum())
    from glide.evaluation.judge import judge_images

    found, _ = judge_images(Models.bundled().judge, sources)
    assert [(o["shape"], o["colour"]) for o in found[0]] == [(scene[1]["shape"], scene[1]["colour"])]


def test_psnr_of_equal_and_of_shifted_images():
    a = torch.zeros(2, 3, 8, 8)
    assert (psnr(a, a) > 90).all()
    assert torch.allclose(psnr(a, a + 0.2), torch.full((2,), 20.0), atol=1e-4)  # 0.1 on [0, 1]: 20 dB


def test_every_experiment_end_to_end_then_resumed_from_the_cache(models, tmp_path, monkeypatch):
    guidance = [Setting(paper.UNGUIDED, 0, StageOptions(sampler="ddpm", timesteps=2, guidance_scale=1.0)),
                Setting("cfg", 3, BASE)] + [
        Setting(name, 3, StageOptions(sampler="ddpm", timesteps=2, guidance_scale=1.0), name)
        for name in ("clip-noised", "clip-clean", "classifier")]
    samplers = [Setting("ddim", 2, StageOptions(sampler="ddim", timesteps=2)),
                Setting("reference-ddpm", 3, StageOptions(sampler="ddpm", timesteps=3))]
    upsamplers = [StageOptions(sampler="dpm++2m-sde", timesteps="trailing6", guidance_scale=1.0, strength=0.5)]
    kwargs = dict(count=10, batch_size=6, progress=False, base=BASE, guidance=guidance, samplers=samplers,
                  upsamplers=upsamplers)
    results = run_paper(tmp_path, models, **kwargs)

    rows = json.loads((tmp_path / "guidance.json").read_text())
    assert [r["family"] for r in rows] == ["unguided", "cfg", "clip-noised", "clip-clean", "classifier"]
    assert all(r["images"] == 10 and 0 <= r["acc_caption"] <= 1 and r["fid"] > 0 for r in rows)
    assert len(json.loads((tmp_path / "guidance-best.json").read_text())) == 5
    retrieval = json.loads((tmp_path / "clip-retrieval.json").read_text())
    assert [r["clip"] for r in retrieval] == ["clip-noised", "clip-clean"]
    assert retrieval[0]["0"] >= 0.5 and all(0 <= r["900"] <= 1 for r in retrieval)  # the bundled CLIP at t = 0
    inpaint = {r["method"]: r for r in json.loads((tmp_path / "inpainting.json").read_text())}
    assert inpaint["inpaint model + pasting"]["unmasked_change_max"] < 0.005  # the known region is kept
    assert inpaint["base + pasting"]["unmasked_change_max"] < 0.005
    assert all(0 <= r["object_filled"] <= 1 for r in inpaint.values())
    up = {r["method"]: r for r in json.loads((tmp_path / "upsampler.json").read_text())}
    assert up["bicubic"]["psnr_db"] > 15 and up["truth"]["psnr_db"] is None
    variant = up["upsampler dpm++2m-sde trailing6 s0.5"]
    assert variant["model_calls"] == 3 and variant["psnr_db"] > 15 and up["upsampler"]["model_calls"] >= 1
    for name in ("guidance.png", "samplers.png", "grids/inpainting.png", "grids/upsampler.png",
                 "grids/ddpm-2-cfg3.png"):
        assert (tmp_path / name).stat().st_size > 500, name
    tables = paper.markdown_tables(tmp_path)
    assert "guidance (best scale of each)" in tables and "| inpaint model + pasting |" in tables

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached setting was sampled again")

    monkeypatch.setattr(paper, "run_stage", no_sampling)
    again = run_paper(tmp_path, models, **kwargs)
    for name in ("guidance", "samplers", "inpainting", "upsampler"):
        assert again[name]["rows"] == results[name]["rows"]


def test_eval_paper_refuses_an_unknown_experiment():
    assert_clean_error(run_cli("eval", "paper", "--only", "guidance,fig7"), "unknown experiments ['fig7']")
