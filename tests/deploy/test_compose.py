"""deploy/compose.yaml agrees with the code: commands, settings, ports, volumes, discovery.

Static (no Docker engine in CI). ``docker compose config -q`` runs too where a compose CLI exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import tomllib
import yaml

from service.config import Settings
from worker.config import WorkerSettings
from worker.metrics import WorkerMetricsSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
SERVICES: dict = COMPOSE["services"]
WORKERS = {name: svc for name, svc in SERVICES.items() if svc.get("command") == ["svg2-worker"]}
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def env_names(settings_cls) -> set[str]:
    prefix = settings_cls.model_config["env_prefix"]
    return {(prefix + name).upper() for name in settings_cls.model_fields}


def env_of(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service.get("environment", {}).items()}


def interpolated_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (the value with an empty .env); plain values unchanged."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def volume_targets(service: dict) -> dict[str, tuple[str, bool]]:
    """container path -> (source, read_only) of the short-syntax volumes."""
    out = {}
    for spec in service.get("volumes", []):
        parts = spec.split(":")
        read_only = parts[-1] == "ro"
        if read_only:
            parts = parts[:-1]
        source, target = ":".join(parts[:-1]), parts[-1]
        out[target] = (source, read_only)
    return out


def published_container_ports(service: dict) -> set[int]:
    return {int(p.rsplit(":", 1)[1]) for p in service.get("ports", [])}


def test_every_service_has_a_healthcheck_and_a_restart_policy():
    for name, svc in SERVICES.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
        assert svc.get("restart") in ("unless-stopped", "always", "on-failure"), f"{name}: no restart policy"


def test_commands_are_the_projects_console_scripts():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert SERVICES["api"]["command"] == ["svg2-api"]
    assert scripts["svg2-api"] == "service.main:run"
    assert WORKERS, "no worker service"
    assert scripts["svg2-worker"] == "worker.main:run"


def test_every_svg2_setting_passed_is_one_the_process_reads():
    api_known = env_names(Settings) | {"SVG2_HEALTHCHECK_URL"}
    worker_known = env_names(WorkerSettings) | env_names(WorkerMetricsSettings) | {"SVG2_HEALTHCHECK_URL"}
    api_env = {k for k in env_of(SERVICES["api"]) if k.startswith("SVG2_")}
    assert api_env - api_known == set(), "API gets settings it does not read"
    for name, svc in WORKERS.items():
        worker_env = {k for k in env_of(svc) if k.startswith("SVG2_")}
        assert worker_env - worker_known == set(), f"{name} gets settings it does not read"


def test_api_and_workers_share_redis_and_the_output_volume():
    api_env = env_of(SERVICES["api"])
    redis_url = urlparse(interpolated_default(api_env["SVG2_REDIS_URL"]))
    assert redis_url.hostname in SERVICES and redis_url.port == 6379
    assert "6379" in " ".join(SERVICES[redis_url.hostname]["ports"])
    out_dir = api_env["SVG2_OUTPUT_DIR"]
    api_source = volume_targets(SERVICES["api"])[out_dir][0]
    assert api_source in COMPOSE["volumes"], "outputs must be a named volume"
    for name, svc in WORKERS.items():
        env = env_of(svc)
        assert env["SVG2_OUTPUT_DIR"] == out_dir
        assert env["SVG2_REDIS_URL"] == api_env["SVG2_REDIS_URL"]
        assert volume_targets(svc)[out_dir] == (api_source, False), f"{name}: output volume differs"


def test_redis_persists_an_append_only_file_on_a_volume():
    redis_svc = SERVICES["redis"]
    command = redis_svc["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    source, read_only = volume_targets(redis_svc)["/data"]
    assert source in COMPOSE["volumes"] and not read_only


def test_ports_and_healthchecks_match_the_settings():
    api_env = env_of(SERVICES["api"])
    api_port = int(api_env["SVG2_PORT"])
    assert api_env["SVG2_HOST"] == "0.0.0.0"
    assert api_port in published_container_ports(SERVICES["api"])
    assert urlparse(api_env["SVG2_HEALTHCHECK_URL"]).port == api_port
    assert urlparse(api_env["SVG2_HEALTHCHECK_URL"]).path == "/healthz"
    for name, svc in WORKERS.items():
        env = env_of(svc)
        metrics_port = int(env["SVG2_METRICS_PORT"])
        assert urlparse(env["SVG2_HEALTHCHECK_URL"]).port == metrics_port, name
        assert published_container_ports(svc) == {metrics_port}, name
    # The probe the services run reads the same variable.
    for name in ("api", *WORKERS):
        assert "SVG2_HEALTHCHECK_URL" in " ".join(SERVICES[name]["healthcheck"]["test"]), name


def test_one_worker_per_gpu_with_read_only_offline_weights():
    gpus = []
    for name, svc in WORKERS.items():
        (device,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert len(device["device_ids"]) == 1, f"{name}: one GPU per worker"
        gpus.append(device["device_ids"][0])
        if name != "worker":
            assert svc["profiles"] == [f"gpu{device['device_ids'][0]}"], name
        env = env_of(svc)
        assert env["HF_HUB_OFFLINE"] == "1"
        source, read_only = volume_targets(svc)[env["HF_HUB_CACHE"]]
        assert read_only and "HOST_WEIGHTS_DIR" in source, f"{name}: weights must be mounted read-only"
    assert len(set(gpus)) == len(gpus), "two workers pinned to one GPU"
    assert "0" in gpus and "profiles" not in SERVICES["worker"]


def test_workers_keep_their_compile_caches_on_a_writable_named_volume():
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name, svc in WORKERS.items():
        env, volumes = env_of(svc), volume_targets(svc)
        for var in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
            path = Path(env[var])
            mounts = [t for t in volumes if path.is_relative_to(t)]
            assert len(mounts) == 1, f"{name}: {var}={path} must lie on one volume"
            source, read_only = volumes[mounts[0]]
            assert source in COMPOSE["volumes"] and not read_only, f"{name}: {var} needs a writable named volume"
            # a new named volume copies the image's directory, owner included: the unprivileged user must own it
            assert re.search(rf"chown svg2:svg2 [^\n]*{re.escape(mounts[0])}\b", dockerfile), mounts[0]
        assert interpolated_default(env["SVG2_WARMUP"]) == WorkerSettings.model_fields["warmup"].default


def test_prometheus_finds_every_worker_and_the_api():
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    (dns,) = jobs["svg2-worker"]["dns_sd_configs"]
    for name, svc in WORKERS.items():
        assert dns["names"] == svc["networks"]["default"]["aliases"], name
        assert dns["port"] == int(env_of(svc)["SVG2_METRICS_PORT"]), name
    assert dns["port"] == WorkerMetricsSettings().metrics_port
    (static,) = jobs["svg2-api"]["static_configs"]
    host, port = static["targets"][0].split(":")
    assert host == "api" and int(port) == int(env_of(SERVICES["api"])["SVG2_PORT"])
    (dcgm,) = jobs["dcgm"]["dns_sd_configs"]
    assert dcgm["names"] == ["dcgm-exporter"] and SERVICES["dcgm-exporter"]["profiles"] == ["dcgm"]


def test_prometheus_and_grafana_mount_what_they_read():
    prom = SERVICES["prometheus"]
    config_flag = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = Path(config_flag.split("=", 1)[1])
    source, read_only = volume_targets(prom)[str(config_path.parent)]
    assert read_only and (DEPLOY / source / config_path.name).is_file()

    graf = SERVICES["grafana"]
    mounts = volume_targets(graf)
    provisioning_source, _ = mounts["/etc/grafana/provisioning"]
    assert (DEPLOY / provisioning_source / "datasources").is_dir()
    providers = yaml.safe_load((DEPLOY / provisioning_source / "dashboards" / "svg2.yaml").read_text())
    dash_dir = providers["providers"][0]["options"]["path"]
    dash_source, read_only = mounts[dash_dir]
    assert read_only and (DEPLOY / dash_source / "svg2.json").is_file()
    home = env_of(graf)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/") and (DEPLOY / dash_source / Path(home).name).is_file()
    datasources = yaml.safe_load((DEPLOY / provisioning_source / "datasources" / "prometheus.yaml").read_text())
    url = urlparse(datasources["datasources"][0]["url"])
    assert url.hostname == "prometheus" and url.port in published_container_ports(prom)


def test_env_example_defines_exactly_what_compose_interpolates():
    text = (DEPLOY / "compose.yaml").read_text()
    referenced = set(re.findall(r"\$\{(\w+)", text))
    example = (DEPLOY / ".env.example").read_text()
    defined = set(re.findall(r"^#?\s*(\w+)=", example, flags=re.M))
    # SVG2_IMAGE etc. have defaults in compose, but the one settings file lists every knob.
    assert referenced - defined == set(), "variables compose reads that .env.example does not show"
    assert defined - referenced - {"COMPOSE_PROFILES"} == set(), ".env.example variables nothing reads"
    profiles = {p for svc in SERVICES.values() for p in svc.get("profiles", [])}
    assert "dcgm" in profiles and {f"gpu{i}" for i in range(1, 8)} <= profiles


def _compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        # The file uses the Compose Specification (top-level ``name:``), which only Compose v2
        # implements; Debian's docker-compose 1.x predates it and rejects the file.
        probe = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").split(".")[0].isdigit() \
                and int(probe.stdout.strip().lstrip("v").split(".")[0]) >= 2:
            return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no Compose v2 CLI (docker compose plugin or docker-compose >= 2) on this machine")
    result = subprocess.run(
        [*cli, "--env-file", str(DEPLOY / ".env.example"), "-f", str(DEPLOY / "compose.yaml"), "config", "-q"],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
