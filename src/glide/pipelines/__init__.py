"""Pipelines: prompt -> 64 px -> 256 px, inpainting, image-to-image editing, CLIP reranking.

``text2im``: StageOptions, the recipes, ``run_stage``, ``Text2ImagePipeline``; ``edit``: the
inpainting and image-to-image pipelines.

Each pipeline reads top to bottom: tokenise, bind the model into a denoiser (with guidance),
pick a respaced diffusion for the sampler, sample, hand the 64 px result to the upsampler.

    pipe = Text2ImagePipeline.from_pretrained()                 # the bundled shapes cascade, offline
    pipe("a small red circle above a large blue square", seed=0).images[0].save("shapes.png")
    pipe = Text2ImagePipeline.from_pretrained("openai", "openai")  # the official base + upsample
    pipe("an oil painting of a corgi", seed=0).images[0].save("corgi.png")
"""

from ..errors import SamplingError
from .edit import ImageToImagePipeline, InpaintPipeline, paste_known
from .text2im import (
    DEFAULT_BASE,
    DEFAULT_UPSAMPLE,
    FAST_BASE,
    FAST_UPSAMPLE,
    NOTEBOOK_BASE,
    NOTEBOOK_UPSAMPLE,
    RECIPES,
    PipelineOutput,
    StageOptions,
    Text2ImagePipeline,
    randn,
    run_stage,
    stage_diffusion,
    truncate_diffusion,
    upsample_stage,
)

__all__ = [
    "DEFAULT_BASE", "DEFAULT_UPSAMPLE", "FAST_BASE", "FAST_UPSAMPLE", "NOTEBOOK_BASE", "NOTEBOOK_UPSAMPLE", "RECIPES",
    "ImageToImagePipeline",
    "InpaintPipeline", "PipelineOutput", "SamplingError", "StageOptions", "Text2ImagePipeline", "paste_known",
    "randn", "run_stage", "stage_diffusion", "truncate_diffusion", "upsample_stage",
]
