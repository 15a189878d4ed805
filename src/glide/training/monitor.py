"""Watching a run: per-interval loss statistics (averaged over ranks) and the metric files.

``Meter`` sums the per-sample losses of every micro-batch between two log lines, also per
quarter of the diffusion process (``q0`` = the least noisy t in [0, T/4), ``q3`` the noisiest).
``MetricsLog`` appends one row per interval to ``RUN/metrics.jsonl`` and ``RUN/metrics.csv`` and,
when TensorBoard is installed, to ``RUN/tensorboard/``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger("glide.training")

QUARTERS = 4
_SUMMED = ("loss", "mse", "vb", "accuracy")


class Meter:
    """Sums of per-sample metrics since the last ``reduce``; ``reduce`` averages over all ranks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names = [name for name in _SUMMED]
        self.reset()

    def reset(self) -> None:
        # [sum per metric..., count per metric..., loss sum per quarter..., count per quarter...]
        self.totals = torch.zeros(2 * len(self.names) + 2 * QUARTERS, dtype=torch.float64, device=self.device)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        n_names = len(self.names)
        for i, name in enumerate(self.names):
            if name in metrics:
                values = metrics[name].detach().double()
                self.totals[i] += values.sum()
                self.totals[n_names + i] += values.numel()
        if "t" in metrics and "loss" in metrics:
            quarter = (metrics["t"].to(self.device) * QUARTERS).long().clamp(0, QUARTERS - 1)
            loss = metrics["loss"].detach().double()
            base = 2 * n_names
            self.totals[base:base + QUARTERS].index_add_(0, quarter, loss)
            self.totals[base + QUARTERS:].index_add_(0, quarter, torch.ones_like(loss))

    def reduce(self) -> dict[str, float]:
        """Means over every sample seen by every rank since the last reset (a collective call)."""
        totals = self.totals.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        totals = totals.tolist()
        n_names = len(self.names)
        out: dict[str, float] = {}
        for i, name in enumerate(self.names):
            if totals[n_names + i] > 0:
                out[name] = totals[i] / totals[n_names + i]
        base = 2 * n_names
        for q in range(QUARTERS):
            count = totals[base + QUARTERS + q]
            out[f"q{q}"] = totals[base + q] / count if count else float("nan")
        self.reset()
        return out


class MetricsLog:
    """Appends rows to metrics.jsonl / metrics.csv (and TensorBoard); rank 0 only."""

    def __init__(self, run_dir: Path, *, resume_step: int | None, tensorboard: bool):
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.columns: list[str] | None = None
        if resume_step is not None:
            self._truncate(resume_step)
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                self.columns = next(csv.reader(f), None)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.info("TensorBoard is not installed (pip install tensorboard); logging to metrics.jsonl/csv only")
            else:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def _truncate(self, step: int) -> None:
        """Drop rows written after the checkpoint we resume from (the lost part of an interrupted run)."""
        if self.jsonl.exists():
            rows = [line for line in self.jsonl.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step]
            self.jsonl.write_text("".join(line + "\n" for line in rows))
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                table = list(csv.reader(f))
            if table:
                header, body = table[0], table[1:]
                index = header.index("step") if "step" in header else None
                kept = [row for row in body if index is None or int(float(row[index])) <= step]
                with open(self.csv, "w", newline="") as f:
                    csv.writer(f).writerows([header, *kept])

    def write(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.columns is None:
            self.columns = list(row)
            with open(self.csv, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow([row.get(name, "") for name in self.columns])
        if self.writer is not None:
            for name, value in row.items():
                if name != "step" and isinstance(value, int | float):
                    self.writer.add_scalar(f"train/{name}", value, row["step"])

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, ((image.clamp(-1, 1) + 1) / 2).cpu(), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
