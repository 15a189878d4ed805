"""From a validated request to a queued job, shared by the HTTP API and the web UI: this
server's limits, the model, the edit inputs, the sampling settings and the seed."""

from __future__ import annotations

import secrets

from PIL import Image

from ..diffusion import step_count
from .limits import Limits
from .models import ModelRegistry, ServedModel
from .schemas import SamplingRequest
from .security import RequestRefused, fingerprint
from .worker import Job


def prepare_job(registry: ModelRegistry, limits: Limits, kind: str, request: SamplingRequest,
                images: dict[str, Image.Image] | None = None, *, strength: float | None = None
                ) -> tuple[ServedModel, Job]:
    """The model and the job for ``request`` (``images``: decoded ``image`` and, to inpaint, ``mask``);
    RequestRefused (422/413) naming the field when it is over a limit or inconsistent."""
    steps = {name: value if value is None else step_count(value)  # validated by the schema
             for name, value in (("steps", request.steps), ("upsample_steps", request.upsample_steps))}
    for name, value, limit in (("num_images", request.num_images, limits.max_images),
                               ("steps", steps["steps"], limits.max_steps),
                               ("upsample_steps", steps["upsample_steps"], limits.max_steps)):
        if value is not None and value > limit:
            raise RequestRefused(422, f"{name}: {value} is over this server's limit of {limit}")
    try:
        model = registry.get(request.model, kind)
    except ValueError as e:
        raise RequestRefused(422, f"model: {e}") from None
    images = images or {}
    for name, image in images.items():
        if max(image.size) > limits.max_image_size:
            raise RequestRefused(413, f"{name} is {image.width}x{image.height} px; this server accepts at most "
                                      f"{limits.max_image_size}x{limits.max_image_size}")
    if kind == "inpaint":
        image, mask = images["image"], images["mask"]
        if mask.size != image.size:
            raise RequestRefused(422, f"mask is {mask.width}x{mask.height} px but image is "
                                      f"{image.width}x{image.height}: give a mask of the image's size")
        if mask.convert("L").getextrema()[1] < 128:
            raise RequestRefused(422, "mask marks nothing to repaint: paint the region to change white")
    settings = model.settings(kind, sampler=request.sampler, steps=request.steps,
                              guidance_scale=request.guidance_scale, upsample=request.upsample,
                              upsample_steps=request.upsample_steps, strength=strength,
                              inputs=fingerprint(*images.values()) if images else None, max_steps=limits.max_steps)
    seed = request.seed if request.seed is not None else secrets.randbits(63)
    return model, Job(settings, request.prompt, request.num_images, seed, images)
