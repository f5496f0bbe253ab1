"""The shell scripts behind the README's two commands: they parse, and their Redis probe works."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "scripts").glob("*.sh")) + [REPO / ".ci" / "run"]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_script_parses_and_is_executable(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert script.stat().st_mode & 0o111, f"{script} is not executable"


def _lib(command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f'source "{REPO}/scripts/lib.sh"; {command}'], capture_output=True,
                          text=True, env=env, timeout=30)


def test_redis_probe_tells_a_live_redis_from_a_closed_port(redis_url):
    from urllib.parse import urlparse

    from tests.conftest import free_port

    u = urlparse(redis_url)
    assert _lib(f"redis_ping {u.hostname} {u.port or 6379}").returncode == 0
    assert _lib(f"redis_ping 127.0.0.1 {free_port()}").returncode != 0


def test_redis_url_is_split_into_host_and_port():
    out = _lib('SVG2_REDIS_URL=redis://10.1.2.3:6390/4 redis_host_port').stdout.split()
    assert out == ["10.1.2.3", "6390"]
    assert _lib("unset SVG2_REDIS_URL; redis_host_port").stdout.split() == ["127.0.0.1", "6379"]

