"""glide.evaluation: the held-out split, the shapes judge (bundled) and its caption scores, metrics."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from glide.checkpoints import load_model, parse_spec, save_model
from glide.data import HELD_OUT_OBJECTS, build_dataset, heldout_captions
from glide.data.shapes import COLOURS, SHAPES, SIZES, caption_for, is_held_out, sample_scene, scene_for_caption
from glide.errors import CheckpointError, SpecError
from glide.evaluation.judge import load_judge, read_scenes, score_caption
from glide.evaluation.metrics import (
    FID_MIN_SAMPLES,
    Features,
    bootstrap_ci,
    clip_score,
    fid_with_ci,
    frechet_distance,
    inception_features,
    precision_recall,
)
from glide.evaluation.train_judge import heldout_accuracy, render_batch, train_judge
from glide.models import build_preset
from glide.models.judge import JudgeOutput

# ---------------------------------------------------------------------------- held-out split


def test_held_out_objects_are_two_per_shape_and_leave_every_attribute_in_training():
    colours = list(COLOURS)
    expected = {t for i, s in enumerate(SHAPES)
                for t in (("small", colours[2 * i % 7], s), ("large", colours[(2 * i + 3) % 7], s))}
    assert HELD_OUT_OBJECTS == expected and len(HELD_OUT_OBJECTS) == 12
    training = {(z, c, s) for z in SIZES for c in COLOURS for s in SHAPES} - HELD_OUT_OBJECTS
    assert {t[0] for t in training} == set(SIZES)
    assert {t[1] for t in training} == set(COLOURS)
    assert {t[2] for t in training} == set(SHAPES)


def test_train_scenes_hold_no_held_out_object_and_heldout_scenes_at_least_one():
    train = build_dataset("shapes-train:300:1-3", 32)
    heldout = build_dataset("shapes-heldout:300:1-3", 32)
    assert not any(is_held_out(a) for i in range(300) for a in train.scene(i))
    assert all(any(map(is_held_out, heldout.scene(i))) for i in range(300))
    single = build_dataset("shapes-heldout:50:1", 32)
    assert all(len(single.scene(i)) == 1 and is_held_out(single.scene(i)[0]) for i in range(50))
    everything = build_dataset("shapes:300", 32)
    flags = [any(map(is_held_out, everything.scene(i))) for i in range(300)]
    assert any(flags) and not all(flags)  # "all" keeps both kinds, as before


def test_split_scenes_are_deterministic_and_all_is_the_first_draw():
    a, b = build_dataset("shapes-train:20", 32, seed=3), build_dataset("shapes-train:20", 32, seed=3)
    assert [a.scene(i) for i in range(20)] == [b.scene(i) for i in range(20)]
    plain = build_dataset("shapes:20", 32, seed=3)
    assert plain.scene(5) == sample_scene(np.random.default_rng([3, 5]))


def test_split_specs_and_their_errors():
    assert build_dataset("shapes-heldout:7:2-2", 32).split == "heldout"
    assert len(build_dataset("shapes-train:7", 32)) == 7
    with pytest.raises(ValueError, match="shapes-train:N"):
        build_dataset("shapes-train:x", 32)
    with pytest.raises(ValueError, match="unknown split"):
        build_dataset("shapes:5", 32, split="test")


def test_heldout_captions_are_deterministic_held_out_and_of_the_asked_size():
    for n in (1, 2):
        pairs = heldout_captions(40, n, seed=5)
        assert pairs == heldout_captions(40, n, seed=5) and pairs != heldout_captions(40, n, seed=6)
        assert all(len(scene) == n and caption_for(scene) == caption for caption, scene in pairs)
        assert all(any(map(is_held_out, scene)) for _, scene in pairs)


def test_scene_for_caption_lays_out_a_scene_with_that_caption():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3):
        for caption, _ in heldout_captions(30, n, seed=1):
            assert caption_for(scene_for_caption(caption, rng)) == caption


# ---------------------------------------------------------------------------- the judge model


def test_judge_saves_and_loads_with_its_config(tmp_path):
    judge = build_preset("shapes-judge").eval()
    path = save_model(judge, tmp_path / "judge.safetensors")
    loaded = load_model(path)
    images = torch.rand(2, 3, 64, 64) * 2 - 1  # resized to 32 inside
    with torch.no_grad():
        a, b = judge(images), loaded(images)
    assert a.presence.shape == (2, 42) and a.centre.shape == (2, 42, 2) and a.features.shape == (2, 192)
    torch.testing.assert_close(a.centre, b.centre)
    with pytest.raises(ValueError, match=r"RGB images \[N, 3, H, W\]"):
        judge(torch.zeros(2, 1, 32, 32))


def test_bundled_spec_loads_the_packaged_judge_and_names_the_bundled_models():
    judge = load_model("bundled:shapes-judge")
    assert judge.config.model_type == "shapes-judge"
    assert parse_spec("bundled:shapes-judge", "classifier").kind == "bundled"
    with pytest.raises(CheckpointError, match="no bundled model 'nope'; bundled models: .*shapes-judge"):
        load_model("bundled:nope")
    with pytest.raises(SpecError, match="no bundled model"):
        parse_spec("bundled:nope", "base")
    with pytest.raises(ValueError, match="not a shapes judge"):
        load_judge("random:tiny-classifier")


@pytest.mark.parametrize("resolution", [32, 64])
def test_bundled_judge_reads_fresh_held_out_renders(resolution):
    judge = load_judge()
    for n in (1, 2, 3):
        scores = heldout_accuracy(judge, 200, n, seed=777 + resolution, resolution=resolution)
        assert scores["caption"] >= 0.98, (n, resolution, scores)


def test_training_a_judge_writes_a_float16_file_that_loads(tmp_path, capsys):
    train_judge(tmp_path / "j.safetensors", steps=2, batch_size=4, log_every=2)
    from glide.checkpoints import read_checkpoint

    state, config = read_checkpoint(tmp_path / "j.safetensors")
    assert config["model_type"] == "shapes-judge" and {v.dtype for v in state.values()} == {torch.float16}
    assert load_model(tmp_path / "j.safetensors").config == build_preset("shapes-judge").config
    assert "held-out caption acc" in capsys.readouterr().out


# ---------------------------------------------------------------------------- caption scores

SCENE = [{"shape": "circle", "colour": "red", "size": "small", "x": 0.3, "y": 0.2},
         {"shape": "square", "colour": "blue", "size": "large", "x": 0.6, "y": 0.7}]
CAPTION = caption_for(SCENE)  # "a small red circle above a large blue square"


def test_the_exact_scene_scores_one_everywhere():
    assert set(score_caption(CAPTION, SCENE).values()) == {1.0}


def test_a_wrong_colour_costs_the_colour_and_the_caption_only():
    scene = [dict(SCENE[0], colour="orange"), SCENE[1]]
    scores = score_caption(CAPTION, scene)
    assert scores["colour"] == 0.5 and scores["shape"] == 1.0 and scores["size"] == 1.0
    assert scores["object"] == 0.5 and scores["caption"] == 0.0


def test_an_extra_object_a_wrong_size_or_a_wrong_relation_fails_the_caption():
    extra = score_caption(CAPTION, [*SCENE, {"shape": "star", "colour": "pink", "size": "small", "x": 0.9, "y": 0.1}])
    assert extra["count"] == 0.0 and extra["object"] == 1.0 and extra["caption"] == 0.0
    small = score_caption(CAPTION, [SCENE[0], dict(SCENE[1], size="small")])
    assert small["size"] == 0.5 and small["caption"] == 0.0
    swapped = score_caption(CAPTION, [dict(SCENE[0], y=0.9), SCENE[1]])
    assert swapped["relation"] == 0.0 and swapped["object"] == 1.0 and swapped["caption"] == 0.0
    missing = score_caption(CAPTION, [SCENE[1]])
    assert missing["object"] == 0.5 and missing["relation"] == 0.0 and missing["caption"] == 0.0
    with pytest.raises(ValueError, match="shapes grammar"):
        score_caption("a photo of a corgi", SCENE)


def test_read_scenes_keeps_the_present_pairs_with_size_and_centre():
    presence = torch.full((1, 42), -5.0)
    presence[0, 0], presence[0, 8] = 5.0, 5.0  # red circle, orange square
    large = torch.tensor([[-1.0] * 8 + [1.0] + [-1.0] * 33])
    centre = torch.full((1, 42, 2), 0.5)
    centre[0, 8] = torch.tensor([0.25, 0.75])
    scene = read_scenes(JudgeOutput(presence, large, centre, torch.zeros(1, 4)))[0]
    assert scene == [{"shape": "circle", "colour": "red", "size": "small", "x": 0.5, "y": 0.5},
                     {"shape": "square", "colour": "orange", "size": "large", "x": 0.25, "y": 0.75}]


# ---------------------------------------------------------------------------- metrics


def _features(n=200, d=8, shift=0.0, seed=0, network="shapes-judge"):
    g = torch.Generator().manual_seed(seed)
    return Features(torch.randn(n, d, generator=g) + shift, network)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    a = _features()
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    fids = [frechet_distance(a, _features(shift=s, seed=1)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert fids == sorted(fids) and fids[-1] > 10 * fids[0]
    # a pure mean shift of s in every one of d dimensions adds d * s^2
    assert frechet_distance(a, Features(a.values + 1.0, a.network)) == pytest.approx(8.0, rel=1e-6)


def test_fid_refuses_features_from_another_network_and_too_few_samples():
    with pytest.raises(ValueError, match="different networks"):
        frechet_distance(_features(), _features(network="inception-v3"))
    with pytest.raises(ValueError, match=f"at least {FID_MIN_SAMPLES} images per set; the second set has 3"):
        frechet_distance(_features(), _features(n=3))


def test_precision_and_recall_of_identical_and_disjoint_sets():
    a = _features()
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, _features(shift=100.0, seed=1)) == (0.0, 0.0)
    # fakes collapsed onto a few real points: precise, but they cover little of the real set
    collapsed = Features(a.values[:4].repeat(50, 1), a.network)
    precision, recall = precision_recall(a, collapsed)
    assert precision == 1.0 and recall < 0.2


def test_bootstrap_intervals_contain_the_point_estimate():
    values = [1.0] * 70 + [0.0] * 30
    low, high = bootstrap_ci(values, seed=1)
    assert low < 0.7 < high and 0.55 < low and high < 0.85
    fid, (low, high) = fid_with_ci(_features(), _features(shift=0.3, seed=1), resamples=20)
    assert low <= fid <= high and high > low


def test_clip_score_with_a_tiny_random_noised_clip():
    from glide.checkpoints.specs import random_clip

    clip = random_clip(32)
    images = torch.rand(3, 3, 64, 64) * 2 - 1  # resized to the CLIP's 32 px
    scores = clip_score(clip, images, ["a red circle", "a blue square", "a green star"])
    assert scores.shape == (3,) and bool(((scores >= 0) & (scores <= 100)).all())
    expected = 100 * clip.score(torch.nn.functional.interpolate(images, size=(32, 32), mode="bicubic",
                                                                antialias=True).clamp(-1, 1),
                                *clip.tokenize(["a red circle", "a blue square", "a green star"])).clamp(min=0)
    torch.testing.assert_close(scores, expected.detach())
    with pytest.raises(ValueError, match="2 captions for 3 images"):
        clip_score(clip, images, ["a", "b"])


def test_inception_features_say_what_to_install_or_download(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'glide\[eval\]'"):
        inception_features(torch.zeros(2, 3, 32, 32))
    fake = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    fake.FeatureExtractorInceptionV3 = object
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", fake)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv("GLIDE_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05-6726825d.pth"):
        inception_features(torch.zeros(2, 3, 32, 32))


def test_render_batch_is_white_outside_the_shapes():
    images = render_batch([[]], 32)
    assert images.shape == (1, 3, 32, 32) and bool((images == 1).all())
