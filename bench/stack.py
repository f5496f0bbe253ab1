"""A live svg2 stack of real processes for fault tests and the fault drill: a Redis of its own
(free port, append-only file in a temp directory), the API (uvicorn) and tiny-model workers.

    with LiveStack(tmp_dir) as stack:
        stack.start_redis(); stack.start_api(); w = stack.start_worker()
        ids = stack.submit(3)
        stack.kill_worker(w)                    # SIGKILL
        stack.wait_final(ids, timeout_s=60)     # {id: record}

Used by tests/faults/ and bench/fault_drill.py; nothing here is mocked. Its process helpers
(``free_port``, ``wait_http_ok``, ``stop_process``) also serve the test fixtures.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

REPO_ROOT = Path(__file__).resolve().parent.parent
TERMINAL = ("completed", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessExited(RuntimeError):
    """The process a wait was watching exited first."""


def wait_http_ok(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; raise :class:`ProcessExited` if ``process`` exits first,
    ``TimeoutError`` when time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ProcessExited(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@dataclass
class Proc:
    name: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class LiveStack:
    """Processes started here are stopped by :meth:`close` (or leaving the ``with`` block).

    ``api_settings`` / ``worker_settings``: extra ``SVG2_*`` variables. The defaults make faults show
    quickly: heartbeats every 0.25 s with a 2 s TTL, an API maintenance pass every 0.5 s."""

    base: Path
    api_settings: dict[str, str] = field(default_factory=dict)
    worker_settings: dict[str, str] = field(default_factory=dict)
    redis_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    redis_proc: Proc | None = None
    api: Proc | None = None
    workers: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base = Path(self.base)
        self.output_dir = self.base / "outputs"
        self.redis_dir = self.base / "redis"
        for d in (self.output_dir, self.redis_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ environment

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SVG2_REDIS_URL": self.redis_url, "SVG2_OUTPUT_DIR": str(self.output_dir),
                "PYTHONUNBUFFERED": "1"}

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_connect_timeout=2)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        log_path = self.base / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        return Proc(name, process, log_path)

    # ------------------------------------------------------------------ redis

    def start_redis(self, appendfsync: str = "always") -> Proc:
        """redis-server with append-only persistence in ``base/redis`` (``appendfsync``: always, so a
        SIGKILL loses nothing; everysec as deploy/compose.yaml for load runs)."""
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                "--dir", str(self.redis_dir), "--appendonly", "yes", "--appendfsync", appendfsync,
                "--save", "", "--protected-mode", "no"]
        self.redis_proc = self._spawn("redis", argv, dict(os.environ))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self.redis_proc
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start:\n{self.redis_proc.log()}")

    def stop_redis(self, kill: bool = False) -> None:
        """Stop Redis (SIGKILL with ``kill``: only what the append-only file holds survives)."""
        proc = self.redis_proc
        if proc is not None and proc.alive():
            proc.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            proc.process.wait(timeout=20)

    # ------------------------------------------------------------------ api

    def start_api(self, **settings: str) -> Proc:
        env = {**self.env(), "SVG2_HOST": "127.0.0.1", "SVG2_PORT": str(self.api_port),
               "SVG2_MAINTENANCE_INTERVAL_S": "0.5", "SVG2_LOG_LEVEL": "warning", "SVG2_AUTH_DISABLED": "1",
               **self.api_settings, **settings}
        self.api = self._spawn("api", [sys.executable, "-m", "service"], env)
        self.wait_http(f"{self.base_url}/healthz", 60, self.api)
        return self.api

    def stop_api(self) -> None:
        if self.api is not None:
            stop_process(self.api.process)

    def wait_http(self, url: str, timeout_s: float, proc: Proc | None = None) -> None:
        try:
            wait_http_ok(url, timeout_s, proc.process if proc is not None else None)
        except ProcessExited:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()}") from None

    # ------------------------------------------------------------------ workers

    def start_worker(self, wait: bool = True, **settings: str) -> Proc:
        name = f"w-{uuid.uuid4().hex[:8]}"
        env = {**self.env(), "SVG2_MODEL": "tiny", "SVG2_WORKER_NAME": name, "SVG2_HEARTBEAT_INTERVAL_S": "0.25",
               "SVG2_HEARTBEAT_TTL_S": "2", "SVG2_METRICS_PORT": str(free_port()), "SVG2_METRICS_ADDR": "127.0.0.1",
               "SVG2_LOG_LEVEL": "INFO", **self.worker_settings, **settings}
        proc = self._spawn(name, [sys.executable, "-m", "worker.main"], env)
        self.workers.append(proc)
        if wait:
            self.wait_worker_state(proc, "idle", 120)
        return proc

    def heartbeat(self, proc: Proc) -> dict | None:
        try:
            raw = self.client().get(f"svg2:worker:{proc.name}")
        except redis.RedisError:
            return None
        return json.loads(raw) if raw else None

    def wait_worker_state(self, proc: Proc, state: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"worker {proc.name} exited:\n{proc.log()}")
            beat = self.heartbeat(proc)
            if beat is not None and beat.get("state") == state:
                return beat
            time.sleep(0.05)
        raise TimeoutError(f"worker {proc.name} not {state} in {timeout_s} s:\n{proc.log()[-3000:]}")

    def kill_worker(self, proc: Proc) -> None:
        """SIGKILL: no cleanup, no last heartbeat."""
        if proc.alive():
            proc.process.kill()
            proc.process.wait()

    def term_worker(self, proc: Proc, timeout_s: float = 60) -> int:
        """SIGTERM (warm shutdown) and wait for the exit code."""
        proc.process.send_signal(signal.SIGTERM)
        return proc.process.wait(timeout=timeout_s)

    # ------------------------------------------------------------------ jobs

    def submit(self, n: int, **fields) -> list[str]:
        body = {"prompt": "a red fox running through snow", "num_frames": 5, "num_inference_steps": 2,
                "size": "64x64", **fields}
        ids = []
        with httpx.Client(base_url=self.base_url, timeout=10) as http:
            for _ in range(n):
                resp = http.post("/v1/videos", json=body)
                resp.raise_for_status()
                ids.append(resp.json()["id"])
        return ids

    def get(self, job_id: str) -> dict:
        return httpx.get(f"{self.base_url}/v1/videos/{job_id}", timeout=10).json()

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = self.get(job_id)
                if last.get("status") in statuses:
                    return last
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{job_id} not in {statuses} after {timeout_s} s: {last}")

    def wait_final(self, ids: list[str], timeout_s: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout_s
        return {i: self.wait_status(i, TERMINAL, max(0.1, deadline - time.monotonic())) for i in ids}

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for proc in self.workers:
            stop_process(proc.process, 15)
        if self.api is not None:
            stop_process(self.api.process)
        self.stop_redis()

    def __enter__(self) -> LiveStack:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stop_process(process: subprocess.Popen, timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
