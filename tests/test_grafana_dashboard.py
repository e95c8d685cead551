"""deploy/grafana/serpens.json is an importable Grafana dashboard whose every expression names
only metrics the agent, gateway and controller export (their collectors' FAMILIES, which
tests/test_metrics_scrape.py checks against real scrapes), with the suffixes their types
have (_total for counters; _bucket, _sum, _count for histograms)."""
import json
import os
import re

import pytest

from serpens.agent.metrics import FAMILIES as AGENT
from serpens.controller.metrics import FAMILIES as CONTROLLER
from serpens.gateway.metrics import FAMILIES as GATEWAY

pytestmark = pytest.mark.unit

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "deploy", "grafana", "serpens.json")
EXPORTED = {**AGENT, **GATEWAY, **CONTROLLER}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exposed_names() -> set[str]:
    """Every series name the processes expose (what PromQL can select)."""
    return {name + suffix for name, (kind, _) in EXPORTED.items() for suffix in SUFFIXES[kind]}


def expressions(dashboard) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += [t["expr"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["query"]["query"])
    return out


def test_every_expression_names_an_exported_metric():
    dashboard = json.load(open(DASHBOARD))
    exprs = expressions(dashboard)
    assert len(exprs) > 20
    exposed = exposed_names()
    used = set()
    for expr in exprs:
        names = set(re.findall(r"\bserpens_[a-z0-9_]+", expr))
        assert names, f"no Serpens metric in {expr!r}"
        assert names <= exposed, f"{expr!r}: {sorted(names - exposed)} not exported"
        used |= names
    # the views: rates per SFC and node, drops, instances, latency, state occupancy
    for needed in ("serpens_sfc_rx_packets_total", "serpens_sfc_drops_total",
                   "serpens_instances", "serpens_latency_seconds_bucket",
                   "serpens_state_entries", "serpens_state_capacity_entries"):
        assert needed in used, needed


def test_the_dashboard_is_importable():
    dashboard = json.load(open(DASHBOARD))
    assert dashboard["title"] and dashboard["uid"] and dashboard["id"] is None
    assert isinstance(dashboard["schemaVersion"], int)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for p in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + \
            p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "node", "sfc"} <= names
