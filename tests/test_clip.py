"""Noised CLIP: official state-dict layout, reference outputs and the guidance gradient."""

from __future__ import annotations

import json
import math

import pytest
import torch

from glide.guidance import clip_cond_fn, clip_cond_fn_from_tokens
from glide.models.clip import (
    ClipConfig,
    ClipImageEncoder,
    ClipTextEncoder,
    NoisedClip,
    official_clip_config,
)

from .helpers import load_fixture, load_fixture_clip, load_json

ATOL = 1e-4


def _tiny_config(**overrides) -> ClipConfig:
    d = dict(
        diffusion_steps=10,
        image_size=16,
        patch_size=8,
        n_vocab=64,
        max_text_len=12,
        n_embd=8,
        n_head_state_text=4,
        n_head_text=2,
        n_xf_blocks_text=1,
        n_head_state_image=4,
        n_head_image=2,
        n_xf_blocks_image=1,
    )
    d.update(overrides)
    return ClipConfig(**d)


@pytest.fixture(scope="module")
def reference_clip(fixtures_dir) -> NoisedClip:
    return load_fixture_clip()


@pytest.fixture(scope="module")
def clip_forward(fixtures_dir) -> dict[str, torch.Tensor]:
    return load_fixture("clip_forward.pt")


# -- reference outputs ------------------------------------------------------------------------


def test_logit_scale_matches_reference(reference_clip, clip_forward):
    assert reference_clip.logit_scale.dtype == torch.float32
    torch.testing.assert_close(reference_clip.logit_scale, clip_forward["logit_scale"], rtol=0, atol=0)


