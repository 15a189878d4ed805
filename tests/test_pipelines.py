"""Pipelines end to end on tiny random models: shapes, determinism, guidance, editing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from glide.guidance import ClassifierGuidance, ClipGuidance
from glide.models import build_preset
from glide.pipelines import (
    ImageToImagePipeline,
    InpaintPipeline,
    StageOptions,
    Text2ImagePipeline,
    stage_diffusion,
)

from .helpers import load_fixture_clip

FAST = StageOptions(sampler="dpm++2m", timesteps=3)
FAST_UP = StageOptions(sampler="ddim", timesteps=2, guidance_scale=1.0)


def _randomise_output(model):
    """Random models have a zero-initialised output conv (eps = 0); give it weights so that
    sampling actually depends on the inputs."""
    torch.nn.init.normal_(model.out[-1].weight, std=0.02)
    return model.eval()


@pytest.fixture(scope="module")
def text2im():
    torch.manual_seed(0)
    return Text2ImagePipeline(_randomise_output(build_preset("tiny-base")),
                              _randomise_output(build_preset("tiny-upsample")))


def test_text2image_shapes_and_seed_determinism(text2im):
    kw = dict(num_images_per_prompt=2, base=FAST, upsample=FAST_UP, progress=False)
    out = text2im(["a red circle", "a blue square"], seed=7, **kw)
    assert len(out.images) == 4 and out.images[0].size == (128, 128)
    assert out.samples.shape == (4, 3, 128, 128) and out.low_res.shape == (4, 3, 64, 64)
    assert out.prompts == ["a red circle", "a red circle", "a blue square", "a blue square"]
    assert out.samples.abs().max() <= 1
    assert out.grid().size == (256, 256)
    again = text2im(["a red circle", "a blue square"], seed=7, **kw)
    torch.testing.assert_close(out.samples, again.samples, atol=0, rtol=0)
    other = text2im(["a red circle", "a blue square"], seed=8, **kw)
    assert (other.samples - out.samples).abs().max() > 1e-3


def test_stop_at_base_and_per_step_callback(text2im):
    seen = []
    out = text2im("a star", base=FAST, upsample=False, seed=0, progress=False, callback=seen.append)
    assert out.samples.shape == (1, 3, 64, 64)
    assert [s["stage"] for s in seen] == ["base"] * 3
    assert {"i", "t", "x", "pred_xstart"} <= set(seen[0])


def test_every_sampler_runs_the_pipeline(text2im):
    for sampler in ("ddpm", "ddim", "plms", "dpm++2m"):
        out = text2im("a cat", base=StageOptions(sampler=sampler, timesteps=3), upsample=False, seed=0, progress=False)
        assert torch.isfinite(out.samples).all()


def test_clear_errors(text2im):
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*ddpm"):
        text2im("x", base=StageOptions(sampler="euler"), progress=False)
    with pytest.raises(ValueError, match="reranking needs a noised CLIP"):
        text2im("x", rerank=2, progress=False)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        text2im("x", guidance_scale=-2, progress=False)


def test_clip_guidance_and_reranking(text2im):
    pipe = Text2ImagePipeline(text2im.base, None, load_fixture_clip())
    guided = pipe("a corgi", guidance_scale=1.0, cond_fns=(ClipGuidance(pipe.clip, 3.0),), base=FAST, seed=1,
                  progress=False)
    plain = pipe("a corgi", guidance_scale=1.0, base=FAST, seed=1, progress=False)
    assert (guided.samples - plain.samples).abs().max() > 1e-4
    reranked = pipe(["a corgi", "a fox"], rerank=3, base=FAST, seed=1, progress=False)
    assert reranked.samples.shape == (2, 3, 64, 64)
    # Reranking keeps, for each prompt, the candidate CLIP scores highest.
    candidates = pipe(["a corgi"] * 3 + ["a fox"] * 3, base=FAST, seed=1, progress=False).samples
    tokens, lens = pipe.clip.tokenize(["a corgi"] * 3 + ["a fox"] * 3)
    scores = pipe.clip.score(candidates, tokens, lens, t=0).view(2, 3)
    best = candidates.view(2, 3, 3, 64, 64)[torch.arange(2), scores.argmax(1)]
    torch.testing.assert_close(reranked.samples, best, atol=1e-5, rtol=0)
    two_best = pipe("a fox", rerank=3, num_images_per_prompt=2, base=FAST, seed=1, progress=False)
    assert two_best.samples.shape == (2, 3, 64, 64) and two_best.prompts == ["a fox", "a fox"]
    with pytest.raises(ValueError, match="must be >= num_images_per_prompt"):
        pipe("a fox", rerank=1, num_images_per_prompt=2, progress=False)


def test_inpainting_keeps_the_known_region():
    torch.manual_seed(0)
    pipe = InpaintPipeline(_randomise_output(build_preset("tiny-base-inpaint")),
                           _randomise_output(build_preset("tiny-upsample-inpaint")))
    image = Image.new("RGB", (200, 200), (200, 30, 30))
    mask = Image.new("L", (200, 200), 0)
    mask.paste(255, (100, 0, 200, 200))  # repaint the right half
    out = pipe("a blue sky", image, mask, num_images_per_prompt=2, base=FAST, upsample=FAST_UP, seed=0, progress=False)
    assert out.samples.shape == (2, 3, 128, 128)
    red = torch.tensor([200, 30, 30]) / 127.5 - 1
    left = out.samples[..., :, :60].permute(0, 2, 3, 1)
    torch.testing.assert_close(left, red.expand_as(left), atol=2 / 255, rtol=0)
    with pytest.raises(ValueError, match="mask must have one channel"):
        pipe("x", image, torch.zeros(3, 64, 64), progress=False)
    with pytest.raises(ValueError, match=r"image tensor must be \[1, 3, 64, 64\]"):
        pipe("x", torch.zeros(3, 32, 32), mask, progress=False)
    with pytest.raises(ValueError, match="marks nothing to repaint"):
        pipe("x", image, Image.new("L", (64, 64), 0), progress=False)
    with pytest.raises(ValueError, match="needs inpainting models"):
        InpaintPipeline(build_preset("tiny-base"))


def test_image_to_image_strength(text2im):
    pipe = ImageToImagePipeline(text2im.base)
    image = torch.linspace(-1, 1, 64).expand(1, 3, 64, 64).clone()
    opts = StageOptions(sampler="ddim", timesteps=20)
    gentle = pipe("a gradient", image, strength=0.05, base=opts, upsample=False, seed=0, progress=False)
    strong = pipe("a gradient", image, strength=1.0, base=opts, upsample=False, seed=0, progress=False)
    gentle_error = (gentle.samples - image).abs().mean()
    assert gentle_error < 0.1 < (strong.samples - image).abs().mean()
    with pytest.raises(ValueError, match=r"strength must be a finite number in \(0, 1\]"):
        pipe("x", image, strength=0, progress=False)


# -- guidance that composes: CFG (guidance_scale) + any number of cond_fns -------------------------
COMBINATIONS = {  # name -> (CFG scale, CLIP scale, classifier scale)
    "cfg": (3.0, 0.0, 0.0),
    "clip": (1.0, 20.0, 0.0),
    "classifier": (1.0, 0.0, 20.0),
    "cfg+clip": (3.0, 20.0, 0.0),
    "cfg+clip+classifier": (3.0, 20.0, 20.0),
}
TWO_STEPS = StageOptions(sampler="ddpm", timesteps=2)


@pytest.fixture(scope="module")
def guides():
    from glide.models.classifier import ClassifierConfig, NoisyClassifier

    torch.manual_seed(0)
    classifier = NoisyClassifier(ClassifierConfig(num_classes=3, num_channels=32, num_res_blocks=1,
                                                  channel_mult=(1, 2), attention_resolutions=()))
    torch.nn.init.normal_(classifier.head[-1].weight, std=0.5)  # a classifier with an opinion
    text2im = Text2ImagePipeline(_text_sensitive(build_preset("tiny-base")))
    inpaint = InpaintPipeline(_text_sensitive(build_preset("tiny-base-inpaint")))
    return load_fixture_clip(), classifier.eval(), text2im, inpaint


def _text_sensitive(model):
    """Random models start with zero-initialised layers (attention outputs among them), which hide
    the prompt from the output: give every layer weights so classifier-free guidance acts."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and not module.weight.any():
            module.reset_parameters()
    return model.eval()


