"""Fixtures shared by every test package: a real Redis and a real API server.

Fixtures (import nothing, just name them as test arguments):

- ``redis_url -> str`` (session): the Redis of the tests, ``SVG2_TEST_REDIS_URL`` or
  ``redis://127.0.0.1:6379/15`` (a dedicated DB number). Fails with a clear message if Redis is down.
- ``redis_client -> redis.Redis`` (function): a bytes client (``decode_responses=False``, as rq needs)
  on that DB, flushed before and after the test.
- ``output_dir -> Path`` (function): an empty directory for MP4s.
- ``store -> JobStore`` on ``redis_client`` + ``output_dir``; ``registry -> Registry`` (bundled).
- ``api_server -> ApiServer`` (function; the uvicorn process is started once per session and shared):
  ``ApiServer(base_url: str, port: int, env: dict[str, str], output_dir: Path, redis_url: str,
  process: subprocess.Popen, log_path: Path)``. Redis is flushed and ``output_dir`` emptied before
  each test. Its maintenance pass (failing jobs of dead workers, purging expired MP4s) is off, and
  so is auth (``SVG2_AUTH_DISABLED=1``; the auth tests start servers of their own).
- ``start_api_server(redis_url, output_dir, log_path, **settings) -> ApiServer``: a plain function
  that starts another server with extra ``SVG2_*`` settings (stop it with ``stop_process``). ``env`` is the full environment the server runs with (``SVG2_REDIS_URL``,
  ``SVG2_OUTPUT_DIR``, ...): start a worker with ``subprocess.Popen([...], env=api_server.env)`` so
  it shares Redis and the output directory.
- ``api_settings -> Settings`` and ``client -> fastapi.testclient.TestClient``: the app in-process,
  same Redis, for fast API tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from bench.stack import free_port, stop_process, wait_http_ok  # noqa: F401 (re-exported to tests)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("SVG2_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"tests need a Redis at {url} ({exc}); start one with `redis-server --daemonize yes` "
                    "or run scripts/test.sh, which does", pytrace=False)
    finally:
        client.close()
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    path = tmp_path / "outputs"
    path.mkdir()
    return path


@pytest.fixture
def registry():
    from worker.registry import load_registry

    return load_registry()


@pytest.fixture
def store(redis_client: redis.Redis, output_dir: Path):
    from worker.store import JobStore

    return JobStore(redis_client, output_dir, retention_s=3600)


@pytest.fixture
def api_settings(redis_client: redis.Redis, redis_url: str, output_dir: Path):
    from service.config import Settings

    # Auth off here: these fixtures test the job API; tests/service/test_auth.py tests keys and tenants.
    return Settings(redis_url=redis_url, output_dir=output_dir, maintenance_interval_s=0, max_body_bytes=64 * 1024,
                    auth_disabled=True)


@pytest.fixture
def client(api_settings):
    from fastapi.testclient import TestClient

    from service.main import create_app

    with TestClient(create_app(api_settings)) as c:
        yield c


@dataclass
class ApiServer:
    base_url: str
    port: int
    env: dict[str, str]
    output_dir: Path
    redis_url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_api_server(redis_url: str, output_dir: Path, log_path: Path, **settings: str) -> ApiServer:
    """Start ``python -m service`` on a free port and wait until it answers /healthz.

    ``settings`` are extra ``SVG2_*`` variables, e.g. ``SVG2_MAINTENANCE_INTERVAL_S="0.5"``.
    """
    port = free_port()
    env = {
        **os.environ,
        "SVG2_REDIS_URL": redis_url,
        "SVG2_OUTPUT_DIR": str(output_dir),
        "SVG2_HOST": "127.0.0.1",
        "SVG2_PORT": str(port),
        "SVG2_MAX_BODY_BYTES": str(64 * 1024),
        # No background sweep by default: it would fail other tests' hand-started jobs (no
        # heartbeat) while the session's server lives on.
        "SVG2_MAINTENANCE_INTERVAL_S": "0",
        "SVG2_LOG_LEVEL": "warning",
        "PYTHONUNBUFFERED": "1",
        # Auth off unless a test turns it on (SVG2_AUTH_DISABLED="0"): tests/service/test_auth.py covers keys.
        "SVG2_AUTH_DISABLED": "1",
        **settings,
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    server = ApiServer(f"http://127.0.0.1:{port}", port, env, output_dir, redis_url, process, log_path)
    try:
        wait_http_ok(f"{server.base_url}/healthz", 60, process)
    except Exception as exc:
        stop_process(process)
        raise RuntimeError(f"API server did not start: {exc}\n{server.log()}") from exc
    return server


@pytest.fixture(scope="session")
def _api_server_process(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    base = tmp_path_factory.mktemp("api")
    output_dir = base / "outputs"
    output_dir.mkdir()
    try:
        server = start_api_server(redis_url, output_dir, base / "api.log")
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    stop_process(server.process)


@pytest.fixture
def api_server(_api_server_process: ApiServer, redis_client: redis.Redis) -> ApiServer:
    """The shared uvicorn API server, with Redis flushed and the output directory emptied."""
    server = _api_server_process
    if server.process.poll() is not None:
        pytest.fail(f"API server died (exit {server.process.returncode}):\n{server.log()}", pytrace=False)
    for path in server.output_dir.iterdir():
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return server
