"""Sample-quality metrics: FID, precision / recall, CLIP score, bootstrap confidence intervals.

Every distance is computed on ``Features``: a ``[N, D]`` tensor tagged with the network that made
it (``"shapes-judge"``, ``"inception-v3"``), so two sets from different networks are refused
instead of compared. ``judge_features`` gives the shapes domain's features (the judge's
penultimate layer); ``inception_features`` the standard 2048-d pool features of the TF-ported
Inception v3 through torch-fidelity (the ``eval`` extra), when its weights are on disk.

The Fréchet distance is our own few lines of float64 torch: the one library that fits
(torchmetrics) would add a dependency for them, and this form stays exact for the low-rank
covariances of small sample sets (it takes square roots of eigenvalues of symmetric PSD
matrices, never a general ``sqrtm``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

FID_MIN_SAMPLES = 10  # per set; FID is biased upwards for small sets: compare sets of equal size
PR_NEIGHBOURS = 3  # k of the k-NN radii (Kynkaanniemi et al. 2019)
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                         + INCEPTION_WEIGHTS_FILE)


@dataclass(frozen=True)
class Features:
    """``values``: ``[N, D]`` features of N images; ``network``: the name of what computed them."""

    values: torch.Tensor
    network: str

    def __len__(self) -> int:
        return len(self.values)


def _check_pair(a: Features, b: Features, what: str, minimum: int) -> tuple[torch.Tensor, torch.Tensor]:
    if a.network != b.network:
        raise ValueError(f"{what}: features from different networks ({a.network!r} vs {b.network!r}); "
                         f"compute both sets with the same network")
    if a.values.shape[1:] != b.values.shape[1:]:
        raise ValueError(f"{what}: feature sizes differ ({a.values.shape[1]} vs {b.values.shape[1]})")
    for name, f in (("first", a), ("second", b)):
        if len(f) < minimum:
            raise ValueError(f"{what} needs at least {minimum} images per set; the {name} set has {len(f)}")
    return a.values.double(), b.values.double()


def frechet_distance(a: Features, b: Features) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), the FID of two feature sets."""
    x, y = _check_pair(a, b, "FID", FID_MIN_SAMPLES)
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(y.shape[1], -1)
    root_x = _psd_sqrt(cov_x)
    cross = torch.linalg.eigvalsh(root_x @ cov_y @ root_x).clamp(min=0).sqrt().sum()
    distance = (mu_x - mu_y).square().sum() + cov_x.trace() + cov_y.trace() - 2 * cross
    return max(float(distance), 0.0)


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def precision_recall(real: Features, fake: Features, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    Each set's manifold is the union of balls around its points reaching their k-th nearest
    neighbour in the same set. Precision: the fraction of ``fake`` inside the real manifold;
    recall: the fraction of ``real`` inside the fake manifold.
    """
    x, y = _check_pair(real, fake, "precision/recall", k + 1)
    return _coverage(x, y, k), _coverage(y, x, k)


def _coverage(manifold: torch.Tensor, points: torch.Tensor, k: int) -> float:
    """The fraction of ``points`` within the k-NN ball of some point of ``manifold``."""
    radii = torch.cdist(manifold, manifold).kthvalue(k + 1, dim=1).values  # +1: the point itself is at 0
    inside = (torch.cdist(points, manifold) <= radii[None, :]).any(dim=1)
    return float(inside.double().mean())


# --------------------------------------------------------------------------------------------
# Confidence intervals
# --------------------------------------------------------------------------------------------
def bootstrap_ci(values: Sequence[float] | torch.Tensor, level: float = 0.95, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-image 0/1 caption scores)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def fid_with_ci(a: Features, b: Features, level: float = 0.95, resamples: int = 50,
                seed: int = 0) -> tuple[float, tuple[float, float]]:
    """(FID, interval): both sets resampled with replacement ``resamples`` times.

    Resampling repeats images, which shrinks the covariances and biases FID upwards, so
    percentiles of the resampled FIDs would sit beside the estimate; the interval is the normal
    one, FID +- z * (bootstrap standard deviation), which only needs the spread.
    """
    point = frechet_distance(a, b)
    rng = np.random.default_rng(seed)
    draws = [frechet_distance(Features(a.values[rng.integers(0, len(a), len(a))], a.network),
                              Features(b.values[rng.integers(0, len(b), len(b))], b.network))
             for _ in range(resamples)]
    z = float(torch.distributions.Normal(0, 1).icdf(torch.tensor(0.5 + level / 2)))
    spread = z * float(np.std(draws, ddof=1))
    return point, (max(point - spread, 0.0), point + spread)


# --------------------------------------------------------------------------------------------
# Feature networks and CLIP score
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def judge_features(judge: nn.Module, images: torch.Tensor, batch_size: int = 256) -> Features:
    """The shapes judge's penultimate features of ``images`` ``[N, 3, H, W]`` in [-1, 1]."""
    device = next(judge.parameters()).device
    values = [judge.features(chunk.to(device)).float().cpu() for chunk in images.split(batch_size)]
    return Features(torch.cat(values), "shapes-judge")


def inception_weights(path: str | Path | None = None) -> Path:
    """The Inception weights file: ``path``, else ``$GLIDE_INCEPTION_WEIGHTS``, else torch's hub
    cache (where torch-fidelity keeps it). Never downloads; says how to when it is missing."""
    candidates = [Path(p).expanduser() for p in (path, os.environ.get("GLIDE_INCEPTION_WEIGHTS")) if p]
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the Inception weights are not on this machine (looked for {', '.join(map(str, candidates))}); "
        f"download {INCEPTION_WEIGHTS_URL} once (e.g. curl -L -o {candidates[-1]} URL) or pass its path")


def inception_network(weights: str | Path | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch-fidelity's Inception v3 (2048-d pool features), from local weights only."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError:
        raise ImportError("Inception features need torch-fidelity: pip install 'glide[eval]'") from None
    path = inception_weights(weights)
    network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    return lambda uint8_images: network(uint8_images)[0]


@torch.no_grad()
def inception_features(images: torch.Tensor, weights: str | Path | None = None, batch_size: int = 64) -> Features:
    """Standard FID features of ``images`` ``[N, 3, H, W]`` in [-1, 1] (resized to 299 inside)."""
    network = inception_network(weights)
    as_uint8 = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Features(torch.cat([network(chunk).float().cpu() for chunk in as_uint8.split(batch_size)]),
                    "inception-v3")


@torch.no_grad()
def clip_score(clip: nn.Module, images: torch.Tensor, captions: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Per-image CLIP score ``[N]``: 100 * max(cos(image at t=0, caption), 0) with a ``NoisedClip``.

    Images ``[N, 3, H, W]`` in [-1, 1] are resized to the CLIP's input size.
    """
    if len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images; give one caption per image")
    size = clip.config.image_size
    device = clip.logit_scale.device
    scores = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size].float()
        if chunk.shape[-2:] != (size, size):
            chunk = nn.functional.interpolate(chunk, size=(size, size), mode="bicubic", antialias=True,
                                              align_corners=False).clamp(-1, 1)
        tokens, lens = clip.tokenize(list(captions[start:start + batch_size]))
        scores.append(clip.score(chunk.to(device), tokens, lens, t=0).float().cpu())
    return 100 * torch.cat(scores).clamp(min=0)
