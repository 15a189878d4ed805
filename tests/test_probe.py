"""The caption probe: its bookkeeping on a model with a known preference, determinism on a real
tiny model, clear errors, and the command line on a run folder."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from glide.models import Text2ImConfig, build_model
from glide.models.presets import preset_config
from glide.models.text2im import TextEmbedding
from glide.training import TrainConfig, train
from glide.training.probe import (
    ProbeResult,
    binding_probe,
    binding_scenes,
    caption_probe,
    main,
    probe_scenes,
    probe_timesteps,
)

PREFERRED = {"colour": "red", "shape": "circle", "size": "small"}


class PreferringModel(nn.Module):
    """Predicts zero noise for captions with the preferred words and a far-off constant otherwise,
    so the caption with the most preferred words always has the lowest denoising loss."""

    def __init__(self, config: Text2ImConfig, preferred=tuple(PREFERRED.values())):
        super().__init__()
        self.config, self.preferred = config, preferred
        self.anchor = nn.Parameter(torch.zeros(()))
        self.captions: list[str] = []

    def tokenize(self, captions):
        self.captions = list(captions)
        return torch.arange(len(captions))[:, None], torch.ones(len(captions), 1, dtype=torch.bool)

    def encode_text(self, tokens, mask):
        misses = [sum(word not in self.captions[i].split() for word in self.preferred) for i in tokens[:, 0]]
        penalty = torch.tensor(misses, dtype=torch.float32)[:, None]
        return TextEmbedding(penalty, torch.zeros(len(misses), 1, 1))

    def forward(self, x, t, *, text):
        return (10.0 * text.xf_proj[:, :, None, None]).expand(-1, 6, *x.shape[2:]) + self.anchor


def tiny_text_model(image_size: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return build_model(preset_config("tiny-base", image_size=image_size, text_ctx=24))


def test_probe_picks_the_lowest_loss_caption():
    model = PreferringModel(preset_config("tiny-base", image_size=16))
    result = caption_probe(model, images=42, pairs=2)
    scenes = probe_scenes(42)
    expected = {name: sum(s[name] == word for s in scenes) / 42 for name, word in PREFERRED.items()}
    assert result.colour_accuracy == pytest.approx(expected["colour"]) == pytest.approx(6 / 42)
    assert result.shape_accuracy == pytest.approx(expected["shape"]) == pytest.approx(7 / 42)
    assert result.size_accuracy == pytest.approx(expected["size"])
    everything = sum(all(s[k] == w for k, w in PREFERRED.items()) for s in scenes) / 42
    assert result.all_accuracy == pytest.approx(everything)
    assert (result.images, result.pairs) == (42, 2)


def test_probe_scenes_cover_every_pair_and_timesteps_spread():
    scenes = probe_scenes(42, seed=3)
    assert len({(s["shape"], s["colour"]) for s in scenes}) == 42
    assert probe_scenes(42, seed=3) == scenes != probe_scenes(42, seed=4)
    assert probe_timesteps(1000, 4).tolist() == [125, 375, 625, 875]


def test_probe_on_a_tiny_model_is_deterministic_and_restores_the_mode():
    model = tiny_text_model().train()
    first = caption_probe(model, images=3, pairs=2, batch_size=5)
    assert model.training
    second = caption_probe(model, images=3, pairs=2, batch_size=64)  # batching does not change the answer
    assert isinstance(first, ProbeResult) and first == second
    for value in (first.colour_accuracy, first.shape_accuracy, first.size_accuracy, first.all_accuracy):
        assert value in (0.0, 1 / 3, 2 / 3, 1.0)
    assert first.all_accuracy <= min(first.colour_accuracy, first.shape_accuracy, first.size_accuracy)


def test_probe_refuses_models_it_cannot_probe():
    upsampler = build_model(preset_config("tiny-upsample", image_size=16, channel_mult=(1, 2)))
    with pytest.raises(ValueError, match="base model, not an upsampler"):
        caption_probe(upsampler, images=1, pairs=1)
    with pytest.raises(ValueError, match="text-conditional"):
        caption_probe(nn.Linear(2, 2), images=1)
    with pytest.raises(ValueError, match="at least 1 image"):
        caption_probe(tiny_text_model(), images=0)


def test_probe_command_on_a_run_folder(tmp_path, capsys):
    run = train(TrainConfig(out=str(tmp_path / "run"), stage="base", model="tiny-base", image_size=16,
                            model_overrides={"text_ctx": 24}, data="shapes:4", batch_size=2, steps=2, save_every=1,
                            sample_every=0, num_workers=0, progress=False, tensorboard=False, ema=(0.9,)))
    assert main([str(run), "--all", "--images", "2", "--pairs", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"colour_accuracy", "shape_accuracy", "size_accuracy", "all_accuracy"} <= rows[0].keys()
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_training_logs_the_probe_every_n_steps(tmp_path):
    """--probe-every puts the latest probe accuracies in every metrics row (NaN before the first)."""
    import math

    from .helpers import metric_rows, tiny

    run = train(tiny(tmp_path / "run", steps=4, probe_every=2, probe_images=2, sample_weights="ema-0.99"))
    rows = metric_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isnan(rows[0][k]) for k in ("probe_colour", "probe_shape", "probe_size", "probe_all"))
    for row in rows[1:]:
        assert all(0.0 <= row[k] <= 1.0 for k in ("probe_colour", "probe_shape", "probe_size", "probe_all"))
    assert rows[2]["probe_shape"] == rows[1]["probe_shape"]  # step 3 repeats step 2's probe


def test_probe_every_needs_a_base_stage():
    from glide.training.config import ConfigError

    with pytest.raises(ConfigError, match="--probe-every .*--stage base"):
        TrainConfig(stage="clip", model="tiny-clip", probe_every=10)


def test_training_logs_the_judged_caption_accuracy_of_its_sample_grids(tmp_path):
    """A base model's grid of shapes captions is read by the bundled judge; the latest accuracy is
    in every metrics row (NaN before the first grid); free-form prompts are not judged."""
    import math

    from .helpers import metric_rows, tiny

    run = train(tiny(tmp_path / "run", steps=3, sample_every=2, num_samples=2, sample_steps=2))
    rows = metric_rows(run)
    assert math.isnan(rows[0]["grid_caption_accuracy"])
    assert all(0.0 <= row["grid_caption_accuracy"] <= 1.0 for row in rows[1:])
    free = train(tiny(tmp_path / "free", steps=2, sample_every=2, num_samples=2, sample_steps=2,
                      sample_prompts=("an oil painting of a corgi",)))
    assert all("grid_caption_accuracy" not in row for row in metric_rows(free))


def test_binding_probe_finds_the_preferred_relation_and_a_bag_of_words_cannot_bind():
    from glide.data.shapes import relation

    model = PreferringModel(preset_config("tiny-base", image_size=16), preferred=("above",))
    result = binding_probe(model, images=24, pairs=2)
    scenes = binding_scenes(24)
    assert all(len(scene) == 2 for scene in scenes)
    assert result.relation_accuracy == pytest.approx(sum(relation(a, b) == "above" for a, b in scenes) / 24)
    # the colour-swapped caption holds the same words: a bag-of-words model cannot prefer the truth
    assert result.binding_accuracy == 0.0 and (result.images, result.pairs) == (24, 2)


def test_binding_probe_on_a_real_model_is_deterministic_and_bounded():
    torch.manual_seed(0)
    model = build_model(preset_config("tiny-base", image_size=16, text_ctx=64))  # two-object captions fit
    first, second = binding_probe(model, images=3, pairs=2), binding_probe(model, images=3, pairs=2, batch_size=4)
    assert first == second
    assert 0 <= first.relation_accuracy <= 1 and 0 <= first.binding_accuracy <= 1
