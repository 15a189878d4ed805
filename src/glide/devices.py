"""The one place that turns ``--device`` / ``--dtype`` words into a torch device and dtype.

Both the sampling commands and training call these, so ``auto`` means the same everywhere and a
device that cannot work is a ``ValueError`` naming the option, before any model is loaded.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto", *, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """``auto`` (cuda when available, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` -> a device.

    Under torchrun (``distributed``) ``cuda`` means GPU ``local_rank``; ``cuda:N`` is refused
    there because every rank would pick the same GPU. CUDA devices become the current device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {name!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if distributed:
            if device.index is not None:
                raise ValueError("under torchrun, pass --device cuda (each rank uses GPU LOCAL_RANK), not cuda:N")
            if local_rank >= count:
                raise ValueError(f"LOCAL_RANK={local_rank} but only {count} GPU(s) are visible: "
                                 f"--nproc_per_node must not exceed the number of GPUs per node")
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        elif device.index >= count:
            raise ValueError(f"--device {name}: only {count} GPU(s) are visible")
        torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine (use --device cpu)")
    if distributed and device.type not in ("cpu", "cuda"):
        raise ValueError(f"distributed training supports cpu (gloo) and cuda (nccl), not {device.type}")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` (fp16 on cuda, fp32 elsewhere), ``fp32``, ``fp16`` or ``bf16`` -> a torch dtype."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r} is not a precision; use auto, {', '.join(DTYPES)}")
    return DTYPES[name]


# --dtype auto on a CPU: bf16 only where the probe measured bf16 at least this much faster than
# fp32 (measured: ~2x on an AMD EPYC and on Intel CPUs with AMX, ~0.6x on an Intel Xeon without
# AMX: CPU flags alone do not tell), and only for models of at least ``small_params`` parameters:
# a small model gains nothing from bf16 (measured on an AMX CPU) and its outputs would change.
BF16_MIN_SPEEDUP = 1.15
PROBE_FILE = "cpu-precision.json"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _measure_bf16_speedup(repeats: int = 5) -> float:
    """fp32 time / bf16 time of what a U-Net step spends its time in: a 3x3 convolution and a
    matrix product of official-model sizes (medians of ``repeats``; under a second)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(1024, 1024, generator=gen), torch.randn(1024, 1024, generator=gen)
    x, w = torch.randn(2, 192, 32, 32, generator=gen), torch.randn(192, 192, 3, 3, generator=gen)
    times = {}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            args = [t.to(dtype) for t in (a, b, x, w)]
            samples = []
            for i in range(repeats + 1):
                start = time.perf_counter()
                torch.mm(args[0], args[1])
                torch.nn.functional.conv2d(args[2], args[3], padding=1)
                if i:  # the first run warms up
                    samples.append(time.perf_counter() - start)
            times[dtype] = statistics.median(samples)
    return times[torch.float32] / times[torch.bfloat16]


def bf16_speedup(cache: Path | None = None) -> float:
    """How many times faster bf16 runs than fp32 on this CPU (> 1: faster), measured once per CPU
    model, torch version and thread count, and cached in ``cache`` (default: the glide cache folder)."""
    from .download import cache_dir

    path = Path(cache) if cache is not None else cache_dir() / PROBE_FILE
    key = f"{_cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict) or not isinstance(known.get(key), (int, float)):
        known = known if isinstance(known, dict) else {}
        known[key] = round(_measure_bf16_speedup(), 3)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".partial-{os.getpid()}")
            partial.write_text(json.dumps(known, indent=1))
            os.replace(partial, path)  # atomic: another process reads a whole file or none
        except OSError:
            pass  # a read-only cache only costs a fresh probe next time
    return float(known[key])


def auto_dtype(device: torch.device, params: int, small_params: int) -> tuple[torch.dtype, str]:
    """``--dtype auto`` for models of ``params`` parameters on ``device``, and why (for the log):
    fp16 on CUDA; on a CPU bf16 where the cached probe found it faster (``bf16_speedup``) and the
    models are not small; fp32 otherwise."""
    if device.type == "cuda":
        return torch.float16, "auto: fp16 on CUDA"
    if device.type != "cpu":
        return torch.float32, f"auto: fp32 on {device.type}"
    if params < small_params:
        return torch.float32, f"auto: fp32 for models under {small_params // 1_000_000}M parameters"
    speedup = bf16_speedup()
    if speedup >= BF16_MIN_SPEEDUP:
        return torch.bfloat16, f"auto: bf16 ran {speedup:.2f}x the fp32 speed on this CPU"
    return torch.float32, f"auto: bf16 ran {speedup:.2f}x the fp32 speed on this CPU (no bf16 matrix units)"
