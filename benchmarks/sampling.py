"""Sampling speed of the official-size GLIDE models, ours against a straightforward baseline.

Measures, in one run on one machine (random weights: speed does not depend on them):

1. Seconds per denoising step of the official-size base (385M) at batch 1 with classifier-free
   guidance (one doubled batch of 2 per step):
   * baseline: the official attention formulation (einsum, q and k scaled by d**-0.25, float32
     softmax) and the text transformer re-run every step (the official model call
     ``model(x, t, tokens, mask)``), float32;
   * ours, float32: text features computed once per run, SDPA attention;
   * ours, bf16: the half-precision path (convolutions and text transformer in bf16, norms
     in float32), with its output's distance from float32.
2. Seconds per step of the official-size upsampler (398M, 256 px, batch 1, no guidance).
3. End-to-end text -> 256 px for the official notebook recipe (100 DDPM steps with CFG +
   "fast27" upsampler steps), our default recipe (DPM-Solver++ 20 + 5 steps) and the fast one
   (DPM-Solver++(2M) SDE, 10 trailing steps + 3 upsampler calls from strength 0.3). On a CPU
   the notebook recipe takes hours, so both are projected from the measured per-step medians
   (text encoding + steps x step time); ``--e2e`` also runs both recipes for real.
4. Quality at fewer steps, on the reference fixture's tiny base (cosine schedule, CFG 3) and
   upsampler (linear schedule): the distance of few-step samplers' outputs from a 1000-step
   output from the same noise. The 1000-step reference is DDIM (the probability-flow ODE that
   DPM-Solver++ and DDIM solve; a 1000-step DDPM run adds fresh noise every step, so its single
   outputs are not a fixed target). ``--fd-samples N`` adds a Fréchet distance between sets of
   DDPM-1000 samples and our sampler's, next to two DDPM-1000 sets (the noise floor).

Run (2-core CPU: about 15-25 min; the malloc settings cut system time):

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 \\
    MALLOC_TOP_PAD_=1073741824 python benchmarks/sampling.py

``--e2e`` tokenises a prompt with the official GLIDE vocabulary: fetch it once with
``glide download base`` or point ``GLIDE_VOCAB_DIR`` at a folder holding it.

Options: ``--repeats N`` (timed steps per variant, interleaved), ``--skip-quality``,
``--quality-samples N``, ``--e2e``, ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from glide.diffusion import GaussianDiffusion
from glide.guidance import text2im_denoiser
from glide.models import build_preset, use_winograd
from glide.models.text2im import TransformerAttention
from glide.models.unet import AttentionBlock
from glide.pipelines import DEFAULT_BASE, DEFAULT_UPSAMPLE, NOTEBOOK_BASE, NOTEBOOK_UPSAMPLE, RECIPES, stage_diffusion
from glide.pipelines.text2im import strength_steps
from glide.sampling import sample


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def build(name: str, device, seed: int = 0):
    torch.manual_seed(seed)
    model = build_preset(name).eval()
    # Layers that start at zero (every block's last conv, attention's proj_out, the output)
    # would hide half the network's arithmetic from the output comparisons: give them weights.
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)) and not module.weight.any():
            module.reset_parameters()
    return model.to(device)


def half_copy(model, dtype, device):
    copy = weights_copy(model)
    copy.convert_to_half(dtype)
    return copy.to(device).eval()


def weights_copy(model):
    """A second model of ``model``'s preset with its weights (to change without touching ``model``)."""
    copy = build_preset_like(model)
    copy.load_state_dict(model.state_dict())
    return copy


def build_preset_like(model):
    from glide.models import build_model

    with torch.device("meta"):
        copy = build_model(model.config)
    return copy.to_empty(device="cpu")


