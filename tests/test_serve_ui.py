"""The web UI in headless Chromium (Playwright): type a prompt, generate, see the image in the
gallery. Skips where gradio, playwright or a chromium binary is missing (fails under CI, whose
.ci/run installs Debian's chromium)."""

from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="gradio is not installed (pip install 'glide[serve]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install 'glide[test]')")
CHROMIUM = os.environ.get("GLIDE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

from glide.serve.api import create_app  # noqa: E402
from glide.serve.limits import Limits  # noqa: E402
from glide.serve.models import ModelRegistry  # noqa: E402
from glide.serve.ui import _brush_mask, mount_ui, spacing_of, steps_value  # noqa: E402

from .serving import running_server  # noqa: E402


@pytest.fixture(scope="module")
def server():
    app = create_app(ModelRegistry.load(["bundled"]), Limits(max_steps=400, max_images=4))
    mount_ui(app)
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def page():
    if CHROMIUM is None:
        message = "no chromium binary (apt-get install chromium, or set GLIDE_CHROMIUM)"
        if os.environ.get("CI"):  # .ci/run installs it: a skip there would hide a broken set-up
            pytest.fail(message)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1200, "height": 1000})
        browser.close()


def test_typing_a_prompt_and_generating_shows_images_in_the_gallery(server, page, tmp_path):
    page.goto(server + "/", wait_until="domcontentloaded")
    page.locator("#generate-prompt textarea").fill("a small red circle above a large blue square")
    set_number(page, "Number of images", 2)
    set_number(page, "Steps", 3)
    page.locator("#generate-button").click()
    images = page.locator("#generate-gallery img")
    images.nth(1).wait_for(timeout=60_000)
    assert images.count() == 2
    size = images.first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size == [64, 64]  # the bundled upsampler's output
    assert page.locator("#generate-seed textarea, #generate-seed input").first.input_value().startswith("seed ")
    page.screenshot(path=str(tmp_path / "serve-ui.png"), full_page=True)
    assert (tmp_path / "serve-ui.png").stat().st_size > 10_000


def test_painting_a_mask_with_the_brush_and_inpainting_keeps_the_unpainted_part(server, page, tmp_path):
    source = Image.new("RGB", (64, 64), "white")
    source.paste((200, 0, 0), (8, 8, 30, 30))
    source.save(tmp_path / "source.png")
    page.goto(server + "/", wait_until="domcontentloaded")
    page.get_by_role("tab", name="Inpainting").click()
    page.locator("#inpaint-prompt textarea").fill("a green star")
    set_number(page, "Steps", 3)
    page.locator("#inpaint-image input[type=file]").set_input_files(str(tmp_path / "source.png"))
    page.wait_for_timeout(1000)
    box = page.locator("#inpaint-image canvas").first.bounding_box()
    centre_x, centre_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2  # the image is centred
    page.mouse.move(centre_x + 20, centre_y + 20)
    page.mouse.down()
    for k in range(8):  # a zig-zag stroke over the image's bottom-right quarter
        page.mouse.move(centre_x + 20 + 10 * k, centre_y + 20 + (30 if k % 2 else 0), steps=4)
    page.mouse.up()
    page.locator("#inpaint-button").click()
    image = page.locator("#inpaint-gallery img").first
    image.wait_for(timeout=60_000)  # a mask with nothing painted would be refused: no image
    with Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body())) as out:
        out = np.asarray(out.convert("RGB")).astype(int)
    assert out.shape == (64, 64, 3)
    assert np.abs(out[12:26, 12:26] - [200, 0, 0]).mean() < 20  # the red square, away from the stroke, is kept


def test_stop_cancels_the_sampling(server, page):
    page.goto(server + "/", wait_until="domcontentloaded")
    page.locator("#generate-prompt textarea").fill("a large green star")
    set_number(page, "Steps", 400)
    before = page.request.get(server + "/healthz").json()
    page.locator("#generate-button").click()
    wait_for(lambda: page.request.get(server + "/healthz").json()["steps"] > before["steps"])  # sampling
    page.locator("#generate-stop").click()
    wait_for(lambda: page.request.get(server + "/healthz").json()["cancelled"] == before["cancelled"] + 1)
    after = page.request.get(server + "/healthz").json()
    assert after["steps"] - before["steps"] < 400
    page.wait_for_timeout(500)
    assert page.request.get(server + "/healthz").json()["steps"] == after["steps"]  # nothing samples any more
    assert page.locator("#generate-gallery img").count() == 0


def test_the_api_is_still_served_beside_the_ui(server, page):
    response = page.request.get(server + "/v1/models")
    assert response.status == 200 and response.json()["models"][0]["name"] == "bundled"


@pytest.mark.parametrize("mode", ["RGBA", "RGB"])
def test_the_brush_layers_become_a_white_repaint_mask_at_the_image_size(mode):
    layer = Image.new(mode, (32, 32), 0)  # transparent (RGBA) or black (RGB): nothing painted
    layer.paste((255,) * len(mode), (0, 0, 16, 16))  # painted top-left quarter, drawn on a 32 px canvas
    mask = np.asarray(_brush_mask({"background": None, "layers": [layer]}, (64, 64)))
    assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
    assert mask[:32, :32].all() and not mask[32:, :].any() and not mask[:, 32:].any()


def set_number(page, label: str, value: int) -> None:
    """Type ``value`` into the visible number box labelled ``label`` (each tab has its own)."""
    box = page.get_by_label(label).filter(visible=True).first
    box.fill(str(value))
    box.press("Enter")


def wait_for(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_spacing_control_round_trips_the_recommended_steps():
    for recommended in ("trailing10", "logsnr8", "karras12", 25):
        count = int(str(recommended).lstrip("abcdefghijklmnopqrstuvwxyz"))
        assert steps_value(spacing_of(recommended), count) == recommended
    assert spacing_of("fast27") == "even" and spacing_of("ddim50") == "even"


def test_with_an_api_key_the_ui_asks_for_it():
    httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install 'glide[test]')")
    key = "ui-key-123"
    app = create_app(ModelRegistry.load(["bundled"]), Limits(), api_key=key)
    mount_ui(app, api_key=key)
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/config").status_code == 401  # the UI's state and its queue API are closed
        assert client.post("/login", data=dict(username="me", password="wrong")).status_code != 200
        assert client.get("/config").status_code == 401
        assert client.post("/login", data=dict(username="me", password=key)).status_code == 200
        assert client.get("/config").status_code == 200  # the login cookie opens the UI
        assert client.get("/v1/models").status_code == 401  # but not the API, which wants the key itself
