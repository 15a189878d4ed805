"""Request and response bodies of the HTTP API, with their bounds (pydantic; FastAPI turns a
violation into a 422 naming the field).

Types are strict (``"3"`` is not a number) and unknown fields are refused, so a misspelt option
is an error rather than silently ignored. The bounds here are hard ceilings; a server's own,
lower limits (``glide serve --max-images ...``) are checked in ``api``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..diffusion import step_count
from .limits import HARD_MAX_IMAGES, HARD_MAX_STEPS, MAX_PROMPT_CHARS

# glide.sampling.SAMPLERS (a test keeps them equal)
Sampler = Literal["ddpm", "ddim", "plms", "dpm++2m", "dpm++3m", "dpm++2m-sde"]
# A step count, or a respacing (glide.diffusion.space_timesteps) that also says where the steps go.
Steps = (Annotated[int, Field(ge=1, le=HARD_MAX_STEPS)]
         | Annotated[str, Field(pattern=r"^\s*((ddim|trailing|logsnr|karras)?\d+|\d+(,\d+)+|fast27)\s*$")])
Base64Png = Field(description="A PNG (or JPEG) image, base64-encoded", min_length=1)


class SamplingRequest(BaseModel):
    """The fields every endpoint shares. Unset sampling fields follow the model's recommendation
    (``GET /v1/models``)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What the image shows")
    num_images: int = Field(1, ge=1, le=HARD_MAX_IMAGES)
    guidance_scale: float | None = Field(None, ge=0, le=100, allow_inf_nan=False,
                                         description="Classifier-free guidance of the base stage (1 = none)")
    sampler: Sampler | None = None
    steps: Steps | None = Field(None, description="Sampling steps of the base stage: a count (evenly spaced) "
                                "or a respacing such as 'trailing10', 'logsnr10', 'karras10'")
    upsample: bool = Field(True, description="Run the upsampler (false: the base model's small images)")
    upsample_steps: Steps | None = Field(None, description="Respaced steps of the upsampler's process (it "
                                         "samples a part): a count or a respacing, as steps")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Image k uses seed and k; unset: random")
    model: str | None = Field(None, max_length=200, description="A name from GET /v1/models (default: the first)")

    @field_validator("steps", "upsample_steps")
    @classmethod
    def _step_spec(cls, steps: int | str | None) -> int | str | None:
        if steps is None:
            return None
        count = step_count(steps)  # ValueError (a 422) saying what is wrong
        if count > HARD_MAX_STEPS:
            raise ValueError(f"{count} steps is over the limit of {HARD_MAX_STEPS}")
        return steps.strip() if isinstance(steps, str) else steps

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, prompt: str) -> str:
        if not prompt.strip():
            raise ValueError('the prompt is blank; describe the image to make, e.g. "a red circle"')
        return prompt


class GenerateRequest(SamplingRequest):
    """Text to image."""


class InpaintRequest(SamplingRequest):
    """Repaint the white region of ``mask`` in ``image`` (same size) from the prompt."""

    image: str = Base64Png
    mask: str = Field(description="A PNG of the image's size: white = repaint, black = keep", min_length=1)


class EditRequest(SamplingRequest):
    """Image to image: noise ``image`` ``strength`` of the way and denoise it towards the prompt."""

    image: str = Base64Png
    strength: float = Field(0.6, gt=0, le=1, allow_inf_nan=False,
                            description="How much of the image is redrawn: near 0 keeps it, 1 ignores it")


class ImagesResponse(BaseModel):
    images: list[str] = Field(description="base64 PNGs")
    seed: int = Field(description="The seed used (give it back to get the same images)")
    model: str
    width: int
    height: int


class ModelInfo(BaseModel):
    name: str
    spec: str
    image_size: int
    endpoints: list[str]
    sampler: str
    steps: int | str
    guidance_scale: float


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    limits: dict[str, int]


class Health(BaseModel):
    status: str
    queued: int
    completed: int
    cancelled: int
    failed: int
    batches: int
    steps: int
