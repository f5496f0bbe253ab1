"""The test's Prometheus configuration: the project's deploy/prometheus/prometheus.yml with only
the targets replaced and the intervals shortened.

:func:`localize_config` is the whole transformation, so what the test proves about the project's
config (job names, metrics paths, relabelling) carries over: every scrape job keeps everything but
its service discovery, which becomes a static list of this machine's test processes (or nothing),
and the global and per-job intervals become ``interval``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "prometheus.yml"
INTERVAL_KEYS = ("scrape_interval", "scrape_timeout", "evaluation_interval")


def load_project_config(path: Path = PROJECT_CONFIG) -> dict:
    return yaml.safe_load(path.read_text())


def _is_discovery(key: str) -> bool:
    return key == "static_configs" or key.endswith("_sd_configs")


def localize_config(config: dict, targets: dict[str, list[str]], interval: str = "1s") -> dict:
    """``config`` with each scrape job's discovery replaced by ``targets[job_name]`` (no targets for a
    job not named) and every interval set to ``interval``."""
    out = copy.deepcopy(config)
    glob = out.setdefault("global", {})
    for key in INTERVAL_KEYS:
        glob[key] = interval
    for job in out["scrape_configs"]:
        for key in [k for k in job if _is_discovery(k)]:
            del job[key]
        for key in ("scrape_interval", "scrape_timeout"):
            if key in job:
                job[key] = interval
        if targets.get(job["job_name"]):
            job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
    unknown = set(targets) - {job["job_name"] for job in out["scrape_configs"]}
    if unknown:
        raise ValueError(f"targets: no scrape job named {sorted(unknown)} in the project's config")
    return out


def without_targets(config: dict) -> dict:
    """``config`` less what :func:`localize_config` may change (for comparing the two)."""
    out = copy.deepcopy(config)
    for key in INTERVAL_KEYS:
        out.get("global", {}).pop(key, None)
    for job in out["scrape_configs"]:
        for key in [k for k in job if _is_discovery(k) or k in ("scrape_interval", "scrape_timeout")]:
            del job[key]
    return out
