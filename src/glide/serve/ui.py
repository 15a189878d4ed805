"""The web UI (Gradio), mounted on the API's FastAPI app: text to image, inpainting (paint the
mask with a brush) and image-to-image tabs. Its jobs go through the same queue and sampling
worker as the API's, so UI users and API clients share batches and limits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local server phones nobody

import gradio as gr  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from PIL import Image  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from ..diffusion import step_count  # noqa: E402
from ..diffusion.schedule import NOISE_SPACINGS  # noqa: E402
from ..sampling import SAMPLERS  # noqa: E402
from .schemas import SamplingRequest  # noqa: E402
from .security import RequestRefused, key_matches  # noqa: E402
from .service import prepare_job  # noqa: E402
from .worker import Cancelled, QueueFull, SamplingWorker  # noqa: E402

PROGRESS_POLL_S = 0.2
GALLERY = dict(columns=4, format="png", height=280, object_fit="contain", preview=False)
# System fonts: the default theme would have every browser fetch fonts from Google.
# "even": a plain count (evenly spaced, the noisiest step included); the others prefix the count.
SPACINGS = ("even", *NOISE_SPACINGS)
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def mount_ui(app: FastAPI, path: str = "/", api_key: str | None = None) -> FastAPI:
    """Mount the UI at ``path`` of an app made by ``glide.serve.api.create_app`` (its routes keep
    priority). With ``api_key`` the UI asks for it on a login page (any user name)."""
    blocks = build_ui(app.state.worker, app.state.registry, app.state.limits)
    auth = None if api_key is None else (lambda _user, password: key_matches(password, api_key))
    return gr.mount_gradio_app(app, blocks, path=path, ssr_mode=False, theme=THEME, footer_links=[],
                               max_file_size=app.state.limits.max_body_bytes, auth=auth,
                               auth_message="Log in with this server's API key as the password (any user name).")


def spacing_of(timesteps: int | str) -> str:
    """The spacing dropdown's value for a recommended ``timesteps`` (``trailing10`` -> ``trailing``)."""
    prefix = str(timesteps).rstrip("0123456789")
    return prefix if prefix in NOISE_SPACINGS else "even"


def steps_value(spacing: str, count: int) -> int | str:
    """What the UI's spacing and steps controls ask for: ``10`` or ``trailing10``."""
    return int(count) if spacing == "even" else f"{spacing}{int(count)}"


