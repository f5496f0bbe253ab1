"""Start and watch real ``svg2-worker`` processes in tests (used by tests/worker and tests/e2e).

A worker is ``python -m worker.main`` with ``SVG2_*`` settings in its environment; readiness is its
heartbeat in Redis saying ``idle`` (model loaded, serving its queue).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.stack import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Fast beats so tests see state changes quickly; the TTL still covers a loaded CI machine.
TEST_WORKER_ENV = {
    "SVG2_MODEL": "tiny",
    "SVG2_HEARTBEAT_INTERVAL_S": "0.25",
    "SVG2_HEARTBEAT_TTL_S": "5",
    "SVG2_LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen
    log_path: Path
    redis_url: str
    metrics_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def heartbeat(self) -> dict | None:
        """The worker's current heartbeat from Redis (None when absent or expired)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            raw = client.get(f"svg2:worker:{self.name}")
        finally:
            client.close()
        return json.loads(raw) if raw else None

    def wait_for(self, state: str, timeout_s: float = 90.0) -> dict:
        """Wait until the heartbeat reports ``state``; fail with the worker's log otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            beat = self.heartbeat()
            if beat is not None and beat.get("state") == state:
                return beat
            time.sleep(0.1)
        raise AssertionError(f"worker not {state!r} within {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """Warm shutdown (SIGTERM), SIGKILL if it hangs; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """Crash it (SIGKILL): no cleanup runs."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_worker(env: dict[str, str], log_dir: Path, **settings: str) -> WorkerProcess:
    """Spawn a worker with ``env`` (must hold SVG2_REDIS_URL and SVG2_OUTPUT_DIR) plus ``settings``
    (``SVG2_*`` overrides); returns at once, see :meth:`WorkerProcess.wait_for`."""
    name = settings.pop("SVG2_WORKER_NAME", f"test-worker-{uuid.uuid4().hex[:8]}")
    # A port of its own: workers of several tests (or a dev worker on the default) must not collide.
    settings.setdefault("SVG2_METRICS_PORT", str(free_port()))
    settings.setdefault("SVG2_METRICS_ADDR", "127.0.0.1")
    full_env = {**os.environ, **env, **TEST_WORKER_ENV, **settings, "SVG2_WORKER_NAME": name}
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "worker.main"], cwd=REPO_ROOT, env=full_env,
                                   stdout=log, stderr=subprocess.STDOUT)
    return WorkerProcess(name, process, log_path, full_env["SVG2_REDIS_URL"], int(full_env["SVG2_METRICS_PORT"]))


@contextmanager
def worker_pool(env: dict[str, str], log_dir: Path) -> Iterator:
    """A ``start(**settings)`` function whose workers are all stopped when the block ends."""
    started: list[WorkerProcess] = []

    def start(**settings: str) -> WorkerProcess:
        worker = start_worker(env, log_dir, **settings)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop(timeout_s=10)
