"""The one place that turns ``--device`` / ``--dtype`` words into a torch device and dtype.

Both the sampling commands and training call these, so ``auto`` means the same everywhere and a
device that cannot work is a ``ValueError`` naming the option, before any model is loaded.
"""

from __future__ import annotations

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