def build_ui(worker: SamplingWorker, registry, limits) -> gr.Blocks:
    default = registry.models[registry.default]
    recommended = default.settings("generate", sampler=None, steps=None, guidance_scale=None, upsample=True,
                                   upsample_steps=None, max_steps=limits.max_steps).base

    def sampling_controls() -> list:
        """Number of images, guidance, sampler, step spacing and count, seed and model: the same in every tab."""
        with gr.Accordion("Settings", open=True):
            with gr.Row():
                count = gr.Slider(1, limits.max_images, value=1, step=1, label="Number of images")
                guidance = gr.Slider(0, 10, value=recommended.guidance_scale, step=0.5, label="Guidance scale")
                steps = gr.Slider(1, limits.max_steps, value=step_count(recommended.timesteps), step=1,
                                  label="Steps")
            with gr.Row():
                sampler = gr.Dropdown(list(SAMPLERS), value=recommended.sampler, label="Sampler")
                spacing = gr.Dropdown(list(SPACINGS), value=spacing_of(recommended.timesteps), label="Step spacing")
                seed = gr.Number(value=-1, precision=0, label="Seed (-1: random)")
                model = gr.Dropdown(list(registry.models), value=registry.default, label="Model")
        return [count, guidance, sampler, spacing, steps, seed, model]

    running: dict[str, set] = {}  # browser session -> its jobs in the worker, for the Stop buttons

    def stop(request: gr.Request) -> None:
        for job in list(running.get(request.session_hash, ())):
            job.cancel()

    def run(kind: str, browser: gr.Request, prompt: str, count, guidance, sampler, spacing, steps, seed, model,
            images: dict | None = None, strength: float | None = None, progress=None) -> Iterator[tuple]:
        """Queue the job, yield nothing new while it samples, then yield (images, seed text). The
        session's Stop button cancels the job, and so does Gradio closing the handler (closed tab)."""
        try:
            sampling = SamplingRequest(prompt=prompt or "", num_images=int(count), guidance_scale=float(guidance),
                                       sampler=sampler, steps=steps_value(spacing, steps), model=model,
                                       seed=None if seed is None or seed < 0 else int(seed))
        except ValidationError as e:
            raise gr.Error("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())) \
                from None
        try:
            served, job = prepare_job(registry, limits, kind, sampling, images, strength=strength)
            future = worker.submit(job)
        except (RequestRefused, QueueFull) as e:
            raise gr.Error(str(e)) from None
        total = sum(served.stage_steps(job.settings).values())
        done = {"steps": 0, "stage": "base"}
        job.on_step = lambda info: done.update(steps=done["steps"] + 1, stage=info.get("stage", ""))
        session = running.setdefault(browser.session_hash or "", set())
        session.add(job)
        try:
            while True:
                try:
                    images = future.result(timeout=PROGRESS_POLL_S)
                except FutureTimeout:
                    if progress is not None:
                        progress(min(1.0, done["steps"] / total), desc=f"{done['stage']} stage")
                    yield gr.skip(), gr.skip()
                    continue
                except Cancelled:
                    yield [], "stopped"
                    return
                except ValueError as e:
                    raise gr.Error(str(e)) from None
                yield images, f"seed {job.seed}"
                return
        finally:
            session.discard(job)
            job.cancel()  # a no-op once the job is done

    def generate(request: gr.Request, prompt, *settings, progress=gr.Progress()):
        yield from run("generate", request, prompt, *settings, progress=progress)

    def inpaint(request: gr.Request, prompt, painted, *settings, progress=gr.Progress()):
        if not painted or painted.get("background") is None:
            raise gr.Error("upload an image, then paint the region to repaint")
        image = painted["background"].convert("RGB")
        mask = _brush_mask(painted, image.size)
        yield from run("inpaint", request, prompt, *settings, images=dict(image=image, mask=mask), progress=progress)

    def edit(request: gr.Request, prompt, image, strength, *settings, progress=gr.Progress()):
        if image is None:
            raise gr.Error("upload an image to edit")
        yield from run("edit", request, prompt, *settings, images=dict(image=image.convert("RGB")),
                       strength=float(strength), progress=progress)

    with gr.Blocks(title="glide") as blocks:
        gr.Markdown(f"## glide: text-guided diffusion\nModels: {', '.join(registry.models)}. "
                    f"The same server answers the JSON API at `/v1` (docs at [/docs](/docs)).")
        with gr.Tab("Text to image"):
            prompt = gr.Textbox(label="Prompt", placeholder="a small red circle above a large blue square",
                                elem_id="generate-prompt")
            controls = sampling_controls()
            action("Generate", "generate", generate, stop, [prompt, *controls])
        with gr.Tab("Inpainting"):
            prompt = gr.Textbox(label="Prompt", placeholder="a green star", elem_id="inpaint-prompt")
            brush = gr.Brush(default_size=4, colors=["#ffffff"], color_mode="fixed")  # px of the image
            painted = gr.ImageMask(type="pil", label="Image: paint the region to repaint", image_mode="RGBA",
                                   brush=brush, elem_id="inpaint-image")
            controls = sampling_controls()
            action("Inpaint", "inpaint", inpaint, stop, [prompt, painted, *controls])
        with gr.Tab("Image to image"):
            prompt = gr.Textbox(label="Prompt", placeholder="a large blue square", elem_id="edit-prompt")
            image = gr.Image(type="pil", label="Image")
            strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength (how much is redrawn)")
            controls = sampling_controls()
            action("Edit", "edit", edit, stop, [prompt, image, strength, *controls])
    # Several UI requests may wait in the worker's queue at once, where equal settings share a run.
    return blocks.queue(max_size=limits.queue_size, default_concurrency_limit=limits.max_batch)


def action(label: str, kind: str, handler, stop_handler, inputs: list) -> None:
    """A tab's run and stop buttons and its outputs (gallery, seed used), wired to ``handler``;
    element ids ``KIND-button``, ``KIND-stop``, ``KIND-gallery``, ``KIND-seed``."""
    with gr.Row():
        button = gr.Button(label, variant="primary", elem_id=f"{kind}-button", scale=4)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{kind}-stop", scale=1)
    gallery = gr.Gallery(label="Images", elem_id=f"{kind}-gallery", **GALLERY)
    seed_used = gr.Textbox(label="Seed used", interactive=False, elem_id=f"{kind}-seed")
    event = button.click(handler, inputs, [gallery, seed_used])
    stop.click(stop_handler, None, None, cancels=[event])


def _brush_mask(painted: dict, size: tuple[int, int]) -> Image.Image:
    """White where any brush layer was painted, black elsewhere, at the image's size. A layer's
    paint is its alpha (RGBA layers), or for layers without one, any non-black pixel."""
    mask = Image.new("L", size, 0)
    for layer in painted.get("layers") or []:
        paint = layer.getchannel("A") if "A" in layer.getbands() else layer.convert("L")
        mask.paste(255, mask=paint.resize(size, Image.Resampling.NEAREST).point(lambda a: 255 if a > 0 else 0))
    return mask
