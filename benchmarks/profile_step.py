"""Where one denoising step of the official-size models spends its time on this machine, and what
memory layout and precision change about it.

For the base (385M, 64 px, CFG: a batch of 2) and optionally the upsampler (398M, 256 px, batch 1),
with random weights: torch.profiler's self-CPU time grouped into convolutions, attention, GroupNorm,
SiLU, linear layers and the rest, for fp32 and the bf16 half path; then the median step time in
each precision with the default (contiguous) and the channels-last memory layout, and the largest
output difference channels-last makes.

    python benchmarks/profile_step.py                 # base only, ~3 min on 2 cores
    python benchmarks/profile_step.py --upsampler --repeats 3 --json profile.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from sampling import build  # benchmarks/sampling.py: random weights, zero-initialised layers given some
from torch.profiler import ProfilerActivity, profile

from glide.checkpoints import to_precision
from glide.guidance import text2im_denoiser

# aten op name fragments -> category (first match wins)
CATEGORIES = (
    ("attention", ("scaled_dot_product", "_flash_attention", "softmax", "bmm", "baddbmm")),
    ("convolution", ("conv", "mkldnn_convolution")),
    ("groupnorm", ("group_norm",)),
    ("silu", ("silu",)),
    ("linear", ("addmm", "aten::mm", "aten::linear", "matmul")),
    ("elementwise / copies", ("add", "mul", "cat", "copy", "clone", "contiguous", "to", "fill", "empty")),
)


def category(name: str) -> str:
    for label, fragments in CATEGORIES:
        if any(f in name for f in fragments):
            return label
    return "other"


def stage_inputs(model, upsampler: bool):
    gen = torch.Generator().manual_seed(0)
    ctx = model.config.text_ctx
    tokens = torch.randint(0, 50000, (1, ctx), generator=gen)
    mask = torch.zeros(1, ctx, dtype=torch.bool)
    mask[:, :12] = True
    size = model.config.image_size
    x = torch.randn(1, 3, size, size, generator=gen)
    extra = {"low_res": torch.rand(1, 3, 64, 64, generator=gen) * 2 - 1} if upsampler else {}
    return tokens, mask, x, extra


def step_fn(model, upsampler: bool, channels_last: bool):
    tokens, mask, x, extra = stage_inputs(model, upsampler)
    denoiser = text2im_denoiser(model, tokens, mask, 1.0 if upsampler else 3.0, **extra)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = torch.tensor([500])
    return lambda: denoiser(x, t)


def timed(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def breakdown(fn) -> dict[str, float]:
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[category(event.key)] += event.self_cpu_time_total / 1e6
    whole = sum(totals.values())
    return {k: round(v / whole, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def measure(name: str, upsampler: bool, repeats: int) -> dict:
    rows = {}
    with torch.no_grad():
        for precision in ("fp32", "bf16"):
            model = build(name, "cpu")
            if precision == "bf16":
                to_precision(model, torch.bfloat16)
            plain = step_fn(model, upsampler, channels_last=False)
            reference = plain()
            rows[f"{precision} profile"] = breakdown(plain)
            seconds = timed(plain, repeats)
            model_cl = model.to(memory_format=torch.channels_last)
            fast = step_fn(model_cl, upsampler, channels_last=True)
            diff = float((fast().float() - reference.float()).abs().max())
            seconds_cl = timed(fast, repeats)
            rows[precision] = {"seconds_per_step": seconds, "channels_last_seconds": seconds_cl,
                               "channels_last_ratio": seconds_cl / seconds, "channels_last_max_diff": diff}
            print(name, precision, json.dumps(rows[precision]), flush=True)
            print("   where the time goes:", rows[f"{precision} profile"], flush=True)
    rows["bf16_over_fp32"] = rows["bf16"]["seconds_per_step"] / rows["fp32"]["seconds_per_step"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--upsampler", action="store_true", help="also the 256 px upsampler")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"torch {torch.__version__}",
              "base": measure("base", False, args.repeats)}
    if args.upsampler:
        result["upsampler"] = measure("upsample", True, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
