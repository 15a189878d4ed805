"""The FastAPI app: ``POST /v1/generate``, ``/v1/inpaint``, ``/v1/edit``, ``GET /v1/models``,
``GET /healthz``; OpenAPI at ``/openapi.json``. Images travel as base64 PNGs both ways.

A request is checked (schema, this server's limits, the model, the images) before it is queued;
it then waits for the sampling worker while watching its connection, and cancels its job when
the client goes away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from collections.abc import Sequence

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from PIL import Image

from ..cli.generate import image_generator
from ..errors import GlideError
from .limits import Limits
from .models import ModelRegistry, ServedModel, Settings
from .schemas import (
    EditRequest,
    GenerateRequest,
    Health,
    ImagesResponse,
    InpaintRequest,
    ModelInfo,
    ModelsResponse,
)
from .security import BodyLimit, RequestRefused, decode_image, key_matches, presented_key
from .service import prepare_job
from .worker import Cancelled, Job, QueueFull, SamplingWorker

DISCONNECT_POLL_S = 0.1
ERROR_RESPONSES = {
    401: {"description": "Missing or wrong API key"},
    413: {"description": "Request body or image too large"},
    422: {"description": "Invalid field (the message names it)"},
    503: {"description": "Queue full; retry after the Retry-After header's seconds"},
}


def create_app(registry: ModelRegistry, limits: Limits = Limits(), *, api_key: str | None = None,
               cors_origins: Sequence[str] = (), batching: bool = True) -> FastAPI:
    """The API over ``registry``'s models; its sampling worker starts and stops with the app."""
    worker = SamplingWorker(_sample_with(registry), image_generator, queue_size=limits.queue_size,
                            max_batch=limits.max_batch, batching=batching)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    def require_key(request: Request) -> None:
        if api_key is not None and not key_matches(presented_key(request.headers), api_key):
            raise HTTPException(401, "missing or wrong API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="glide", summary="GLIDE text-guided diffusion: generate, inpaint and edit images",
                  version="1", lifespan=lifespan)
    app.state.worker, app.state.registry, app.state.limits = worker, registry, limits
    app.openapi = _with_limits(app.openapi, limits)
    app.add_exception_handler(RequestValidationError, _readable_validation_error)
    app.add_exception_handler(RequestRefused, lambda request, e: JSONResponse({"detail": str(e)}, e.status))
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    v1 = dict(dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

    @app.post("/v1/generate", response_model=ImagesResponse, **v1)
    async def generate(body: GenerateRequest, request: Request) -> ImagesResponse:
        """Images from a prompt."""
        return await _sample(worker, request, *prepare_job(registry, limits, "generate", body))

    @app.post("/v1/inpaint", response_model=ImagesResponse, **v1)
    async def inpaint(body: InpaintRequest, request: Request) -> ImagesResponse:
        """Repaint the white region of the mask from the prompt; the rest of the image is kept."""
        images = dict(image=decode_image(body.image, "image", limits.max_image_size),
                      mask=decode_image(body.mask, "mask", limits.max_image_size))
        return await _sample(worker, request, *prepare_job(registry, limits, "inpaint", body, images))

    @app.post("/v1/edit", response_model=ImagesResponse, **v1)
    async def edit(body: EditRequest, request: Request) -> ImagesResponse:
        """Redraw an image towards the prompt; ``strength`` says how much."""
        images = dict(image=decode_image(body.image, "image", limits.max_image_size))
        job = prepare_job(registry, limits, "edit", body, images, strength=body.strength)
        return await _sample(worker, request, *job)

    @app.get("/v1/models", response_model=ModelsResponse, **v1)
    async def models() -> ModelsResponse:
        """The models this server offers (``model`` of a request), their endpoints and default sampling
        (the model's recommendation within this server's --max-steps)."""
        infos = []
        for m in registry.models.values():
            default = m.settings("generate", sampler=None, steps=None, guidance_scale=None, upsample=True,
                                 upsample_steps=None, max_steps=limits.max_steps).base
            infos.append(ModelInfo(name=m.name, spec=m.spec, image_size=m.image_size(), endpoints=m.endpoints,
                                   sampler=default.sampler, steps=default.timesteps,
                                   guidance_scale=default.guidance_scale))
        return ModelsResponse(models=infos, limits=dict(max_images=limits.max_images, max_steps=limits.max_steps,
                                                        max_image_size=limits.max_image_size))

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        """Liveness, the queue's length and the worker's counters."""
        alive = worker.thread.is_alive()
        return Health(status="ok" if alive else "sampler stopped", queued=worker.queued, **worker.stats)

    return app


def _with_limits(openapi, limits: Limits):
    """``app.openapi`` whose request schemas carry this server's limits instead of the hard ceilings."""
    maxima = dict(num_images=limits.max_images, steps=limits.max_steps, upsample_steps=limits.max_steps)

    def schema() -> dict:
        document = openapi()  # FastAPI builds it once and caches it
        for model in ("GenerateRequest", "InpaintRequest", "EditRequest"):
            fields = document["components"]["schemas"][model]["properties"]
            for name, maximum in maxima.items():
                for variant in fields[name].get("anyOf", [fields[name]]):
                    if "maximum" in variant:
                        variant["maximum"] = maximum
        return document

    return schema


def _sample_with(registry: ModelRegistry):
    def sample(settings: Settings, prompts, generators, inputs, callback):
        return registry.models[settings.model].sample(settings, prompts, generators, inputs, callback)

    return sample


def _readable_validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """422 with one readable line per bad field ("num_images: Input should be ...") and the details."""
    lines = []
    for error in e.errors():
        where = ".".join(str(part) for part in error["loc"] if part != "body") or "body"
        lines.append(f"{where}: {error['msg']}")
    errors = [{k: error[k] for k in ("loc", "msg", "type") if k in error} for error in e.errors()]
    return JSONResponse({"detail": "; ".join(lines), "errors": errors}, 422)


async def _sample(worker: SamplingWorker, request: Request, model: ServedModel, job: Job) -> ImagesResponse | Response:
    """Queue the job and wait for it, cancelling it if the client disconnects first."""
    try:
        done = asyncio.wrap_future(worker.submit(job))
    except QueueFull as e:
        raise HTTPException(503, str(e), headers={"Retry-After": str(e.retry_after)}) from None
    while not done.done():
        await asyncio.wait({done}, timeout=DISCONNECT_POLL_S)
        if not done.done() and await request.is_disconnected():
            job.cancel()
            done.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody else will read it
            return Response(status_code=499)  # nobody reads it: the client has gone
    try:
        images = done.result()
    except Cancelled:
        raise HTTPException(503, "the server is shutting down", headers={"Retry-After": "5"}) from None
    except (ValueError, GlideError) as e:
        raise RequestRefused(422, str(e)) from None
    except Exception:
        raise HTTPException(500, "sampling failed on the server (see its log)") from None
    return ImagesResponse(images=[_png_base64(im) for im in images], seed=job.seed, model=model.name,
                          width=images[0].width, height=images[0].height)


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
