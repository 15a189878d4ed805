"""A property-based run of ``glide serve``'s OpenAPI schema (schemathesis): requests generated
from the schema, valid and invalid, never get a 5xx. The server allows 3 steps a stage and 2
images, so the requests that do sample finish quickly."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'glide[serve]')")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install 'glide[test]')")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (pip install 'glide[test]')")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from glide.serve.api import create_app  # noqa: E402
from glide.serve.limits import Limits  # noqa: E402
from glide.serve.models import ModelRegistry  # noqa: E402

from .serving import running_server  # noqa: E402

EXAMPLES = 12  # per operation and mode: the run takes seconds


@pytest.fixture(scope="module")
def server():
    limits = Limits(max_images=2, max_steps=3, max_image_size=64, queue_size=4)
    with running_server(create_app(ModelRegistry.load(["bundled"]), limits)) as url:
        yield url


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_request_the_schema_allows_or_forbids_gets_a_server_error(server, mode):
    schema = schemathesis.openapi.from_dict(httpx.get(f"{server}/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 5
    if mode == "negative":  # only the POSTs take input that can be wrong
        operations = [op for op in operations if op.method.upper() == "POST"]
    seen: dict[int, int] = {}
    for operation in operations:
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        def check(case):
            response = case.call(base_url=server, timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.method, case.path, case.body, response.text[:300])

        check()
    assert sum(seen.values()) >= len(operations)
    assert (200 in seen) if mode == "positive" else (422 in seen), seen
