"""The Grafana dashboard parses, uses the provisioned datasource everywhere, and asks only for
metrics the code exports (imported from service/metrics.py and worker/metrics.py)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from dashboard_queries import ROOT, iter_panels, load_dashboard, panel_queries, referenced_metrics

from service.metrics import ApiMetrics, QueueCollector
from worker.metrics import WorkerMetrics

PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def provisioned_uid() -> str:
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    return source["uid"]


def sample_names(registry) -> set[str]:
    """Every series name a registry can expose, from its families' names and types."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",),
                "gauge": ("",), "summary": ("_sum", "_count", "")}
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


@pytest.fixture
def exported(redis_client, store) -> set[str]:
    worker = WorkerMetrics(model="tiny")
    worker.set_device("cpu")
    api = ApiMetrics()
    api.registry.register(QueueCollector(redis_client, lambda: ["tiny"], store.live_workers))
    return sample_names(worker.registry) | sample_names(api.registry)


def test_every_panel_uses_the_provisioned_datasource():
    uid = provisioned_uid()
    dashboard = load_dashboard()
    panels = [p for p in iter_panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 15
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
    for query in panel_queries(dashboard):
        assert query.datasource_uid == uid, f"{query.panel}/{query.ref_id}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid


def test_panel_ids_are_unique_and_every_panel_is_described():
    panels = list(iter_panels(load_dashboard()))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] != "row":
            assert panel.get("description"), f"{panel['title']}: no description"


def test_every_metric_the_dashboard_reads_is_exported(exported):
    queries = panel_queries(load_dashboard())
    for query in queries:
        names = referenced_metrics(query.expr)
        assert names, f"{query.panel}/{query.ref_id}: no metric in {query.expr}"
        ours = {n for n in names if n.startswith("svg2_")}
        assert ours - exported == set(), f"{query.panel}/{query.ref_id} reads metrics nobody exports"
        assert names - ours <= {"up"} or query.external, f"{query.panel}: unknown metrics {names - ours}"
    used = set().union(*(referenced_metrics(q.expr) for q in queries))
    # The panels: each of these must be on the dashboard.
    for required in ("svg2_jobs_finished_total", "svg2_job_latency_seconds_bucket", "svg2_queue_jobs_waiting",
                     "svg2_worker_busy", "svg2_attention_density_ratio_bucket", "svg2_attention_seconds_saved_total",
                     "svg2_denoising_step_seconds_sum", "svg2_job_peak_gpu_memory_bytes_bucket",
                     "svg2_http_requests_total", "svg2_http_request_duration_seconds_bucket", "up",
                     "DCGM_FI_DEV_GPU_UTIL"):
        assert required in used, f"dashboard has no panel on {required}"


def test_every_expression_is_valid_promql(tmp_path):
    """promtool parses each expression (as a recording rule) after Grafana's variables are filled."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    rules = [{"record": f"dashboard:query_{i}", "expr": q.evaluable()} for i, q in enumerate(panel_queries(load_dashboard()))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
