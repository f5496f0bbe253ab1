"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis + hypothesis):
every generated request (valid and invalid, with auth on and an admin key) must get a non-5xx
answer whose status code, content type, headers and body match the schema.

The app runs in-process on the tests' real Redis. Bounded (``SVG2_FUZZ_EXAMPLES`` per operation,
default 60) to keep CI short; bench/fuzz_api.py runs thousands against a uvicorn server.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.auth import KeyStore
from service.config import Settings
from service.main import create_app
from worker.store import JobStore

REDIS_URL = os.environ.get("SVG2_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
EXAMPLES = int(os.environ.get("SVG2_FUZZ_EXAMPLES", "60"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]

app = create_app(Settings(redis_url=REDIS_URL, output_dir=tempfile.mkdtemp(prefix="svg2-fuzz-"),
                          maintenance_interval_s=0, rate_limit_rps=0, max_queued_per_key=10**6,
                          max_queued_total=10**6, max_body_bytes=64 * 1024))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def admin_headers(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    token, _ = KeyStore(client).create("fuzz", admin=True)
    # a live worker, so /readyz answers 200 (its 503 without workers is the documented, correct answer)
    JobStore(client, tempfile.mkdtemp()).heartbeat("fuzz-worker", {"model": "tiny", "queues": ["tiny"]}, ttl_s=3600)
    yield {"Authorization": f"Bearer {token}"}
    client.flushdb()
    client.close()


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_answers_every_generated_request_within_its_schema(case, admin_headers):
    # metrics is Prometheus text; everything else is JSON or MP4 as documented
    case.call_and_validate(headers=admin_headers, checks=CHECKS)
