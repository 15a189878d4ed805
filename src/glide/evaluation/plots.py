"""matplotlib plots of evaluation results (matplotlib comes with the ``eval`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .judge import ATTRIBUTES


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'glide[eval]' (or pip install matplotlib)") from None
    return plt


def plot_accuracy(summary: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Bar chart of the judge's per-attribute accuracy, the whole-caption bar with its 95% interval."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    values = [summary["accuracy"][k] for k in ATTRIBUTES]
    bars = ax.bar(ATTRIBUTES, values, color=["#8da0cb"] * (len(ATTRIBUTES) - 1) + ["#fc8d62"])
    low, high = summary["caption_accuracy_ci95"]
    ax.errorbar(len(ATTRIBUTES) - 1, values[-1], yerr=[[values[-1] - low], [high - values[-1]]], color="black",
                capsize=4)
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"shapes judge, {summary['images']} images")
    return _save(fig, plt, path)


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path, setting: str = "guidance_scale") -> Path:
    """FID against whole-caption accuracy, one labelled point per setting (with 95% intervals)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    x = [r["acc_caption"] for r in rows]
    has_fid = all("fid" in r for r in rows)
    y = [r["fid"] for r in rows] if has_fid else [0.0] * len(rows)
    ax.plot(x, y, "o-", color="#1f77b4")
    for r, xi, yi in zip(rows, x, y, strict=True):
        lo, hi = r["caption_accuracy_ci95"]
        ax.plot([lo, hi], [yi, yi], color="#1f77b4", alpha=0.4)
        if has_fid:
            flo, fhi = r["fid_ci95"]
            ax.plot([xi, xi], [flo, fhi], color="#1f77b4", alpha=0.4)
        ax.annotate(f"{setting} {r[setting]:g}", (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("whole-caption accuracy (shapes judge)")
    ax.set_ylabel("shapes-FID (judge features)" if has_fid else "(FID not computed)")
    ax.set_title("caption accuracy vs FID")
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