def test_text_features_and_embeddings_match_reference(reference_clip, clip_forward):
    tokens, lens = clip_forward["clip_tokens"], clip_forward["clip_lens"]
    with torch.no_grad():
        features = reference_clip.text_features(tokens, lens)
        embeddings = reference_clip.embed_text(tokens, lens)
    torch.testing.assert_close(features, clip_forward["text_features"], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(embeddings, clip_forward["text_embeddings"], atol=ATOL, rtol=ATOL)


def test_image_features_and_embeddings_match_reference(reference_clip, clip_forward):
    x_t, t = clip_forward["x_t"], clip_forward["t"]
    with torch.no_grad():
        features = reference_clip.image_features(x_t, t)
        embeddings = reference_clip.embed_image(x_t, t)
    torch.testing.assert_close(features, clip_forward["image_features"], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(embeddings, clip_forward["image_embeddings"], atol=ATOL, rtol=ATOL)


def _assert_grad_close(grad: torch.Tensor, expected: torch.Tensor) -> None:
    assert grad.shape == expected.shape
    rel = (grad - expected).abs().max() / expected.abs().max()
    assert rel < 1e-3, f"cond_fn gradient differs by {rel:.2e} of its max"


def test_cond_fn_from_tokens_matches_reference_gradient(reference_clip, clip_forward):
    spec = load_json("manifest.json")["files"]["clip_forward.pt"]
    n = len(spec["cond_fn_prompts"])
    cond_fn = clip_cond_fn_from_tokens(
        reference_clip, clip_forward["clip_tokens"][:n], clip_forward["clip_lens"][:n], spec["grad_scale"]
    )
    x_t = clip_forward["x_t"]
    grad = cond_fn(x_t, clip_forward["t"])
    _assert_grad_close(grad, clip_forward["cond_fn_grad"])
    assert not grad.requires_grad and not x_t.requires_grad


def test_cond_fn_from_prompts_matches_reference_gradient(reference_clip, clip_forward, vocab_dir):
    spec = load_json("manifest.json")["files"]["clip_forward.pt"]
    tokens, lens = reference_clip.tokenize(spec["prompts"])
    assert torch.equal(tokens, clip_forward["clip_tokens"])
    assert torch.equal(lens, clip_forward["clip_lens"])
    cond_fn = clip_cond_fn(reference_clip, spec["cond_fn_prompts"], spec["grad_scale"])
    _assert_grad_close(cond_fn(clip_forward["x_t"], clip_forward["t"]), clip_forward["cond_fn_grad"])


def test_score_is_cosine_similarity_of_pairs(reference_clip, clip_forward):
    x_t = clip_forward["x_t"]
    tokens, lens = clip_forward["clip_tokens"][:2], clip_forward["clip_lens"][:2]
    with torch.no_grad():
        scores = reference_clip.score(x_t, tokens, lens, t=clip_forward["t"])
        one_text = reference_clip.score(x_t, tokens[:1], lens[:1], t=0)
        clean = reference_clip.embed_image(x_t, torch.zeros(2, dtype=torch.long))
    expected = (clip_forward["image_embeddings"] * clip_forward["text_embeddings"][:2]).sum(-1)
    torch.testing.assert_close(scores, expected, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(one_text, clean @ reference_clip.embed_text(tokens[:1], lens[:1])[0])


# -- state-dict layout --------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ["image", "text"])
def test_fixture_state_dict_keys_and_shapes(encoder, fixtures_dir):
    info = load_json("clip_config.json")
    config = ClipConfig.from_dict(info["config_yaml_keys"])
    with torch.device("meta"):
        module = (ClipImageEncoder if encoder == "image" else ClipTextEncoder)(config)
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert shapes == info[f"{encoder}_state_dict_shapes"]
    assert sum(p.numel() for p in module.parameters()) == info["derived"][f"num_parameters_{encoder}_encoder"]


@pytest.mark.parametrize("encoder", ["image", "text"])
def test_full_size_state_dict_matches_official(encoder, fixtures_dir):
    official = load_json("official_configs.json")["clip"]
    config = ClipConfig.from_dict(official["config_yaml"])
    assert config == official_clip_config()
    with torch.device("meta"):
        module = (ClipImageEncoder if encoder == "image" else ClipTextEncoder)(config)
    expected = official[f"{encoder}_encoder"]
    shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert list(shapes) == list(expected["state_dict_shapes"])
    assert shapes == expected["state_dict_shapes"]
    assert sum(p.numel() for p in module.parameters()) == expected["num_parameters"]


def test_logit_scale_is_in_no_state_dict_and_survives_meta_init():
    config = _tiny_config(logit_scale=50.0)
    with torch.device("meta"):
        model = NoisedClip(config)
    assert not any("logit_scale" in k for k in model.state_dict())
    model = model.to_empty(device="cpu")
    model.reset_buffers()
    torch.testing.assert_close(model.logit_scale, torch.tensor(math.log(50.0)))
    stds = model.image_encoder.blocks["input"].channel_stds.flatten()
    torch.testing.assert_close(stds, torch.tensor([68.50053285, 66.63215831, 70.32316309]))


# -- behaviour -----------------------------------------------------------------------------------


def test_text_features_ignore_tokens_after_the_end_token():
    torch.manual_seed(0)
    model = NoisedClip(_tiny_config()).eval()
    tokens = torch.randint(0, 64, (2, 12))
    lens = torch.tensor([5, 12])
    changed = tokens.clone()
    changed[0, 5:] = 0
    with torch.no_grad():
        a = model.text_features(tokens, lens)
        b = model.text_features(changed, lens)
        short = model.text_features(tokens[:1, :5], lens[:1])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(short, a[:1])


def test_cond_fn_gradient_equals_autograd_of_logit():
    torch.manual_seed(0)
    model = NoisedClip(_tiny_config()).eval()
    tokens, lens = torch.randint(0, 64, (1, 12)), torch.tensor([7])
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    t = torch.tensor([0, 4, 9])
    grad = clip_cond_fn_from_tokens(model, tokens, lens, grad_scale=2.0)(x, t)
    x_req = x.clone().requires_grad_(True)
    logits = model(x_req, t, tokens, lens)  # [3, 1]
    (expected,) = torch.autograd.grad(logits.sum(), x_req)
    torch.testing.assert_close(grad, 2.0 * expected)


def test_query_and_value_bias_middle_third_gets_no_gradient():
    torch.manual_seed(0)
    model = NoisedClip(_tiny_config())
    x, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([1, 2])
    model.image_features(x, t).square().sum().backward()
    attn = model.image_encoder.blocks["block_0"].f_attn
    for bias in (attn.f_q.b, attn.f_v.b):  # 8 values: chunk(3) -> 3, 3, 2
        assert bias.grad[3:6].abs().sum() == 0
        assert bias.grad[:3].abs().sum() > 0
    assert attn.f_c.b.grad[3:6].abs().sum() > 0


@pytest.mark.parametrize(
    "shape, match", [((2, 3, 32, 32), "16x16"), ((2, 1, 16, 16), "3, 16, 16"), ((3, 16, 16), "3, 16, 16")]
)
def test_wrong_image_shape_raises(shape, match):
    model = NoisedClip(_tiny_config())
    with pytest.raises(ValueError, match=match):
        model.embed_image(torch.zeros(shape), 0)


def test_bad_timesteps_and_text_inputs_raise():
    model = NoisedClip(_tiny_config())
    x = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="shape"):
        model.embed_image(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        model.embed_image(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="L <= 12"):
        model.embed_text(torch.zeros(1, 13, dtype=torch.long), torch.tensor([2]))
    with pytest.raises(ValueError, match="lens"):
        model.embed_text(torch.zeros(1, 12, dtype=torch.long), torch.tensor([0]))
    cond_fn = clip_cond_fn_from_tokens(model, torch.zeros(2, 12, dtype=torch.long), torch.tensor([2, 2]), 1.0)
    with pytest.raises(ValueError, match="2 texts for 3 images"):
        cond_fn(torch.zeros(3, 3, 16, 16), torch.zeros(3, dtype=torch.long))


# -- config --------------------------------------------------------------------------------------


def test_config_round_trip_and_files(tmp_path):
    config = _tiny_config()
    assert ClipConfig.from_dict(config.to_dict()) == config
    assert ClipConfig.from_dict({**config.to_dict(), "model_type": "clip"}) == config
    assert config.to_dict()["tokenizer"] == {"kind": "clip-bpe"}

    official_keys = {k: v for k, v in official_clip_config().to_dict().items() if k != "tokenizer"}
    yaml_text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in official_keys.items())
    (tmp_path / "config.yaml").write_text("# official layout\n" + yaml_text)
    (tmp_path / "config.json").write_text(json.dumps(official_keys))
    assert ClipConfig.from_file(tmp_path / "config.yaml") == official_clip_config()
    assert ClipConfig.from_file(tmp_path / "config.json") == official_clip_config()


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown ClipConfig keys"):
        ClipConfig.from_dict({"n_embd": 8, "n_layers": 3})
    with pytest.raises(ValueError, match="multiple of"):
        ClipConfig(image_size=64, patch_size=5)
    with pytest.raises(ValueError, match="n_head_text"):
        ClipConfig(n_head_text=0)
