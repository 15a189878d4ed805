"""Training-step speed on this machine: images/s and achieved FLOP rate vs. the matmul peak.

For a 32 px and a 64 px base configuration (~15-20M parameters, text transformer included) it
times full training steps (the trainer's own ``Text2ImStage.loss`` -> backward -> fused AdamW ->
EMA) in fp32 and under bf16 autocast, and reports the FLOP rate they reach: forward FLOPs are
counted with ``torch.utils.flop_counter.FlopCounterMode`` and a training step is taken as 3x the
forward. The rate is compared with the fp32 / bf16 ``torch.mm`` throughput measured in the same
run (large square matmuls: the best this CPU does), so "50%" means half of what the hardware
reaches on ideal GEMMs. Medians over the timed steps, after warm-up.

Run it with glibc's allocator told to keep freed memory (large activations are otherwise
returned to the OS and page-faulted back every step)::

    MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 \\
        python benchmarks/training.py [--batch 16] [--steps 5] [--threads N] [--channels-last] \\
        [--attention sdpa|einsum] [--sizes 32,64] [--precisions fp32,bf16]
    python benchmarks/training.py --memory     # per-sample activation memory of the 385M / 3.5B models

On a shared machine give ``--threads`` the number of *idle* cores: an OpenMP thread waiting for a
busy core stalls every kernel (2 threads on 2 busy cores ran ~10x slower than 1 thread here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode

from glide.models import build_model, preset_config
from glide.models.unet import set_attention_backend
from glide.training import TrainConfig
from glide.training.ema import EMA
from glide.training.stages import make_stage, sample_seeds

# ~15-20M parameters each (the 385M official base is 192 channels, 3 blocks, 16 x 512 transformer).
CONFIGS = {
    32: dict(image_size=32, num_channels=96, num_res_blocks=2, channel_mult=(1, 2, 2), attention_resolutions=(16, 8),
             num_head_channels=32, xf_width=256, xf_layers=4, xf_heads=4, text_ctx=32, n_vocab=4096, dropout=0.0),
    64: dict(image_size=64, num_channels=64, num_res_blocks=2, channel_mult=(1, 2, 3, 4), attention_resolutions=(16, 8),
             num_head_channels=32, xf_width=256, xf_layers=4, xf_heads=4, text_ctx=32, n_vocab=4096, dropout=0.0),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` (median of ``repeats``)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


class FakeTokenizer:
    """Token ids from a fixed generator: the benchmark measures the network, not the BPE."""

    def __init__(self, n_vocab: int):
        self.n_vocab, self.pad_id = n_vocab, n_vocab - 1

    def batch(self, texts, text_ctx):
        generator = torch.Generator().manual_seed(len(texts))
        tokens = torch.randint(0, self.n_vocab - 1, (len(texts), text_ctx), generator=generator)
        mask = torch.arange(text_ctx)[None] < torch.randint(4, text_ctx, (len(texts), 1), generator=generator)
        return torch.where(mask, tokens, self.pad_id), mask


def bench(size: int, precision: str, batch: int, steps: int, channels_last: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(preset_config("base", **CONFIGS[size]))
    model._tokenizer = FakeTokenizer(model.config.n_vocab)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    cfg = TrainConfig(out="unused", stage="base", batch_size=batch)
    stage = make_stage(cfg, model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ema = EMA(model, (0.9999,))
    dtype = DTYPES[precision]
    autocast = (lambda: torch.autocast("cpu", dtype=dtype)) if dtype != torch.float32 else nullcontext
    images = torch.rand(batch, 3, size, size) * 2 - 1
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    data = {"image": images, "caption": ["a caption"] * batch}

    # forward FLOPs of the model alone (timesteps / noise / loss are negligible)
    tokens, mask = model.tokenize(data["caption"])
    t = torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter, autocast():
        model(images, t, tokens, mask)
    step_flops = 3 * counter.get_total_flops()

    def train_step(step: int) -> None:
        loss, _ = stage.loss(model, model, data, sample_seeds(0, step, range(batch)), autocast)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)

    for step in range(2):
        train_step(step)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        train_step(step)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"size": size, "precision": precision, "params_m": params / 1e6, "batch": batch, "step_s": seconds,
            "images_per_s": batch / seconds, "gflop_per_step": step_flops / 1e9, "gflops": step_flops / seconds / 1e9}


# The paper's 3.5B model: ADM U-Net with 512 channels and a 24 x 2048 text transformer (64 px).
PAPER_3_5B = dict(image_size=64, num_channels=512, num_res_blocks=3, channel_mult=(1, 2, 3, 4), num_head_channels=64,
                  attention_resolutions=(32, 16, 8), xf_width=2048, xf_layers=24, xf_heads=32, text_ctx=128)


def activation_bytes(config: dict, dtype: torch.dtype, checkpointing: bool) -> tuple[int, int]:
    """(parameters, bytes autograd keeps per sample) for one forward, on the meta device (no compute).

    Counts every distinct tensor saved for backward that is not a parameter. ``dtype=bfloat16``
    casts the model like ``convert_to_half`` does, norms still computing in float32 -- close to what
    autocast keeps. With ``checkpointing`` it adds the largest single block, recomputed in backward.
    """
    from glide.models import unet

    with torch.device("meta"):
        model = build_model(preset_config("base", **config))
    if dtype != torch.float32:
        model.to(dtype)
    model.train().set_grad_checkpointing(checkpointing)
    params = {id(p) for p in model.parameters()}
    seen: set[int] = set()
    total, block_sizes = [0], []

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if id(t) not in seen and id(base) not in params and id(t) not in params:
            seen.add(id(t))
            total[0] += t.numel() * t.element_size()
        return t

    run_block = unet.UNetBackbone._run_block

    def measured_block(self, module, h, emb, encoder_out):  # the block's own saved tensors, uncheckpointed
        before = total[0]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(h, emb, encoder_out)
        block_sizes.append(total[0] - before)
        total[0] = before
        return run_block(self, module, h, emb, encoder_out)

    size, ctx = model.config.image_size, model.config.text_ctx
    x = torch.zeros(1, 3, size, size, device="meta", dtype=dtype)
    t = torch.zeros(1, dtype=torch.long, device="meta")
    tokens = torch.zeros(1, ctx, dtype=torch.long, device="meta")
    mask = torch.ones(1, ctx, dtype=torch.bool, device="meta")
    unet.UNetBackbone._run_block = measured_block
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x, t, tokens, mask)
    finally:
        unet.UNetBackbone._run_block = run_block
    n_params = sum(p.numel() for p in model.parameters())
    return n_params, total[0] + (max(block_sizes) if checkpointing else 0)


def memory_table() -> None:
    gib = 2**30
    print("Per-sample activation memory (64 px, saved-for-backward tensors, meta-device count):")
    print(f"{'model':>8} {'params':>8} {'fp32':>9} {'bf16':>9} {'fp32+ckpt':>10} {'bf16+ckpt':>10}")
    for name, config in (("base", {}), ("3.5B", PAPER_3_5B)):
        cells = []
        for dtype, ckpt in ((torch.float32, False), (torch.bfloat16, False), (torch.float32, True),
                            (torch.bfloat16, True)):
            n_params, nbytes = activation_bytes(config, dtype, ckpt)
            cells.append(f"{nbytes / gib:.3f} GiB")
        print(f"{name:>8} {n_params / 1e6:>7.0f}M " + " ".join(f"{c:>9}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--attention", choices=("sdpa", "einsum"), default="sdpa")
    parser.add_argument("--memory", action="store_true", help="print the activation-memory table and exit")
    args = parser.parse_args()
    if args.memory:
        memory_table()
        return
    torch.set_num_threads(args.threads)
    set_attention_backend(args.attention)
    precisions = args.precisions.split(",")
    peaks = {p: matmul_peak(DTYPES[p]) for p in precisions}
    print(f"torch {torch.__version__}, {args.threads} threads, attention {args.attention}, "
          f"channels_last={args.channels_last}, batch {args.batch}")
    print("matmul peak (2048^3): " + ", ".join(f"{p} {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    header = (f"{'size':>4} {'prec':>5} {'params':>7} {'step s':>7} {'img/s':>7} {'GFLOP/step':>10} "
              f"{'GFLOP/s':>8} {'% peak':>7}")
    print(header)
    print("-" * len(header))
    for size in (int(s) for s in args.sizes.split(",")):
        for precision in precisions:
            r = bench(size, precision, args.batch, args.steps, args.channels_last)
            share = 100 * r["gflops"] * 1e9 / peaks[precision]
            print(f"{size:>4} {precision:>5} {r['params_m']:>6.1f}M {r['step_s']:>7.3f} {r['images_per_s']:>7.1f} "
                  f"{r['gflop_per_step']:>10.1f} {r['gflops']:>8.1f} {share:>6.0f}%", flush=True)


if __name__ == "__main__":
    main()
