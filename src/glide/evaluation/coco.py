"""The paper's zero-shot MS-COCO FID protocol (``glide eval coco``).

GLIDE (Nichol et al. 2021, Table 2) reports FID on MS-COCO at 256 x 256 from 30,000 captions of
the validation set, without training on COCO ("zero-shot"): 12.24 for GLIDE with classifier-free
guidance (12.89 for the model trained on data filtered to exclude COCO-like images). The protocol
here, step by step:

1. ``read_coco_captions``: from the annotation file the user points to (``captions_val2014.json``),
   ``count`` distinct images drawn at random (``seed``), one of each image's captions at random;
2. ``prepare_references``: each drawn image centre-cropped to a square and resized to the samples'
   size (256 px for the official cascade), written once as PNG;
3. one image per caption per guidance scale (``glide sample --captions`` machinery: resumable,
   shardable under torchrun);
4. ``folder_features``: the standard 2048-d Inception-v3 pool features (torch-fidelity's port of the
   TF network, resizing to 299 inside), streamed in batches and cached; FID between the sets.

The one number it is compared with is the paper's: FID is sensitive to the image count, resizing
and feature network, so only numbers from this exact protocol are comparable with each other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..images import load_image, resize_center_crop, save_png
from .metrics import Features

COCO_COUNT = 30_000
PAPER_ZERO_SHOT_FID = {"GLIDE (classifier-free guidance), 256 px": 12.24,
                       "GLIDE, trained on validation-filtered data": 12.89}


def read_coco_captions(annotations: str | Path, count: int = COCO_COUNT, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` (image file name, caption) pairs of distinct images from a COCO captions file."""
    path = Path(annotations)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        captions: dict[int, list[str]] = {}
        for annotation in data["annotations"]:
            captions.setdefault(int(annotation["image_id"]), []).append(" ".join(str(annotation["caption"]).split()))
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a COCO captions file: expected JSON with 'images' [{{id, file_name}}] and "
                         f"'annotations' [{{image_id, caption}}] (e.g. annotations/captions_val2014.json)") from None
    ids = sorted(i for i in captions if i in files and any(captions[i]))
    if count > len(ids):
        raise ValueError(f"{path} has captions for {len(ids)} images, fewer than the {count} asked for; "
                         f"lower --count")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(ids), size=count, replace=False)
    pairs = []
    for index in chosen:
        image_id = ids[int(index)]
        options = [c for c in captions[image_id] if c]
        pairs.append((files[image_id], options[int(rng.integers(len(options)))]))
    return pairs


def reference_file(number: int) -> str:
    return f"{number:06d}.png"


def prepare_references(files: Sequence[str], images: str | Path, out: str | Path, size: int,
                       progress: bool = True) -> list[Path]:
    """Each of ``files`` (under ``images``) centre-cropped and resized to ``size``, as
    ``out/NNNNNN.png``; files already there are kept (an interrupted run resumes)."""
    images, out = Path(images), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, name in enumerate(tqdm(files, desc="reference images", unit="img", disable=not progress)):
        target = out / reference_file(number)
        paths.append(target)
        if target.is_file():
            continue
        source = images / name
        try:
            image = load_image(source).convert("RGB")
        except Exception as e:  # Pillow raises several types for a missing or broken file
            raise ValueError(f"cannot read the COCO image {source}: {e}; point --images at the folder holding "
                             f"the annotation file's images (e.g. val2014/)") from None
        save_png(resize_center_crop(image, size), target)
    return paths


def folder_features(paths: Sequence[Path], network: Callable[[torch.Tensor], torch.Tensor], name: str,
                    cache: str | Path | None = None, batch_size: int = 50, progress: bool = True,
                    desc: str = "features") -> Features:
    """``network`` (uint8 ``[B, 3, H, W]`` -> ``[B, D]``) over the images at ``paths``, in batches;
    with ``cache``, stored there and reused when it was computed for the same files."""
    key = "\n".join(str(p.name) for p in paths)
    if cache is not None and Path(cache).is_file():
        stored = load_file(cache)
        if bytes(stored["key"].tolist()).decode() == key:
            return Features(stored["values"], name)
    values = []
    with torch.no_grad(), tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = [np.asarray(load_image(p).convert("RGB")) for p in paths[start:start + batch_size]]
            if any(c.shape != chunk[0].shape for c in chunk):
                raise ValueError(f"images of different sizes among {paths[start].parent}; FID needs one size")
            batch = torch.from_numpy(np.stack(chunk)).permute(0, 3, 1, 2).contiguous()
            values.append(network(batch).float().cpu())
            bar.update(len(chunk))
    features = torch.cat(values)
    if cache is not None:
        cache = Path(cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.name}.partial-{os.getpid()}")
        save_file({"values": features.contiguous(), "key": torch.tensor(list(key.encode()), dtype=torch.uint8)},
                  partial)
        os.replace(partial, cache)
    return Features(features, name)
