"""The text-conditional U-Nets against the official code's outputs (tiny random models)."""

from __future__ import annotations

import json

import pytest
import torch

from glide.compat import create_model_and_diffusion, model_and_diffusion_defaults
from glide.models import Text2ImConfig, build_preset, preset_config
from glide.models.unet import attention_backend, timestep_embedding

from .helpers import load_fixture, load_fixture_model, load_json

VARIANTS = ["base", "upsample", "base_inpaint", "upsample_inpaint"]
OFFICIAL_NAMES = {"base": "base", "upsample": "upsample", "base_inpaint": "base-inpaint",
                  "upsample_inpaint": "upsample-inpaint"}


def model_inputs(ref: dict) -> dict:
    return {k: ref[k] for k in ("tokens", "mask", "low_res", "inpaint_image", "inpaint_mask") if k in ref}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("backend", ["sdpa", "einsum"])
def test_forward_matches_official(variant, backend):
    model = load_fixture_model(variant)
    ref = load_fixture(f"{variant}_forward.pt")
    captured = {}
    model.middle_block.register_forward_hook(lambda m, i, o: captured.__setitem__("middle", o))
    model.input_blocks[0].register_forward_hook(lambda m, i, o: captured.__setitem__("unet_input", i[0]))
    with torch.no_grad(), attention_backend(backend):
        out = model(ref["x_t"], ref["timesteps"], **model_inputs(ref))
        text = model.encode_text(ref["tokens"], ref["mask"])
        t_emb = timestep_embedding(ref["timesteps"], model.config.num_channels)
    tol = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t_emb, ref["timestep_embedding"], **tol)
    torch.testing.assert_close(model.time_embed(t_emb), ref["time_embed_out"], **tol)
    torch.testing.assert_close(text.xf_out, ref["xf_out"], **tol)
    torch.testing.assert_close(text.xf_proj, ref["xf_proj"], **tol)
    torch.testing.assert_close(captured["middle"], ref["middle_block_out"], **tol)
    if "unet_input" in ref:
        torch.testing.assert_close(captured["unet_input"], ref["unet_input"], **tol)
    torch.testing.assert_close(out, ref["output"], **tol)


def test_precomputed_text_features_equal_tokens_path():
    model = load_fixture_model("base")
    ref = load_fixture("base_forward.pt")
    with torch.no_grad():
        text = model.encode_text(ref["tokens"], ref["mask"])
        a = model(ref["x_t"], ref["timesteps"], text=text)
        b = model(ref["x_t"], ref["timesteps"], ref["tokens"], ref["mask"])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bf16_path_close_to_fp32():
    model = load_fixture_model("base")
    ref = load_fixture("base_forward.pt")
    half = load_fixture_model("base")
    half.convert_to_half(torch.bfloat16)
    with torch.no_grad():
        out32 = model(ref["x_t"], ref["timesteps"], ref["tokens"], ref["mask"])
        out16 = half(ref["x_t"], ref["timesteps"], ref["tokens"], ref["mask"])
    assert out16.dtype == torch.float32
    assert half.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32  # norms stay fp32
    assert half.input_blocks[1][0].in_layers[2].weight.dtype == torch.bfloat16
    error = (out16 - out32).abs()
    assert error.mean() < 2e-2 and error.max() < 0.2  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("name", ["base", "upsample", "base-inpaint", "upsample-inpaint"])
def test_official_presets_have_official_keys_shapes_and_sizes(name):
    official = load_json("official_configs.json")["models"][name]
    shapes = official.get("state_dict_shapes") or {
        **official_shapes(official["state_dict_shapes_same_as"]), **official["state_dict_shape_differences"]}
    with torch.device("meta"):
        model = build_preset(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == shapes
    assert sum(p.numel() for p in model.parameters()) == official["num_parameters"]


def official_shapes(name):
    return load_json("official_configs.json")["models"][name]["state_dict_shapes"]


def test_half_conversion_matches_official_fp16_key_set():
    official = load_json("official_configs.json")["models"]["base"]
    with torch.device("meta"):
        model, _ = create_model_and_diffusion(**model_and_diffusion_defaults())
    model.convert_to_fp16()  # the official API's name (glide.compat) for convert_to_half(torch.float16)
    ours = {k for k, v in model.state_dict().items() if v.dtype == torch.float16}
    assert ours == set(official["keys_float16_after_convert_to_fp16"])


def test_config_round_trip_and_errors():
    config = preset_config("tiny-base")
    assert Text2ImConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown Text2ImConfig keys"):
        Text2ImConfig.from_dict({**config.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown model preset 'nope'.*base"):
        preset_config("nope")
    with pytest.raises(ValueError, match="channel_mult"):
        Text2ImConfig(image_size=48)


def test_bad_inputs_give_clear_errors():
    model = build_preset("tiny-base-inpaint").eval()
    x = torch.zeros(1, 3, 64, 64)
    t = torch.zeros(1, dtype=torch.long)
    ctx = model.config.text_ctx
    tokens, mask = torch.zeros(1, ctx, dtype=torch.long), torch.ones(1, ctx, dtype=torch.bool)
    with pytest.raises(ValueError, match="inpaint_image"):
        model(x, t, tokens, mask)
    with pytest.raises(ValueError, match=r"inpaint_mask must have shape \[1, 1, 64, 64\]"):
        model(x, t, tokens, mask, inpaint_image=x, inpaint_mask=torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match=rf"tokens must have shape \[batch, {ctx}\]"):
        model(x, t, torch.zeros(1, ctx + 4, dtype=torch.long), mask, inpaint_image=x, inpaint_mask=x[:, :1])


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = build_preset("tiny-base")
    for p in model.out.parameters():  # zero-initialised output would make gradients trivial
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(2, 3, 64, 64)
    t = torch.tensor([3, 700])
    ctx = model.config.text_ctx
    tokens, mask = torch.randint(0, 257, (2, ctx)), torch.ones(2, ctx, dtype=torch.bool)

    def grads():
        model.zero_grad()
        model(x, t, tokens, mask).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b)




def test_norm_groups_decide_whether_the_model_sees_the_image_mean():
    """One channel per GroupNorm group (32 channels in the official 32 groups) erases every
    channel's spatial mean before the output conv, so eps cannot follow the mean of x_t and
    samples come out tinted; the tiny presets' 8 groups keep it. Same parameters either way."""
    blind = build_preset("tiny-base", image_size=16, norm_groups=32)
    grouped = build_preset("tiny-base", image_size=16)
    norms = lambda m: [n for n in m.modules() if isinstance(n, torch.nn.GroupNorm)]
    assert {n.num_groups for n in norms(blind)} == {32} and {n.num_groups for n in norms(grouped)} == {8}
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}
    assert shapes(blind) == shapes(grouped)
    torch.manual_seed(0)
    h = torch.randn(2, 32, 8, 8)
    shift = torch.randn(1, 32, 1, 1)  # a different spatial mean for every channel
    for model in (blind, grouped):
        torch.nn.init.normal_(model.out[-1].weight)  # the output conv starts at zero
    torch.testing.assert_close(blind.out(h + shift), blind.out(h), atol=1e-4, rtol=0)
    assert (grouped.out(h + shift) - grouped.out(h)).abs().mean() > 0.1
    with pytest.raises(ValueError, match="norm_groups must divide num_channels 32"):
        preset_config("tiny-base", norm_groups=5)
