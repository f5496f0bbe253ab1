"""API keys, tenant isolation, rate limits, queue caps and idempotent creates (real Redis; the app
in-process through TestClient, and the svg2-keys CLI and a uvicorn server as real processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from fastapi.testclient import TestClient

from service.auth import KeyStore
from service.config import Settings
from service.main import create_app
from tests.conftest import REPO_ROOT, start_api_server, stop_process

BODY = {"prompt": "a fox", "num_frames": 5, "num_inference_steps": 2, "size": "64x64"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def auth_app(redis_client, redis_url, output_dir):
    """``make(**settings) -> TestClient`` with auth on."""
    clients = []

    def make(**overrides) -> TestClient:
        settings = Settings(redis_url=redis_url, output_dir=output_dir, maintenance_interval_s=0,
                            max_body_bytes=64 * 1024, **overrides)
        c = TestClient(create_app(settings))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def keys(redis_client) -> KeyStore:
    return KeyStore(redis_client)


def test_requests_without_a_valid_key_get_401(auth_app, keys):
    c = auth_app()
    for headers in ({}, {"Authorization": "Basic abc"}, bearer("svg2_nope")):
        resp = c.get("/v1/videos", headers=headers)
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert resp.json()["error"]["type"] == "authentication_error"
    assert c.post("/v1/videos", json=BODY).status_code == 401
    assert c.get("/v1/models").status_code == 401
    assert c.get("/healthz").status_code == 200  # probes stay open
    token, _ = keys.create("alice")
    assert c.get("/v1/videos", headers=bearer(token)).status_code == 200


def test_keys_are_stored_hashed(keys, redis_client):
    token, info = keys.create("alice")
    dump = b"".join(redis_client.dump(k) or b"" for k in redis_client.keys("svg2:apikey*"))
    assert token.encode() not in dump and token.startswith("svg2_") and len(token) > 40
    assert [k.id for k in keys.list()] == [info.id]


def test_a_key_sees_only_its_own_jobs(auth_app, keys, store):
    c = auth_app()
    alice, _ = keys.create("alice")
    bob, _ = keys.create("bob")
    admin, _ = keys.create("ops", admin=True)
    a = c.post("/v1/videos", json=BODY, headers=bearer(alice)).json()["id"]
    b = c.post("/v1/videos", json=BODY, headers=bearer(bob)).json()["id"]
    # finish alice's job with an MP4, so /content would serve it
    store.mark_started(a, "w")
    store.video_path(a).write_bytes(b"\x00\x00\x00\x18ftypmp42")
    store.mark_completed(a, {})
    assert c.get(f"/v1/videos/{a}/content", headers=bearer(alice)).status_code == 200
    for path in (f"/v1/videos/{a}", f"/v1/videos/{a}/content"):
        resp = c.get(path, headers=bearer(bob))
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "video_not_found"
    assert c.delete(f"/v1/videos/{a}", headers=bearer(bob)).status_code == 404
    assert store.video_path(a).exists()  # bob's delete did nothing
    assert [v["id"] for v in c.get("/v1/videos", headers=bearer(bob)).json()["data"]] == [b]
    assert [v["id"] for v in c.get("/v1/videos", headers=bearer(alice)).json()["data"]] == [a]
    resp = c.get("/v1/videos", params={"after": a}, headers=bearer(bob))
    assert resp.status_code == 400  # another key's id is no cursor either
    assert {v["id"] for v in c.get("/v1/videos", headers=bearer(admin)).json()["data"]} == {a, b}
    assert c.get(f"/v1/videos/{b}", headers=bearer(admin)).status_code == 200
    assert c.delete(f"/v1/videos/{b}", headers=bearer(admin)).json()["status"] == "cancelled"


def test_revoked_key_gets_401_at_once(auth_app, keys):
    c = auth_app()
    token, info = keys.create("alice")
    assert c.get("/v1/videos", headers=bearer(token)).status_code == 200
    assert keys.revoke(info.id) and not keys.revoke(info.id)
    assert c.get("/v1/videos", headers=bearer(token)).status_code == 401


def test_rate_limit_per_key_answers_429_with_retry_after(auth_app, keys):
    c = auth_app(rate_limit_rps=5)
    alice, _ = keys.create("alice")
    bob, _ = keys.create("bob")
    codes = [c.get("/v1/videos", headers=bearer(alice)).status_code for _ in range(12)]
    # 12 requests fit in at most two one-second windows: at least 2 refused, at most 10 served
    assert codes.count(429) >= 2 and set(codes) == {200, 429}
    refused = c.get("/v1/videos", headers=bearer(alice))
    if refused.status_code == 429:
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["type"] == "rate_limit_error"
    assert c.get("/v1/videos", headers=bearer(bob)).status_code == 200  # other keys are not slowed


def test_queued_caps_per_key_and_global(auth_app, keys, store):
    c = auth_app(max_queued_per_key=2, max_queued_total=3)
    alice, _ = keys.create("alice")
    bob, _ = keys.create("bob")
    first = [c.post("/v1/videos", json=BODY, headers=bearer(alice)) for _ in range(3)]
    assert [r.status_code for r in first] == [201, 201, 429]
    assert first[2].json()["error"]["code"] == "too_many_queued_jobs" and int(first[2].headers["retry-after"]) > 0
    assert c.post("/v1/videos", json=BODY, headers=bearer(bob)).status_code == 201
    full = c.post("/v1/videos", json=BODY, headers=bearer(bob))
    assert full.status_code == 429 and full.json()["error"]["code"] == "queue_full"
    store.mark_started(first[0].json()["id"], "w")  # a worker takes one: room again
    assert c.post("/v1/videos", json=BODY, headers=bearer(alice)).status_code == 201


def test_idempotency_key_same_body_same_job_other_body_409(auth_app, keys):
    c = auth_app()
    alice, _ = keys.create("alice")
    bob, _ = keys.create("bob")
    h = {**bearer(alice), "Idempotency-Key": "order-17"}
    first = c.post("/v1/videos", json=BODY, headers=h)
    again = c.post("/v1/videos", json=dict(reversed(BODY.items())), headers=h)  # same fields, other order
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.json()["seed"] == first.json()["seed"]
    other = c.post("/v1/videos", json={**BODY, "prompt": "a cat"}, headers=h)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert first.json()["id"] in other.json()["error"]["message"]
    # keys are per API key: bob's "order-17" is a new job
    bobs = c.post("/v1/videos", json=BODY, headers={**bearer(bob), "Idempotency-Key": "order-17"})
    assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]
    assert len(c.get("/v1/videos", headers=bearer(alice)).json()["data"]) == 1


def test_idempotency_key_expires_and_refused_creates_do_not_bind_it(auth_app, keys, redis_client):
    c = auth_app(idempotency_ttl_s=1, max_queued_per_key=1)
    alice, _ = keys.create("alice")
    h = {**bearer(alice), "Idempotency-Key": "k1"}
    first = c.post("/v1/videos", json=BODY, headers=h).json()["id"]
    ttl = redis_client.ttl(next(iter(redis_client.keys("svg2:idem:*"))))
    assert 0 < ttl <= 1
    # a create refused by the cap leaves no binding behind: its retry is judged afresh
    h2 = {**bearer(alice), "Idempotency-Key": "k2"}
    assert c.post("/v1/videos", json=BODY, headers=h2).status_code == 429
    c.delete(f"/v1/videos/{first}", headers=bearer(alice))
    assert c.post("/v1/videos", json={**BODY, "prompt": "other"}, headers=h2).status_code == 201
    bad = c.post("/v1/videos", json=BODY, headers={**bearer(alice), "Idempotency-Key": "x" * 300})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Idempotency-Key"


def test_svg2_keys_cli_creates_lists_and_revokes(redis_url, redis_client):
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.keys_cli", "--redis-url", redis_url, *args],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)

    out = cli("create", "--name", "ops", "--admin")
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert made["admin"] and made["key"].startswith("svg2_")
    listed = cli("list").stdout
    assert made["id"] in listed and "admin" in listed and made["key"] not in listed
    principal, _ = KeyStore(redis_client).authenticate(made["key"], 0)
    assert principal is not None and principal.admin and principal.key_id == made["id"]
    assert cli("revoke", made["id"]).returncode == 0
    assert cli("revoke", made["id"]).returncode == 1
    assert KeyStore(redis_client).authenticate(made["key"], 0)[0] is None


def test_server_with_auth_disabled_says_so_loudly_and_with_auth_on_needs_a_key(redis_url, redis_client,
                                                                             output_dir, tmp_path):
    open_server = start_api_server(redis_url, output_dir, tmp_path / "open.log")
    try:
        assert "AUTH IS DISABLED" in open_server.log()
        assert httpx.get(f"{open_server.base_url}/v1/videos", timeout=10).status_code == 200
    finally:
        stop_process(open_server.process)
    server = start_api_server(redis_url, output_dir, tmp_path / "auth.log", SVG2_AUTH_DISABLED="0")
    try:
        assert "AUTH IS DISABLED" not in server.log()
        assert httpx.get(f"{server.base_url}/v1/videos", timeout=10).status_code == 401
        token, _ = KeyStore(redis_client).create("alice")
        resp = httpx.post(f"{server.base_url}/v1/videos", json=BODY, headers=bearer(token), timeout=10)
        assert resp.status_code == 201, resp.text
    finally:
        stop_process(server.process)
