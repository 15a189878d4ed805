"""glide.compat: the official notebooks' calls, run as written, against the official outputs.

Each notebook-style test below repeats the notebook cell with only the import lines changed
(tiny fixture models instead of the full-size ones, fewer steps). Checkpoints come from the
temp download cache that conftest sets up, so nothing touches the network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch as th
import torch.nn.functional as F
import yaml

from glide.checkpoints import CheckpointError, official_path
from glide.compat import (
    MODEL_PATHS,
    SimpleTokenizer,
    create_clip_model,
    create_model_and_diffusion,
    load_checkpoint,
    model_and_diffusion_defaults,
    model_and_diffusion_defaults_upsampler,
)
from glide.download import OfflineError
from glide.guidance import text2im_denoiser
from glide.models import Text2ImUNet
from glide.sampling import sample_ddim

from .helpers import load_fixture, load_json

FIXTURE_FILES = {  # official checkpoint name -> fixture state dict
    "base": "base_state_dict.pt",
    "upsample": "upsample_state_dict.pt",
    "base-inpaint": "base_inpaint_state_dict.pt",
    "upsample-inpaint": "upsample_inpaint_state_dict.pt",
    "clip/image-enc": "clip_image_enc_state_dict.pt",
    "clip/text-enc": "clip_text_enc_state_dict.pt",
}
device = th.device("cpu")


def put_in_cache(name: str) -> Path:
    """Save a fixture state dict where ``load_checkpoint(name)`` looks (the GLIDE_CACHE temp dir)."""
    path = official_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(load_fixture(FIXTURE_FILES[name]), path)
    return path


def fixture_options(variant: str, respacing: str) -> dict:
    options = dict(load_json(f"{variant}_options.json")["create_model_and_diffusion_kwargs"])
    options["timestep_respacing"] = respacing
    return options


def notebook_model(variant: str, name: str, respacing: str):
    """The notebooks' model cell: create, eval, (fp16 only with CUDA), to(device), load_state_dict."""
    put_in_cache(name)
    options = fixture_options(variant, respacing)
    model, diffusion = create_model_and_diffusion(**options)
    model.eval()
    model.to(device)
    model.load_state_dict(load_checkpoint(name, device))
    return model, diffusion, options


def seed_of(name: str) -> int:
    return load_json("manifest.json")["files"][name]["seed"]


# --------------------------------------------------------------------------------------------
# Options and models
# --------------------------------------------------------------------------------------------


def test_defaults_equal_official():
    official = load_json("official_configs.json")["defaults"]
    assert model_and_diffusion_defaults() == official["model_and_diffusion_defaults"]
    assert model_and_diffusion_defaults_upsampler() == official["model_and_diffusion_defaults_upsampler"]


@pytest.mark.parametrize("name", ["base", "upsample", "base-inpaint", "upsample-inpaint"])
def test_full_size_notebook_models_match_official_parameters(name):
    official = load_json("official_configs.json")["models"][name]
    with torch.device("meta"):
        model, diffusion = create_model_and_diffusion(**official["options"])
    assert isinstance(model, Text2ImUNet)
    assert sum(x.numel() for x in model.parameters()) == official["num_parameters"]
    assert len(model.state_dict()) == official["num_state_dict_keys"]


def test_use_fp16_is_applied_by_convert_to_fp16_as_in_the_official_code():
    options = fixture_options("base_inpaint", "4")
    options["use_fp16"] = True
    model, _ = create_model_and_diffusion(**options)
    assert model.input_blocks[0][0].weight.dtype == torch.float32  # create does not convert
    model.convert_to_fp16()
    assert model.input_blocks[0][0].weight.dtype == torch.float16
    assert model.time_embed[0].weight.dtype == torch.float32


def test_missing_and_unknown_options_raise():
    options = model_and_diffusion_defaults()
    del options["xf_width"]
    with pytest.raises(TypeError, match="xf_width"):
        create_model_and_diffusion(**options)
    with pytest.raises(ValueError, match="unknown options"):
        create_model_and_diffusion(**model_and_diffusion_defaults(), learn_sigma=False)


