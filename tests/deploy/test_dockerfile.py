"""The Dockerfile: multi-stage, CUDA base matching the torch build, pinned, non-root, health-checked.

Static: CI has no Docker engine, so these read the Dockerfile, the lock file and .dockerignore.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from service.config import Settings
from worker.metrics import WorkerMetricsSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK = ROOT / "deploy" / "requirements.lock"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, flags=re.M)
    assert match, f"ARG {name} has no default"
    return match.group(1)


def test_multi_stage_with_a_small_runtime_stage():
    build, runtime = stages()
    assert "AS build" in build[0][1] and "AS runtime" in runtime[0][1]
    runtime_text = " ".join(args for _, args in runtime)
    assert "--from=build /opt/venv" in runtime_text
    # The final stage installs neither compilers nor pip packages, and apt lists are removed.
    assert not re.search(r"build-essential|gcc|python3-dev|pip install", runtime_text)
    for word, args in runtime:
        if word == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists" in args


def test_cuda_base_matches_the_torch_build():
    base = arg_default("CUDA_IMAGE")
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu\d+\.\d+", base)
    assert match, f"base must be a pinned CUDA *runtime* image, got {base}"
    cuda_tag = f"cu{match.group(1)}{match.group(2)}"
    assert arg_default("TORCH_INDEX_URL").rstrip("/").endswith("/" + cuda_tag)
    assert Version(arg_default("TORCH_VERSION"))  # an exact version, not a range
    assert '"torch==${TORCH_VERSION}"' in DOCKERFILE


def test_runs_as_a_non_root_user_with_a_healthcheck_and_the_service_ports():
    runtime = stages()[-1]
    users = [args for word, args in runtime if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = [args for word, args in runtime if word == "HEALTHCHECK"]
    assert health and "SVG2_HEALTHCHECK_URL" in health[0]
    exposed = {int(p) for word, args in runtime if word == "EXPOSE" for p in args.split()}
    assert exposed == {Settings.model_fields["port"].default, WorkerMetricsSettings.model_fields["metrics_port"].default}
    env_text = " ".join(args for word, args in runtime if word == "ENV")
    assert f"SVG2_PORT={Settings.model_fields['port'].default}" in env_text
    assert "SVG2_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz" in env_text
    assert [args for word, args in runtime if word == "CMD"] == ['["svg2-api"]']


def test_every_dependency_is_pinned_and_fits_pyproject():
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][0-9A-Za-z.+\-]*)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        if name == "torch":
            continue  # from the PyTorch CUDA index, pinned in the Dockerfile
        assert name in pins, f"{name} is a dependency but not pinned in deploy/requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {dep}"
    assert "torch" not in pins and not any(n.startswith("nvidia-") for n in pins)


def test_dockerignore_lets_through_exactly_what_is_copied():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            pat = pat.rstrip("/")
            if fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat + "/*") or pat == "**":
                result = not negate
        return result

    copied = []
    for word, args in instructions():
        if word == "COPY" and not args.startswith("--from"):
            copied += args.split()[:-1]
    assert copied, "nothing copied"
    for source in copied:
        assert (ROOT / source).exists(), f"COPY source {source} missing"
        assert not ignored(source), f".dockerignore drops {source}, which the Dockerfile copies"
    for dropped in (".venv", "tests", ".git", "var"):
        assert ignored(dropped), f"{dropped} would be sent to the build context"