def _inpaint_inputs():
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (32, 0, 64, 64))  # repaint the right half
    return image, mask


def _run(kind, guides, cfg, clip_scale, classifier_scale):
    clip, classifier, text2im, inpaint = guides
    kw = dict(guidance_scale=cfg, base=TWO_STEPS, upsample=False, seed=3, progress=False,
              num_images_per_prompt=2,
              cond_fns=(ClipGuidance(clip, clip_scale), ClassifierGuidance(classifier, 1, classifier_scale)))
    if kind == "text2im":
        return text2im("a corgi", **kw).samples
    return inpaint("a corgi", *_inpaint_inputs(), **kw).samples


@pytest.mark.parametrize("kind", ["text2im", "inpaint"])
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_every_guidance_combination_runs_and_steers(guides, kind, combination):
    guided = _run(kind, guides, *COMBINATIONS[combination])
    plain = _run(kind, guides, 1.0, 0.0, 0.0)
    assert torch.isfinite(guided).all() and (guided - plain).abs().max() > 1e-4
    if kind == "inpaint":  # the known (left) half is the source image, whatever the guidance
        red = (torch.tensor([200, 30, 30]) / 127.5 - 1)[:, None, None]
        torch.testing.assert_close(guided[..., :32], red.expand_as(guided[..., :32]), atol=2 / 255, rtol=0)


@pytest.mark.parametrize("kind", ["text2im", "inpaint"])
def test_cond_fn_scale_zero_is_exactly_no_guidance(guides, kind):
    plain = _run(kind, guides, 3.0, 0.0, 0.0)
    pipe = guides[2] if kind == "text2im" else guides[3]
    args = ("a corgi",) if kind == "text2im" else ("a corgi", *_inpaint_inputs())
    none = pipe(*args, guidance_scale=3.0, base=TWO_STEPS, upsample=False, seed=3, progress=False,
                num_images_per_prompt=2).samples
    torch.testing.assert_close(plain, none, atol=0, rtol=0)


def test_pipeline_cfg_scale_one_equals_the_conditional_model(guides):
    from glide.sampling import sample

    text2im = guides[2]
    out = text2im("a corgi", guidance_scale=1.0, base=TWO_STEPS, upsample=False, seed=5, progress=False)
    model = text2im.base
    tokens, mask = model.tokenize(["a corgi"])
    generator = torch.Generator().manual_seed(5)
    x_T = torch.randn((1, 3, 64, 64), generator=generator)
    with torch.no_grad():
        expected = sample("ddpm", lambda x, t: model(x, t, tokens, mask), stage_diffusion(model, TWO_STEPS), x_T,
                          generator=generator)
    torch.testing.assert_close(out.samples, expected, atol=0, rtol=0)