def test_diffusion_respacing_and_timestep_map():
    _, diffusion = create_model_and_diffusion(**fixture_options("base", "10"))
    ref = load_fixture("sample_cfg_p_sample.pt")
    assert diffusion.num_timesteps == 10
    assert diffusion.timestep_map == ref["timestep_map"].tolist()
    _, full = create_model_and_diffusion(**fixture_options("base", ""))
    assert full.num_timesteps == 1000 and full.timestep_map == list(range(1000))
    _, fast = create_model_and_diffusion(**fixture_options("upsample", "fast27"))
    assert fast.num_timesteps == 27 and fast.timestep_map[-1] == 997
    assert fast.betas[0] == pytest.approx(1e-4)  # the linear schedule

# --------------------------------------------------------------------------------------------
# text2im notebook
# --------------------------------------------------------------------------------------------


def cfg_notebook_run(loop: str, fixture: str):
    """The text2im notebook's base-model cell, verbatim but for ``loop`` and the recorder."""
    model, diffusion, options = notebook_model("base", "base", "10")
    ref = load_fixture(fixture)
    spec = load_json("manifest.json")["files"][fixture]
    prompt, batch_size, guidance_scale = spec["prompts"][0], 1, spec["guidance_scale"]
    first_x = []

    tokens = model.tokenizer.encode(prompt)
    tokens, mask = model.tokenizer.padded_tokens_and_mask(tokens, options["text_ctx"])
    full_batch_size = batch_size * 2
    uncond_tokens, uncond_mask = model.tokenizer.padded_tokens_and_mask([], options["text_ctx"])
    model_kwargs = dict(
        tokens=th.tensor([tokens] * batch_size + [uncond_tokens] * batch_size, device=device),
        mask=th.tensor([mask] * batch_size + [uncond_mask] * batch_size, dtype=th.bool, device=device),
    )

    def model_fn(x_t, ts, **kwargs):
        first_x.append(x_t)
        half = x_t[: len(x_t) // 2]
        combined = th.cat([half, half], dim=0)
        model_out = model(combined, ts, **kwargs)
        eps, rest = model_out[:, :3], model_out[:, 3:]
        cond_eps, uncond_eps = th.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
        eps = th.cat([half_eps, half_eps], dim=0)
        return th.cat([eps, rest], dim=1)

    th.manual_seed(spec["seed"])
    model.del_cache()
    samples = getattr(diffusion, loop)(
        model_fn,
        (full_batch_size, 3, options["image_size"], options["image_size"]),
        device=device,
        clip_denoised=True,
        progress=False,
        model_kwargs=model_kwargs,
        cond_fn=None,
    )[:batch_size]
    model.del_cache()

    assert model_kwargs["tokens"].tolist() == ref["tokens"].tolist()
    assert model_kwargs["mask"].tolist() == ref["mask"].tolist()
    # The global RNG drew x_T exactly as the reference loop did.
    torch.testing.assert_close(first_x[0][:batch_size], ref["x_T_cond_half"], atol=0, rtol=0)
    return samples, ref


def test_text2im_notebook_p_sample_loop_matches_official():
    samples, ref = cfg_notebook_run("p_sample_loop", "sample_cfg_p_sample.pt")
    # Loose by design: the first step is ill-conditioned (see the fixture README).
    torch.testing.assert_close(samples, ref["samples"], atol=2e-2, rtol=0)


def test_text2im_notebook_ddim_sample_loop_matches_official():
    samples, ref = cfg_notebook_run("ddim_sample_loop", "sample_cfg_ddim.pt")
    torch.testing.assert_close(samples, ref["samples"], atol=1e-3, rtol=0)


def test_text2im_notebook_upsample_cell_equals_glide_sampler():
    """The upsampler cell (the module itself as model_fn, explicit noise, DDIM); 5 steps, not fast27."""
    model_up, diffusion_up, options_up = notebook_model("upsample", "upsample", "5")
    prompt, batch_size, upsample_temp = "an oil painting of a corgi", 1, 0.997
    th.manual_seed(0)
    samples = th.rand(1, 3, 4, 4) * 2 - 1

    tokens = model_up.tokenizer.encode(prompt)
    tokens, mask = model_up.tokenizer.padded_tokens_and_mask(tokens, options_up["text_ctx"])
    model_kwargs = dict(
        low_res=((samples + 1) * 127.5).round() / 127.5 - 1,
        tokens=th.tensor([tokens] * batch_size, device=device),
        mask=th.tensor([mask] * batch_size, dtype=th.bool, device=device),
    )
    model_up.del_cache()
    up_shape = (batch_size, 3, options_up["image_size"], options_up["image_size"])
    noise = th.randn(up_shape, device=device) * upsample_temp
    up_samples = diffusion_up.ddim_sample_loop(
        model_up,
        up_shape,
        noise=noise,
        device=device,
        clip_denoised=True,
        progress=False,
        model_kwargs=model_kwargs,
        cond_fn=None,
    )[:batch_size]
    model_up.del_cache()

    denoiser = text2im_denoiser(model_up, model_kwargs["tokens"], model_kwargs["mask"],
                                low_res=model_kwargs["low_res"])
    expected = sample_ddim(denoiser, diffusion_up.diffusion, noise)
    assert up_samples.shape == (1, 3, 16, 16)
    torch.testing.assert_close(up_samples, expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# clip_guided notebook
# --------------------------------------------------------------------------------------------


@pytest.fixture
def clip_config_path(tmp_path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(load_json("clip_config.json")["config_yaml_keys"]))
    return path


def notebook_clip(config_path: Path):
    put_in_cache("clip/image-enc")
    put_in_cache("clip/text-enc")
    clip_model = create_clip_model(config_path=config_path, device=device)
    clip_model.image_encoder.load_state_dict(load_checkpoint("clip/image-enc", device))
    clip_model.text_encoder.load_state_dict(load_checkpoint("clip/text-enc", device))
    return clip_model


def test_clip_cond_fn_matches_official_gradient(clip_config_path):
    clip_model = notebook_clip(clip_config_path)
    ref = load_fixture("clip_forward.pt")
    spec = load_json("manifest.json")["files"]["clip_forward.pt"]
    cond_fn = clip_model.cond_fn(spec["cond_fn_prompts"], spec["grad_scale"])
    grad = cond_fn(ref["x_t"], ref["t"], tokens=None, mask=None)  # extra model kwargs are ignored
    scale = ref["cond_fn_grad"].abs().max()
    assert ((grad - ref["cond_fn_grad"]).abs().max() / scale) < 1e-3
    # grad_scale can be overridden per call, as in the official signature.
    torch.testing.assert_close(cond_fn(ref["x_t"], ref["t"], grad_scale=1.0) * spec["grad_scale"], grad)
    tokens, lens = clip_model.encode_prompts(spec["prompts"])
    assert tokens.tolist() == ref["clip_tokens"].tolist() and lens.tolist() == ref["clip_lens"].tolist()
    z_text = clip_model.text_embeddings(spec["prompts"])
    torch.testing.assert_close(z_text, ref["text_embeddings"], atol=1e-4, rtol=0)
    z_image = clip_model.image_embeddings(ref["x_t"], ref["t"])
    torch.testing.assert_close(z_image, ref["image_embeddings"], atol=1e-4, rtol=0)


def test_clip_model_accepts_a_tokenizer_and_moves_between_devices(clip_config_path):
    clip_model = create_clip_model(config_path=clip_config_path, device="cpu", tokenizer=SimpleTokenizer())
    assert clip_model.to("cpu").eval() is clip_model
    assert clip_model.device == torch.device("cpu")
    assert clip_model.config["patch_size"] == 8
    assert clip_model.logit_scale.item() == pytest.approx(torch.log(torch.tensor(100.0)).item())


def test_clip_model_default_config_is_the_official_full_size():
    official = load_json("official_configs.json")["clip"]
    clip_model = create_clip_model(device="meta")
    for part in ("image", "text"):
        module = getattr(clip_model, f"{part}_encoder")
        shapes = {k: list(v.shape) for k, v in module.state_dict().items()}
        assert shapes == official[f"{part}_encoder"]["state_dict_shapes"]


def test_clip_guided_notebook_matches_official(clip_config_path):
    model, diffusion, options = notebook_model("base", "base", "4")
    clip_model = notebook_clip(clip_config_path)
    ref = load_fixture("sample_clip_guided.pt")
    spec = load_json("manifest.json")["files"]["sample_clip_guided.pt"]
    prompt, batch_size, guidance_scale = spec["prompts"][0], 1, spec["grad_scale"]

    tokens = model.tokenizer.encode(prompt)
    tokens, mask = model.tokenizer.padded_tokens_and_mask(tokens, options["text_ctx"])
    model_kwargs = dict(
        tokens=th.tensor([tokens] * batch_size, device=device),
        mask=th.tensor([mask] * batch_size, dtype=th.bool, device=device),
    )
    cond_fn = clip_model.cond_fn([prompt] * batch_size, guidance_scale)
    th.manual_seed(spec["seed"])
    model.del_cache()
    samples = diffusion.p_sample_loop(
        model,
        (batch_size, 3, options["image_size"], options["image_size"]),
        device=device,
        clip_denoised=True,
        progress=False,
        model_kwargs=model_kwargs,
        cond_fn=cond_fn,
    )
    model.del_cache()
    torch.testing.assert_close(samples, ref["samples"], atol=2e-2, rtol=0)


# --------------------------------------------------------------------------------------------
# inpaint notebook
# --------------------------------------------------------------------------------------------


def test_inpaint_notebook_keeps_the_known_region():
    model, diffusion, options = notebook_model("base_inpaint", "base-inpaint", "4")
    model_up, diffusion_up, options_up = notebook_model("upsample_inpaint", "upsample-inpaint", "4")
    prompt, batch_size, guidance_scale, upsample_temp = "a corgi in a field", 1, 5.0, 0.997
    size, size_up = options["image_size"], options_up["image_size"]  # 16 and 16 (low_res 4 px)
    th.manual_seed(0)
    source_image_up = (th.rand(1, 3, size_up, size_up) * 255).round() / 127.5 - 1
    source_image = F.interpolate(source_image_up, (size, size), mode="area")
    source_mask = th.ones_like(source_image)[:, :1]
    source_mask[:, :, size // 2:] = 0
    source_mask_up = F.interpolate(source_mask, (size_up, size_up), mode="nearest")

    tokens = model.tokenizer.encode(prompt)
    tokens, mask = model.tokenizer.padded_tokens_and_mask(tokens, options["text_ctx"])
    full_batch_size = batch_size * 2
    uncond_tokens, uncond_mask = model.tokenizer.padded_tokens_and_mask([], options["text_ctx"])
    model_kwargs = dict(
        tokens=th.tensor([tokens] * batch_size + [uncond_tokens] * batch_size, device=device),
        mask=th.tensor([mask] * batch_size + [uncond_mask] * batch_size, dtype=th.bool, device=device),
        inpaint_image=(source_image * source_mask).repeat(full_batch_size, 1, 1, 1).to(device),
        inpaint_mask=source_mask.repeat(full_batch_size, 1, 1, 1).to(device),
    )

    def model_fn(x_t, ts, **kwargs):
        half = x_t[: len(x_t) // 2]
        combined = th.cat([half, half], dim=0)
        model_out = model(combined, ts, **kwargs)
        eps, rest = model_out[:, :3], model_out[:, 3:]
        cond_eps, uncond_eps = th.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + guidance_scale * (cond_eps - uncond_eps)
        eps = th.cat([half_eps, half_eps], dim=0)
        return th.cat([eps, rest], dim=1)

    def denoised_fn(x_start):
        # Force the model to have the exact right x_start predictions for the known part.
        return (
            x_start * (1 - model_kwargs["inpaint_mask"])
            + model_kwargs["inpaint_image"] * model_kwargs["inpaint_mask"]
        )

    model.del_cache()
    samples = diffusion.p_sample_loop(
        model_fn,
        (full_batch_size, 3, size, size),
        device=device,
        clip_denoised=True,
        progress=False,
        model_kwargs=model_kwargs,
        cond_fn=None,
        denoised_fn=denoised_fn,
    )[:batch_size]
    model.del_cache()
    assert samples.shape == (1, 3, size, size) and samples.isfinite().all()
    known = source_mask.bool().expand_as(samples)
    # At t = 0 the sample is the (pasted) x_0 estimate, so the known pixels come back exactly.
    torch.testing.assert_close(samples[known], source_image[known], atol=1e-5, rtol=0)

    # Upsampling cell: the module itself as model_fn, explicit noise, denoised_fn.
    tokens = model_up.tokenizer.encode(prompt)
    tokens, mask = model_up.tokenizer.padded_tokens_and_mask(tokens, options_up["text_ctx"])
    model_kwargs = dict(
        low_res=((F.interpolate(samples, (4, 4), mode="area") + 1) * 127.5).round() / 127.5 - 1,
        tokens=th.tensor([tokens] * batch_size, device=device),
        mask=th.tensor([mask] * batch_size, dtype=th.bool, device=device),
        inpaint_image=(source_image_up * source_mask_up).repeat(batch_size, 1, 1, 1).to(device),
        inpaint_mask=source_mask_up.repeat(batch_size, 1, 1, 1).to(device),
    )
    model_up.del_cache()
    up_shape = (batch_size, 3, size_up, size_up)
    up_samples = diffusion_up.p_sample_loop(
        model_up,
        up_shape,
        noise=th.randn(up_shape, device=device) * upsample_temp,
        device=device,
        clip_denoised=True,
        progress=False,
        model_kwargs=model_kwargs,
        cond_fn=None,
        denoised_fn=denoised_fn,
    )[:batch_size]
    model_up.del_cache()
    known_up = source_mask_up.bool().expand_as(up_samples)
    assert up_samples.isfinite().all()
    torch.testing.assert_close(up_samples[known_up], source_image_up[known_up], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Diffusion adapter details
# --------------------------------------------------------------------------------------------


def test_model_and_cond_fn_get_original_timesteps_and_model_kwargs():
    _, diffusion = create_model_and_diffusion(**fixture_options("base_inpaint", "5"))
    seen_model, seen_cond = [], []

    def model_fn(x, t, **kwargs):
        seen_model.append((t.tolist(), sorted(kwargs)))
        return torch.zeros(x.shape[0], 6, *x.shape[2:])

    def cond_fn(x, t, **kwargs):
        seen_cond.append((t.tolist(), sorted(kwargs)))
        return torch.zeros_like(x)

    for loop in ("p_sample_loop", "ddim_sample_loop"):
        seen_model.clear()
        seen_cond.clear()
        getattr(diffusion, loop)(model_fn, (2, 3, 4, 4), model_kwargs={"tokens": 1}, cond_fn=cond_fn)
        expected = [([t, t], ["tokens"]) for t in reversed(diffusion.timestep_map)]
        assert seen_model == expected
        assert seen_cond == expected


def test_progressive_loops_yield_every_step_and_end_at_the_loop_result():
    _, diffusion = create_model_and_diffusion(**fixture_options("base_inpaint", "3"))

    def model_fn(x, t):
        return torch.cat([0.1 * x, torch.zeros_like(x)], dim=1)

    th.manual_seed(1)
    final = diffusion.p_sample_loop(model_fn, (1, 3, 4, 4))
    th.manual_seed(1)
    steps = list(diffusion.p_sample_loop_progressive(model_fn, (1, 3, 4, 4)))
    assert len(steps) == 3 and set(steps[-1]) == {"sample", "pred_xstart"}
    torch.testing.assert_close(steps[-1]["sample"], final, atol=0, rtol=0)
    noise = th.randn(1, 3, 4, 4)
    ddim = list(diffusion.ddim_sample_loop_progressive(model_fn, (1, 3, 4, 4), noise=noise, eta=0.0))
    torch.testing.assert_close(ddim[-1]["sample"], diffusion.ddim_sample_loop(model_fn, (1, 3, 4, 4), noise=noise))


def test_single_step_methods_and_passthroughs():
    _, diffusion = create_model_and_diffusion(**fixture_options("base_inpaint", "10"))
    x = th.randn(2, 3, 4, 4)
    t = th.tensor([9, 0])

    def model_fn(x, t, scale):
        return torch.cat([scale * x, torch.zeros_like(x)], dim=1)

    out = diffusion.p_mean_variance(model_fn, x, t, model_kwargs={"scale": 0.5})
    assert set(out) >= {"mean", "variance", "log_variance", "pred_xstart"}
    step = diffusion.p_sample(model_fn, x, t, model_kwargs={"scale": 0.5})
    torch.testing.assert_close(step["sample"][1], out["mean"][1])  # no noise at t = 0
    ddim = diffusion.ddim_sample(model_fn, x, t, model_kwargs={"scale": 0.5})
    assert ddim["sample"].shape == x.shape
    assert diffusion.q_sample(x, t).shape == x.shape
    torch.testing.assert_close(diffusion.q_sample(x, t, noise=x), diffusion.diffusion.q_sample(x, t, x))
    losses = diffusion.training_losses(model_fn, x.clamp(-1, 1), t, model_kwargs={"scale": 0.5})
    assert set(losses) == {"loss", "mse", "vb"} and losses["loss"].shape == (2,)
    assert diffusion.betas.shape == (10,)  # attributes of the wrapped GaussianDiffusion


# --------------------------------------------------------------------------------------------
# load_checkpoint
# --------------------------------------------------------------------------------------------


def test_load_checkpoint_reads_the_cache_dir_and_keeps_dtypes(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float16).view(2, 3), "n": torch.tensor(3)}
    torch.save(state, tmp_path / "base_inpaint.pt")
    loaded = load_checkpoint("base-inpaint", torch.device("cpu"), cache_dir=tmp_path)
    assert loaded.keys() == state.keys()
    for k in state:
        assert loaded[k].dtype == state[k].dtype and loaded[k].device.type == "cpu"
        torch.testing.assert_close(loaded[k], state[k], atol=0, rtol=0)


def test_load_checkpoint_default_location_is_glides_cache():
    assert MODEL_PATHS["clip/text-enc"].endswith("/clip_text_enc.pt")
    path = put_in_cache("clip/text-enc")
    assert "glide_model_cache" not in str(path)
    assert load_checkpoint("clip/text-enc").keys() == load_fixture(FIXTURE_FILES["clip/text-enc"]).keys()


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_load_checkpoint_refuses_unsafe_pickles(tmp_path):
    torch.save({"w": _RunsCode()}, tmp_path / "upsample.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint("upsample", "cpu", cache_dir=tmp_path)


def test_load_checkpoint_rejects_unknown_names_and_downloads_only_when_missing(tmp_path):
    with pytest.raises(ValueError, match="Unknown checkpoint name"):
        load_checkpoint("base_inpaint", "cpu", cache_dir=tmp_path)
    with pytest.raises(OfflineError):  # conftest sets GLIDE_OFFLINE: a download would be needed
        load_checkpoint("base", "cpu", cache_dir=tmp_path)


def test_load_checkpoint_uses_a_converted_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2, dtype=torch.float16)}, str(tmp_path / "clip_image_enc.safetensors"))
    loaded = load_checkpoint("clip/image-enc", "cpu", cache_dir=tmp_path)
    assert loaded["w"].dtype == torch.float16 and loaded["w"].tolist() == [1.0, 1.0]
