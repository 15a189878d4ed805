"""``glide serve``: the HTTP API (and web UI) on the bundled cascade or any model spec.

FastAPI, uvicorn and torch are imported inside the command only, so ``glide --help`` stays quick
and a missing ``serve`` extra is reported as the command to install it.
"""

from __future__ import annotations

import click

from .common import CONTEXT_SETTINGS, Number, Threads, command_body, log

INSTALL_HINT = "pip install 'glide[serve]'"


def _limit(name: str, default: int, text: str, high: int):
    return click.option(name, type=Number(integer=True, low=1, high=high), default=default, show_default=True,
                        help=text)


@click.command(context_settings=CONTEXT_SETTINGS)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs --api-key (or --insecure-no-auth).")
@click.option("--port", type=Number(integer=True, low=0, high=65535), default=8000, show_default=True)
@click.option("--model", "models", multiple=True, metavar="[NAME=]SPEC",
              help="A model to serve (repeatable; the first is the default): bundled, openai, a checkpoint "
                   "path or random:PRESET, optionally named (e.g. shapes=bundled). Default: bundled.")
@click.option("--api-key", envvar="GLIDE_API_KEY", metavar="KEY",
              help="Require this key on /v1 (Authorization: Bearer KEY or X-API-Key). Env: GLIDE_API_KEY.")
@click.option("--insecure-no-auth", is_flag=True, help="Allow a non-loopback --host without an API key.")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow browsers on ORIGIN (e.g. http://localhost:3000) to call the API (repeatable). "
                   "Default: none.")
@_limit("--max-images", 8, "Images per request.", 64)
@_limit("--max-steps", 250, "Sampling steps per stage a request may ask for.", 1000)
@_limit("--max-image-size", 1024, "Width and height of an uploaded image, px.", 4096)
@_limit("--queue-size", 16, "Requests that may wait for the sampler; more get 503 with Retry-After.", 10_000)
@_limit("--max-batch", 16, "Images of equal settings sampled together in one run.", 1024)
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="Sample queued requests with equal settings together.")
@click.option("--ui/--no-ui", default=True, show_default=True,
              help="Mount the Gradio web UI at / (when gradio is installed; with --api-key it asks for the key).")
@click.option("--device", default="auto", show_default=True, help="auto (cuda if available, else cpu), cpu, cuda:N.")
@click.option("--threads", type=Threads(), default="auto", show_default=True, metavar="N|auto",
              help="CPU threads for torch (auto: 1 for small models on the CPU).")
@command_body
def serve(host: str, port: int, models: tuple[str, ...], api_key: str | None, insecure_no_auth: bool,
          cors_origins: tuple[str, ...], batching: bool, ui: bool, device: str, threads, **limits) -> None:
    """Serve a JSON HTTP API (and a web UI) for generating, inpainting and editing images.

    \b
    Endpoints: POST /v1/generate, /v1/inpaint, /v1/edit; GET /v1/models, /healthz;
    the OpenAPI schema at /openapi.json and its docs at /docs. Images are base64 PNGs.
    \b
    Examples:
      glide serve                                  # the bundled cascade on http://127.0.0.1:8000
      curl -s localhost:8000/v1/generate -H 'Content-Type: application/json' \\
           -d '{"prompt": "a small red circle", "seed": 0}'
      GLIDE_API_KEY=secret glide serve --host 0.0.0.0 --model bundled --model tiny=random:tiny-base
    """
    from ..serve.limits import Limits, check_bind

    limits = Limits(**limits)
    api_key = api_key or None
    check_bind(host, api_key, insecure_no_auth)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise click.ClickException(f"glide serve needs {e.name}, which is not installed: {INSTALL_HINT}") from None

    from PIL import Image

    from ..devices import resolve_device
    from ..serve.api import create_app
    from ..serve.models import ModelRegistry
    from .prepare import set_threads

    # Pillow's own decompression-bomb guard, process-wide (decode_image checks the size first anyway).
    Image.MAX_IMAGE_PIXELS = limits.max_image_size**2
    torch_device = resolve_device(device)
    registry = ModelRegistry.load(models or ("bundled",), device=str(torch_device))
    set_threads(threads, [p for m in registry.models.values() for p in _modules(m)], torch_device)
    app = create_app(registry, limits, api_key=api_key, cors_origins=cors_origins, batching=batching)
    if ui:
        _mount_ui(app, api_key)
    log(f"serving {', '.join(registry.models)} on http://{host}:{port} (API docs at /docs)", fg="green")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _modules(model) -> list:
    return [p.base for p in (model.text2im, model.inpaint) if p is not None] + \
        [p.upsampler for p in (model.text2im, model.inpaint) if p is not None and p.upsampler is not None]


def _mount_ui(app, api_key: str | None) -> None:
    try:
        from ..serve.ui import mount_ui
    except ImportError as e:
        log(f"no web UI: {e.name} is not installed ({INSTALL_HINT}); the API is on /v1")
        return
    mount_ui(app, api_key=api_key)
