"""Reading the PromQL out of deploy/grafana/dashboards/svg2.json (shared by the static dashboard test
and the Prometheus test in tests/observability)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_PATH = ROOT / "deploy" / "grafana" / "dashboards" / "svg2.json"

#: Grafana's variables, as the test evaluates them: every model, windows that fit a short test.
TEST_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "10m",
    "$__interval": "15s",
    "${model:regex}": ".*",
    "${model}": ".*",
    "$model": ".*",
}
#: Metrics of NVIDIA's DCGM exporter: an optional compose profile, absent on a CPU machine.
EXTERNAL_PREFIXES = ("DCGM_",)


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str
    datasource_uid: str | None

    @property
    def external(self) -> bool:
        return any(prefix in self.expr for prefix in EXTERNAL_PREFIXES)

    def evaluable(self, variables: dict[str, str] = TEST_VARIABLES) -> str:
        """The expression with Grafana's variables replaced (longest names first)."""
        expr = self.expr
        for name in sorted(variables, key=len, reverse=True):
            expr = expr.replace(name, variables[name])
        assert "$" not in expr, f"unsubstituted variable in {self.panel}/{self.ref_id}: {expr}"
        return expr


def load_dashboard(path: Path = DASHBOARD_PATH) -> dict:
    return json.loads(path.read_text())


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those folded inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def panel_queries(dashboard: dict) -> list[PanelQuery]:
    out = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            out.append(PanelQuery(panel["title"], target["refId"], target["expr"],
                                  (target.get("datasource") or {}).get("uid")))
    return out


def referenced_metrics(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: our ``svg2_*`` series, exporters' ``DCGM_*`` ones and
    Prometheus' own ``up``."""
    names = set(re.findall(r"\b((?:svg2|DCGM)_[A-Za-z0-9_]+)", expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names