@contextmanager
def official_attention():
    """The baseline: attention exactly as the official code computes it (einsum over
    [B*heads, d, T] views, q and k each scaled by d**-0.25, softmax in float32), patched into
    every attention layer of the U-Net and of the text transformer."""

    def unet_attention(self, x, encoder_out=None):
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))
        d = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * d, -1).split(d, dim=1)
        if encoder_out is not None:
            ek, ev = self.encoder_kv(encoder_out).reshape(b * self.num_heads, 2 * d, -1).split(d, dim=1)
            k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
        scale = d**-0.25
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return x + self.proj_out(h).reshape(b, c, *spatial)

    def text_attention(self, x):
        b, t, width = x.shape
        qkv = self.c_qkv(x).view(b, t, self.heads, -1)
        d = width // self.heads
        q, k, v = qkv.split(d, dim=-1)
        scale = d**-0.25
        weight = torch.einsum("bthc,bshc->bhts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
        return self.c_proj(torch.einsum("bhts,bshc->bthc", weight, v).reshape(b, t, width))

    saved = AttentionBlock.forward, TransformerAttention.forward
    AttentionBlock.forward, TransformerAttention.forward = unet_attention, text_attention
    try:
        yield
    finally:
        AttentionBlock.forward, TransformerAttention.forward = saved


def step_benchmark(args, device) -> dict:
    half = torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16
    base = build("base", device)
    base_half = half_copy(base, half, device)
    ctx = base.config.text_ctx
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50000, (1, ctx), generator=gen).to(device)
    mask = torch.zeros(1, ctx, dtype=torch.bool, device=device)
    mask[:, :12] = True
    x = torch.randn(1, 3, 64, 64, generator=gen).to(device)
    t = torch.tensor([500], device=device)
    uncond = torch.full_like(tokens, base.config.n_vocab - 1), torch.zeros_like(mask)

    def baseline_step():
        # The official model function: the doubled batch re-encodes both captions every step.
        with official_attention():
            out = base(torch.cat([x, x]), torch.cat([t, t]), torch.cat([tokens, uncond[0]]),
                       torch.cat([mask, uncond[1]]))
        eps_c, eps_u = out[:1, :3], out[1:, :3]
        return torch.cat([eps_u + 3.0 * (eps_c - eps_u), out[:1, 3:]], dim=1)

    on_cpu = torch.device(device).type == "cpu"
    with torch.no_grad():
        ours32 = text2im_denoiser(base, tokens, mask, 3.0)
        ours16 = text2im_denoiser(base_half, tokens, mask, 3.0)
        variants = {
            "baseline fp32 (official attention, text every step)": baseline_step,
            "ours fp32 (sdpa, text once)": lambda: ours32(x, t),
            f"ours {str(half).split('.')[-1]} (sdpa, text once)": lambda: ours16(x, t),
        }
        if on_cpu:  # what the CLI runs for fp32 on a CPU
            wino = text2im_denoiser(winograd_copy(base, device), tokens, mask, 3.0)
            variants[WINOGRAD] = lambda: wino(x, t)
        ref = baseline_step()
        outputs = {name: fn() for name, fn in variants.items()}  # warm-up, and outputs to compare
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():  # interleaved, so machine noise hits all alike
                times[name].append(timed(fn, device))
        text_time = statistics.median(timed(lambda: base.encode_text(torch.cat([tokens, uncond[0]]),
                                                                  torch.cat([mask, uncond[1]])), device)
                                      for _ in range(3))

    rows = {}
    base_median = statistics.median(times["baseline fp32 (official attention, text every step)"])
    for name in variants:
        median = statistics.median(times[name])
        err = (outputs[name].float() - ref.float()).abs()
        rows[name] = dict(seconds_per_step=median, ratio_to_baseline=median / base_median,
                          max_abs_diff_vs_fp32=float(err.max()), mean_abs_diff_vs_fp32=float(err.mean()),
                          mean_abs_output=float(ref.abs().mean()))

    up = build("upsample", device)
    up_half = half_copy(up, half, device)
    low_res = torch.rand(1, 3, 64, 64, generator=gen).to(device) * 2 - 1
    x_up = torch.randn(1, 3, 256, 256, generator=gen).to(device)
    with torch.no_grad():
        d32 = text2im_denoiser(up, tokens, mask, 1.0, low_res=low_res)
        d16 = text2im_denoiser(up_half, tokens, mask, 1.0, low_res=low_res)
        half_name = str(half).split(".")[-1]
        up_variants = {"upsampler fp32": lambda: d32(x_up, t), f"upsampler {half_name}": lambda: d16(x_up, t)}
        if on_cpu:
            d_wino = text2im_denoiser(winograd_copy(up, device), tokens, mask, 1.0, low_res=low_res)
            up_variants["upsampler fp32 + winograd"] = lambda: d_wino(x_up, t)
            reference = d32(x_up, t)
        for fn in up_variants.values():
            fn()
        up_times = {name: [] for name in up_variants}
        for _ in range(max(1, args.repeats - 1)):
            for name, fn in up_variants.items():
                up_times[name].append(timed(fn, device))
    for name in up_variants:
        rows[name] = dict(seconds_per_step=statistics.median(up_times[name]))
    if on_cpu:
        row = rows["upsampler fp32 + winograd"]
        row["ratio_to_fp32"] = row["seconds_per_step"] / rows["upsampler fp32"]["seconds_per_step"]
        with torch.no_grad():
            row["max_abs_diff_vs_fp32"] = float((d_wino(x_up, t) - reference).abs().max())
    return dict(steps=rows, text_encoding_seconds=text_time, half=str(half).split(".")[-1])


