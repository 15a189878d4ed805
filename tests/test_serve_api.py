"""``glide serve``'s HTTP API end to end: a real uvicorn server on a loopback port with the bundled
cascade, sampled with a few steps so every request takes well under a second."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'glide[serve]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install 'glide[test]')")

from glide.sampling import SAMPLERS  # noqa: E402
from glide.serve.api import create_app  # noqa: E402
from glide.serve.limits import Limits  # noqa: E402
from glide.serve.models import ModelRegistry  # noqa: E402
from glide.serve.schemas import Sampler  # noqa: E402

from .helpers import assert_clean_error, run_cli  # noqa: E402
from .serving import pixels, png_b64, running_server  # noqa: E402

FAST = dict(steps=3, upsample_steps=5)  # the upsampler samples its last 30%: 2 steps
LIMITS = Limits(max_images=4, max_steps=400, max_image_size=256, queue_size=4, max_batch=8)
KEY = "test-key-0123456789"


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry.load(["bundled"])


@pytest.fixture(scope="module")
def server(registry) -> str:
    with running_server(create_app(registry, LIMITS)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


def shapes_image(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), (20, 20, 20))
    image.paste((220, 30, 30), (size // 4, size // 4, size // 2, size // 2))
    return image


def square_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 2, size // 2, size, size))  # repaint the bottom-right quarter
    return mask


def health(client) -> dict:
    response = client.get("/healthz")
    assert response.status_code == 200
    return response.json()


# ----------------------------------------------------------------------------------- endpoints
def test_generate_returns_pngs_at_the_upsampler_size_and_the_seed(client):
    response = client.post("/v1/generate", json=dict(prompt="a small red circle", num_images=2, seed=5, **FAST))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == 5 and body["model"] == "bundled" and (body["width"], body["height"]) == (64, 64)
    images = [pixels(b) for b in body["images"]]
    assert len(images) == 2 and images[0].shape == (64, 64, 3)
    assert not np.array_equal(images[0], images[1])  # each image its own noise


def test_an_image_does_not_depend_on_its_batch(client):
    request = dict(prompt="a large blue square", seed=11, **FAST)
    pair = client.post("/v1/generate", json=dict(request, num_images=2)).json()["images"]
    alone = client.post("/v1/generate", json=dict(request, num_images=1)).json()["images"]
    # the same noise: equal up to the float rounding of batched convolutions
    diff = np.abs(pixels(alone[0]).astype(int) - pixels(pair[0]).astype(int))
    assert diff.max() <= 2, diff.max()


def test_steps_take_a_respacing_and_unset_steps_follow_the_recommendation(client):
    recommended = client.get("/v1/models").json()["models"][0]
    assert isinstance(recommended["steps"], str) and recommended["steps"].startswith("trailing"), recommended
    request = dict(prompt="a small red circle", upsample=False, seed=5)
    before = health(client)["steps"]
    unset = client.post("/v1/generate", json=request).json()["images"]
    spelled = client.post("/v1/generate", json=dict(request, steps=recommended["steps"])).json()["images"]
    assert unset == spelled  # the default is the model's recommended spacing, not an even one
    count = int(recommended["steps"].removeprefix("trailing"))
    assert health(client)["steps"] - before == 2 * count
    even = client.post("/v1/generate", json=dict(request, steps=count)).json()["images"]
    assert even != spelled  # same count, other timesteps


def test_without_upsampling_images_have_the_base_size(client):
    body = client.post("/v1/generate", json=dict(prompt="a green star", upsample=False, steps=2, seed=0)).json()
    assert pixels(body["images"][0]).shape == (32, 32, 3)


def test_inpaint_keeps_the_unmasked_region(client):
    source = shapes_image()
    request = dict(prompt="a yellow triangle", image=png_b64(source), mask=png_b64(square_mask()), seed=1, **FAST)
    response = client.post("/v1/inpaint", json=request)
    assert response.status_code == 200, response.text
    out = pixels(response.json()["images"][0]).astype(int)
    keep = np.asarray(square_mask()) < 128
    kept_error = np.abs(out - np.asarray(source).astype(int))[keep].mean()
    assert kept_error < 12, kept_error  # pasted back at every step (up to the upsampler's resampling)


def test_edit_returns_an_image_that_follows_the_source_at_low_strength(client):
    source = shapes_image()
    low = client.post("/v1/edit", json=dict(prompt="a red square", image=png_b64(source), strength=0.2, seed=2,
                                            **FAST))
    assert low.status_code == 200, low.text
    high = client.post("/v1/edit", json=dict(prompt="a red square", image=png_b64(source), strength=1.0, seed=2,
                                             **FAST))
    target = np.asarray(source).astype(int)
    distance = [np.abs(pixels(r.json()["images"][0]).astype(int) - target).mean() for r in (low, high)]
    assert distance[0] < distance[1], distance


def test_models_lists_the_loaded_models_and_limits(client):
    body = client.get("/v1/models").json()
    assert [m["name"] for m in body["models"]] == ["bundled"]
    assert body["models"][0]["endpoints"] == ["generate", "inpaint", "edit"]
    assert body["limits"]["max_images"] == LIMITS.max_images


def test_openapi_schema_describes_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/generate", "/v1/inpaint", "/v1/edit", "/v1/models", "/healthz"} <= set(schema["paths"])
    fields = schema["components"]["schemas"]["InpaintRequest"]["properties"]
    assert fields["num_images"]["maximum"] == LIMITS.max_images  # this server's limits, not the hard ceilings
    assert [v["maximum"] for v in fields["steps"]["anyOf"] if "maximum" in v] == [LIMITS.max_steps]
    assert {"prompt", "image", "mask", "seed", "sampler"} <= set(fields)


def test_sampler_names_match_the_library():
    assert set(Sampler.__args__) == set(SAMPLERS)


# ---------------------------------------------------------------------------------- bad input
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


BAD_GENERATE = [
    (dict(prompt=3), "prompt"),
    (dict(prompt="   "), "blank"),
    (dict(prompt="x", num_images="2"), "num_images"),
    (dict(prompt="x", num_images=0), "num_images"),
    (dict(prompt="x", num_images=5), "limit of 4"),
    (dict(prompt="x", steps=401), "limit of 400"),
    (dict(prompt="x", steps=10**9), "steps"),
    (dict(prompt="x", steps="trailing401"), "limit of 400"),
    (dict(prompt="x", steps="sideways10"), "steps"),
    (dict(prompt="x", upsample_steps="trailing0"), "cannot take 0 steps"),
    (dict(prompt="x", guidance_scale=-1), "guidance_scale"),
    (dict(prompt="x", sampler="euler"), "sampler"),
    (dict(prompt="x", seed=-1), "seed"),
    (dict(prompt="x", model="/etc/passwd"), "not served here"),
    (dict(prompt="x", colour="red"), "colour"),
    ({}, "prompt"),
]


@pytest.mark.parametrize(("body", "message"), BAD_GENERATE, ids=[m for _, m in BAD_GENERATE])
def test_bad_generate_requests_are_422_naming_the_field(client, body, message):
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_a_body_that_is_not_json_is_422(client):
    response = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


def _inpaint(**overrides) -> dict:
    return dict(dict(prompt="a circle", image=png_b64(shapes_image()), mask=png_b64(square_mask()), **FAST),
                **overrides)


BAD_IMAGES = [
    (_inpaint(image="not base64!!"), 422, "image is not valid base64"),
    (_inpaint(image=_b64(b"hello, not an image")), 422, "image is not an image"),
    (_inpaint(mask=_b64(_png_bytes(shapes_image())[:60])), 422, "mask"),
    (_inpaint(image=_b64(_png_bytes(Image.new("L", (5000, 5000))))), 413, "image is 5000x5000 px"),
    (_inpaint(image=_b64(_png_bytes(Image.new("RGB", (300, 200))))), 413, "at most 256x256"),
    (_inpaint(mask=png_b64(square_mask(32))), 422, "mask is 32x32 px but image is 64x64"),
    (_inpaint(mask=png_b64(Image.new("L", (64, 64), 0))), 422, "nothing to repaint"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_IMAGES, ids=[m for *_, m in BAD_IMAGES])
def test_bad_images_are_refused_before_sampling(client, body, status, message):
    before = health(client)["steps"]
    response = client.post("/v1/inpaint", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert health(client)["steps"] == before


def test_edit_refuses_a_gif_and_a_strength_of_zero(client):
    gif = io.BytesIO()
    shapes_image().save(gif, "GIF")
    response = client.post("/v1/edit", json=dict(prompt="x", image=_b64(gif.getvalue())))
    assert response.status_code == 422 and "GIF" in response.json()["detail"]
    response = client.post("/v1/edit", json=dict(prompt="x", image=png_b64(shapes_image()), strength=0))
    assert response.status_code == 422 and "strength" in response.json()["detail"]


def test_an_oversized_body_is_413_before_parsing(client):
    response = client.post("/v1/generate", content=b"x" * (LIMITS.max_body_bytes + 1),
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "limit" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(LIMITS.max_body_bytes // 65536 + 2):
            yield b" " * 65536

    response = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


# ------------------------------------------------------------------------------ under load
def test_a_burst_of_50_requests_is_answered_200_or_503_and_the_server_survives(server, client):
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server, timeout=120) as c:
            return await asyncio.gather(*[
                c.post("/v1/generate", json=dict(prompt=f"a red circle {i % 3}", upsample=False, steps=2, seed=i))
                for i in range(50)])

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert len(codes) == 50 and set(codes) <= {200, 503}, codes
    assert 200 in codes and 503 in codes  # the queue holds 4: most of a burst of 50 is turned away
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
        else:
            assert len(r.json()["images"]) == 1
    assert health(client)["status"] == "ok"
    assert client.post("/v1/generate", json=dict(prompt="a red circle", upsample=False, steps=2)).status_code == 200


def test_a_client_that_disconnects_stops_its_sampling(server, client):
    before = health(client)
    long_request = dict(prompt="a blue circle", upsample=False, steps=400, seed=0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/v1/generate", json=long_request, timeout=1.5)  # gives up and closes the connection
    deadline = time.monotonic() + 20
    while health(client)["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = health(client)
    assert after["cancelled"] == before["cancelled"] + 1
    steps_run = after["steps"] - before["steps"]
    assert 0 < steps_run < 400, steps_run
    time.sleep(0.5)
    assert health(client)["steps"] == after["steps"]  # nothing samples any more


# ---------------------------------------------------------------------------------- security
def test_an_api_key_is_required_when_set(registry):
    with running_server(create_app(registry, LIMITS, api_key=KEY)) as url, httpx.Client(base_url=url) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        response = c.post("/v1/generate", json=dict(prompt="x", steps=2, upsample=False))
        assert response.status_code == 401 and "API key" in response.json()["detail"]
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        response = c.post("/v1/generate", json=dict(prompt="a red circle", steps=2, upsample=False),
                          headers={"X-API-Key": KEY})
        assert response.status_code == 200
        assert c.get("/healthz").status_code == 200  # liveness stays open for load balancers


def test_cors_is_closed_unless_an_origin_is_given(registry, client):
    preflight = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in client.options("/v1/generate", headers=preflight).headers
    app = create_app(registry, LIMITS, cors_origins=["http://ui.example"])
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        allowed = c.options("/v1/generate", headers=dict(preflight, Origin="http://ui.example"))
        assert allowed.headers["access-control-allow-origin"] == "http://ui.example"
        refused = c.options("/v1/generate", headers=preflight)
        assert "access-control-allow-origin" not in refused.headers


def test_serve_refuses_a_public_host_without_a_key(monkeypatch):
    monkeypatch.delenv("GLIDE_API_KEY", raising=False)
    result = run_cli("serve", "--host", "0.0.0.0")
    assert_clean_error(result)
    assert "--api-key" in result.output and "--insecure-no-auth" in result.output


def test_serve_without_the_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now raises ImportError
    result = run_cli("serve", "--port", "0")
    assert_clean_error(result)
    assert "pip install 'glide[serve]'" in result.output


def test_glide_help_lists_serve_without_importing_fastapi():
    code = ("import sys; from glide.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "print('fastapi' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "serve" in out and out.strip().endswith("False False")


def test_a_failing_sampling_run_is_a_500_and_the_server_goes_on(registry, client, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated fault")

    monkeypatch.setattr(registry.models["bundled"], "sample", broken)
    response = client.post("/v1/generate", json=dict(prompt="a red circle", steps=2, upsample=False))
    assert response.status_code == 500 and "sampling failed" in response.json()["detail"]
    assert "simulated fault" not in response.text  # internals stay in the server's log
    monkeypatch.undo()
    assert client.post("/v1/generate", json=dict(prompt="a red circle", steps=2, upsample=False)).status_code == 200


@pytest.mark.parametrize("side", [40, 50])  # over Pillow's warning limit (1000 px), over its error limit (2000)
def test_pillows_decompression_bomb_guard_is_a_413(monkeypatch, side):
    from glide.serve.security import RequestRefused, decode_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(RequestRefused, match="too large to decode") as refused:
        decode_image(png_b64(Image.new("RGB", (side, side))), "image", max_size=4096)
    assert refused.value.status == 413


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "no-such-model"], "no checkpoint 'no-such-model'"),
    (["--max-images", "0"], "--max-images"),
    (["--port", "70000"], "--port"),
])
def test_serve_refuses_bad_options_before_listening(args, message):
    result = run_cli("serve", "--no-ui", *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert message in result.output, result.output
