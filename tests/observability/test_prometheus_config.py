"""The project's Prometheus config is valid, and the test's config differs from it only in targets."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from promconfig import PROJECT_CONFIG, load_project_config, localize_config, without_targets


def promtool_check(path) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    return subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)


def test_project_config_passes_promtool():
    result = promtool_check(PROJECT_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr


def test_localized_config_changes_only_targets_and_intervals(tmp_path):
    project = load_project_config()
    local = localize_config(project, {"svg2-api": ["127.0.0.1:18000"], "svg2-worker": ["127.0.0.1:19410"]})
    assert without_targets(local) == without_targets(project)
    jobs = {job["job_name"]: job for job in local["scrape_configs"]}
    assert jobs["svg2-api"]["static_configs"] == [{"targets": ["127.0.0.1:18000"]}]
    assert jobs["svg2-worker"]["static_configs"] == [{"targets": ["127.0.0.1:19410"]}]
    assert "dns_sd_configs" not in jobs["svg2-worker"] and "static_configs" not in jobs["dcgm"]
    assert local["global"]["scrape_interval"] == "1s"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(local))
    result = promtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_localizing_an_unknown_job_is_an_error():
    with pytest.raises(ValueError, match="svg2-apii"):
        localize_config(load_project_config(), {"svg2-apii": ["127.0.0.1:1"]})