WINOGRAD = "ours fp32 + winograd (sdpa, text once)"


def winograd_copy(model, device):
    """A copy of ``model`` whose 3x3 convolutions run as Winograd F(4x4, 3x3), as the CLI does in fp32."""
    copy = weights_copy(model)
    use_winograd(copy)
    return copy.to(device).eval()


def recipe_steps(stage) -> int:
    """Model calls of a stage: its respaced steps, of which ``strength`` runs."""
    model_like = build_preset("tiny-base")  # only the schedule fields matter here
    return strength_steps(stage_diffusion(model_like, stage).num_timesteps, stage.strength)


OUR_RECIPES = {"default": (DEFAULT_BASE, DEFAULT_UPSAMPLE), "fast": RECIPES["fast"]}


def project_e2e(step_rows: dict, text_time: float, half: str) -> dict:
    n_nb_base, n_nb_up = recipe_steps(NOTEBOOK_BASE), recipe_steps(NOTEBOOK_UPSAMPLE)
    s = {k: v["seconds_per_step"] for k, v in step_rows.items()}
    baseline_step = s["baseline fp32 (official attention, text every step)"]
    notebook = n_nb_base * baseline_step + n_nb_up * s["upsampler fp32"]
    rows = {"notebook recipe (fp32, official implementation)": dict(base_steps=n_nb_base, upsample_steps=n_nb_up,
                                                                    seconds=notebook)}
    for name, (base, up) in OUR_RECIPES.items():
        n_base, n_up = recipe_steps(base), recipe_steps(up)
        for precision in ("fp32", half, "fp32 + winograd"):
            if f"upsampler {precision}" not in s:
                continue
            seconds = text_time + n_base * s[f"ours {precision} (sdpa, text once)"] + n_up * s[f"upsampler {precision}"]
            rows[f"{name} recipe {precision}"] = dict(base_steps=n_base, upsample_steps=n_up, seconds=seconds,
                                                      speedup_vs_notebook=notebook / seconds)
        rows[f"{name} recipe: model calls only"] = (n_nb_base + n_nb_up) / (n_base + n_up)
    return rows


