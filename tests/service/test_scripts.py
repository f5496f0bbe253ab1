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


def test_the_redis_probe_leaves_the_scripts_stderr_open(redis_url):
    """setup.sh and test.sh log (and fail) on stderr after probing Redis: the probe's quieted connect must not
    silence the rest of the script (a bare ``exec 3<>... 2>/dev/null`` redirects the shell's own stderr)."""
    from urllib.parse import urlparse

    from tests.conftest import free_port

    u = urlparse(redis_url)
    for port in (u.port or 6379, free_port()):  # after a probe that answered, and after one that did not
        done = _lib(f"redis_ping {u.hostname} {port}; log 'after the probe'; echo to-stderr >&2")
        assert "after the probe" in done.stderr and "to-stderr" in done.stderr, done.stderr


def test_redis_url_is_split_into_host_and_port():
    out = _lib('SVG2_REDIS_URL=redis://10.1.2.3:6390/4 redis_host_port').stdout.split()
    assert out == ["10.1.2.3", "6390"]
    assert _lib("unset SVG2_REDIS_URL; redis_host_port").stdout.split() == ["127.0.0.1", "6379"]



def _fake_bin(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = directory / name
        path.write_text(f"#!/bin/sh\necho {name} \"$@\" >> \"{directory}/calls\"\n")
        path.chmod(0o755)


def test_ensure_prometheus_leaves_an_installed_prometheus_alone(tmp_path):
    bin_dir = tmp_path / "bin"
    _fake_bin(bin_dir, "prometheus", "promtool", "apt-get")
    result = _lib("ensure_prometheus", env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert not (bin_dir / "calls").exists()  # neither apt-get nor anything else ran


def test_ensure_prometheus_installs_with_apt_get_when_missing_and_never_fails(tmp_path):
    import os
    import shutil

    bin_dir = tmp_path / "bin"  # the only PATH: no prometheus, a fake apt-get, an `id` answering as root
    _fake_bin(bin_dir, "apt-get", "id")
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")
    for tool in ("bash", "dirname"):  # the shell itself, and lib.sh finds the repo with dirname
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/")}
    result = _lib("ensure_prometheus", env=env)
    assert result.returncode == 0, result.stderr
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls[0] == "apt-get update -qq"
    assert calls[1].startswith("apt-get install -y -qq --no-install-recommends prometheus")

    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # not root: no install, a reason, still rc 0
    (bin_dir / "calls").unlink()
    result = _lib("ensure_prometheus", env=env)
    assert result.returncode == 0 and "skipped" in result.stderr
    assert not (bin_dir / "calls").exists()