def e2e_real(device, recipe: str, dtype: torch.dtype = torch.float32, winograd: bool = False) -> dict:
    """Run text -> 256 px end to end, once: one of ``OUR_RECIPES`` through the pipeline (models in
    ``dtype``), or (``"notebook"``) the official notebook's procedure with the baseline
    implementation: the guided model function re-encoding the doubled captions every step,
    official attention, 100 DDPM steps, then fast27 DDPM upsampler steps from 0.997-scaled noise."""
    from glide.checkpoints import to_precision
    from glide.pipelines import Text2ImagePipeline

    base, up = build("base", device), build("upsample", device)
    prompt = "an oil painting of a corgi"
    start = time.perf_counter()
    if recipe != "notebook":
        base_stage, up_stage = OUR_RECIPES[recipe]
        pipe = Text2ImagePipeline(to_precision(base, dtype), to_precision(up, dtype))
        if winograd:
            use_winograd(base), use_winograd(up)
        out = pipe(prompt, seed=0, base=base_stage, upsample=up_stage, progress=True)
        return dict(seconds=time.perf_counter() - start, size=list(out.samples.shape),
                    recipe=f"{base_stage.sampler} {base_stage.timesteps} + {up_stage.sampler} {up_stage.timesteps} "
                           f"(strength {up_stage.strength})", model_calls=[recipe_steps(base_stage),
                                                                            recipe_steps(up_stage)],
                    dtype=str(dtype).removeprefix("torch."), winograd=winograd)
    gen = torch.Generator().manual_seed(0)
    tokens, mask = base.tokenize([prompt])
    pad = torch.full_like(tokens, base.config.n_vocab - 1), torch.zeros_like(mask)

    def guided(x, t):  # the notebook's model_fn, on the doubled batch
        half = x[: len(x) // 2]
        out = base(torch.cat([half, half]), t, torch.cat([tokens, pad[0]]), torch.cat([mask, pad[1]]))
        eps, rest = out[:, :3], out[:, 3:]
        cond, uncond = eps.chunk(2)
        half_eps = uncond + 3.0 * (cond - uncond)
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)

    with torch.no_grad(), official_attention():
        diffusion = stage_diffusion(base, NOTEBOOK_BASE)
        low_res = sample("ddpm", guided, diffusion, (2, 3, 64, 64), generator=gen, progress=True)[:1]
        up_diffusion = stage_diffusion(up, NOTEBOOK_UPSAMPLE)
        x_T = torch.randn(1, 3, 256, 256, generator=gen) * 0.997
        out = sample("ddpm", lambda x, t: up(x, t, tokens, mask, low_res=low_res), up_diffusion, x_T,
                     generator=gen, progress=True)
    return dict(seconds=time.perf_counter() - start, size=list(out.shape))


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors [N, D]."""
    import numpy as np
    from scipy import linalg

    a, b = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def _sample_set(denoiser, schedule, shape, progress, sampler, respacing, seed, noise_seed=None):
    """Samples from x_T drawn with ``seed``; per-step noise from ``noise_seed`` (default: same)."""
    diffusion = GaussianDiffusion.from_schedule(schedule, respacing=respacing)
    gen = torch.Generator().manual_seed(seed)
    x_T = torch.randn(shape, generator=gen)
    if noise_seed is not None:
        gen = torch.Generator().manual_seed(noise_seed)
    with torch.no_grad():
        return sample(sampler, denoiser, diffusion, x_T, generator=gen, progress=progress)


def _pooled_features(x, cells):
    """cells x cells average-pooled pixels: a cheap, model-free feature for the Fréchet distance."""
    return torch.nn.functional.avg_pool2d(x, x.shape[-1] // cells).flatten(1)


# The official code's tiny random models and their inputs (the test suite's reference fixtures).
FIXTURES = Path(os.environ.get("GLIDE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = FIXTURES / "fixtures" / "glide_reference"


def _fixture(name: str):
    path = FIXTURES / name
    if not path.exists():
        raise SystemExit(f"reference fixture {path} not found: set GLIDE_SHARED to the shared/ folder "
                         "or pass --skip-quality")
    return path


def load_fixture_model(variant: str):
    """The reference fixture's tiny U-Net ``variant``, built from its official options."""
    from glide.compat import create_model_and_diffusion

    options = json.loads(_fixture(f"{variant}_options.json").read_text())["create_model_and_diffusion_kwargs"]
    model, _ = create_model_and_diffusion(**options)
    state = torch.load(_fixture(f"{variant}_state_dict.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def _quality_cases(args):
    """(name, model, prompt tokens, mask, extra model inputs, guidance scale, step counts)."""
    if args.quality_model:
        from glide.checkpoints import load_model

        model = load_model(args.quality_model)
        tokens, mask = model.tokenize([args.quality_prompt])
        yield f"trained {model.config.image_size}px base ({args.quality_model})", model, tokens, mask, {}, 3.0, (
            10, 15, 20, 25)
    for variant, steps, guidance in [("upsample", (4, 5, 6, 8, 10), 1.0), ("base", (10, 15, 20, 25), 3.0)]:
        ref = torch.load(_fixture(f"{variant}_forward.pt"), map_location="cpu", weights_only=True)
        extra = {"low_res": ref["low_res"][:1]} if "low_res" in ref else {}
        yield (f"fixture {variant} (random weights)", load_fixture_model(variant), ref["tokens"][:1],
               ref["mask"][:1], extra, guidance, steps)


def _batched_denoiser(model, tokens, mask, extra, guidance, count):
    """The CFG denoiser for ``count`` copies of one prompt (and of its extra inputs)."""
    batch = {k: v.expand(count, -1, -1, -1) for k, v in extra.items()}
    return text2im_denoiser(model, tokens.expand(count, -1), mask.expand(count, -1), guidance, **batch)


def quality(args) -> dict:
    """Few-step samplers against 1000-step ones: on a trained model (``--quality-model``) and on
    the reference fixture's tiny models (random weights, real architecture and schedules)."""
    n = args.quality_samples
    result = {"samples_per_set": n, "ode_reference": "DDIM with all 1000 steps, same x_T"}
    for name, model, tokens, mask, extra, guidance, steps_list in _quality_cases(args):
        size = model.config.image_size

        denoiser_for = partial(_batched_denoiser, model, tokens, mask, extra, guidance)

        run = partial(_sample_set, denoiser_for(n), model.config.noise_schedule, (n, 3, size, size), args.progress)
        ode = run("ddim", "1000", 1)
        rows = {}
        for steps in steps_list:
            for sampler in ("dpm++2m", "dpm++3m", "ddim"):
                for spacing in ("", "logsnr"):
                    respacing = f"{spacing}{steps}"
                    rows[f"{sampler}-{respacing}"] = float((run(sampler, respacing, 1) - ode).abs().mean())
        if name.startswith("trained"):
            # How far apart two 1000-step DDPM runs from the same x_T land (fresh noise each step).
            rows["DDPM-1000 vs DDPM-1000, other noise"] = float(
                (_sample_set(denoiser_for(n), model.config.noise_schedule, (n, 3, size, size), args.progress,
                             "ddpm", "1000", 1, noise_seed=7)
                 - run("ddpm", "1000", 1)).abs().mean())
        result[f"{name}: mean |x - x_ODE-1000| (pixels in [-1, 1])"] = rows
        if name.startswith("trained") and args.fd_samples:
            feats = partial(_pooled_features, cells=4)
            big = partial(_sample_set, denoiser_for(args.fd_samples), model.config.noise_schedule,
                          (args.fd_samples, 3, size, size), args.progress)
            a = feats(big("ddpm", "1000", 2))
            result[f"{name}: Frechet distance to a DDPM-1000 sample set"] = {
                "DDPM-1000, other seeds (noise floor)": frechet(a, feats(big("ddpm", "1000", 3))),
                "DDPM-100 (notebook)": frechet(a, feats(big("ddpm", "100", 4))),
                f"dpm++2m-{DEFAULT_BASE.timesteps} (ours)":
                    frechet(a, feats(big("dpm++2m", DEFAULT_BASE.respacing, 5))),
            }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--quality-samples", type=int, default=4, help="images per ODE-distance run")
    parser.add_argument("--fd-samples", type=int, default=0,
                        help="also a Fréchet distance between DDPM-1000 and few-step sample sets of this size "
                             "(slow on a CPU: 3000+ model calls)")
    parser.add_argument("--progress", action="store_true", help="progress bars for the quality runs")
    parser.add_argument("--quality-model", help="a trained base checkpoint/run folder for the quality check")
    parser.add_argument("--quality-prompt", default="a red circle above a blue square")
    parser.add_argument("--e2e", action="store_true",
                        help="also run both recipes end to end for real (the notebook one takes ~6 min on 2 cores)")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()

    report = dict(machine=dict(platform=platform.platform(), processor=platform.processor(),
                               threads=torch.get_num_threads(), torch=torch.__version__, device=args.device))
    if not args.skip_speed:
        steps = step_benchmark(args, args.device)
        report["per_step"] = steps
        report["end_to_end_projected"] = project_e2e(steps["steps"], steps["text_encoding_seconds"], steps["half"])
    if args.e2e:
        from glide.devices import auto_dtype

        dtype, why = auto_dtype(torch.device(args.device), 10**9, 0)  # official sizes
        measured = {}
        for recipe in OUR_RECIPES:
            measured[f"{recipe} recipe fp32"] = e2e_real(args.device, recipe)
            if torch.device(args.device).type == "cpu":  # the CLI's fp32 on a CPU
                measured[f"{recipe} recipe fp32 + winograd"] = e2e_real(args.device, recipe, winograd=True)
            if dtype != torch.float32:
                measured[f"{recipe} recipe {str(dtype).removeprefix('torch.')} ({why})"] = e2e_real(
                    args.device, recipe, dtype=dtype)
        notebook = e2e_real(args.device, "notebook")
        for row in measured.values():
            row["speedup_vs_notebook"] = notebook["seconds"] / row["seconds"]
        measured["notebook recipe fp32 (baseline implementation)"] = notebook
        report["end_to_end_measured"] = measured
    if not args.skip_quality:
        report["quality"] = quality(args)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
