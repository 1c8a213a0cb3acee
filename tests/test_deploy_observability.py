"""The Grafana dashboard and the Prometheus alert rules under ``deploy/`` against what s3stream exports.

``promtool`` is not used (it is not installed here): the files are parsed (JSON, YAML), their structure
checked in Python, and every PromQL expression reduced to the metric names it selects (string literals,
label matchers, ranges and ``by``/``without``/``on`` lists removed, function names dropped). Each of
those names must be one a running consumer really exposes: a group member is run on moto with traffic,
faults and a dead letter and its ``/metrics`` scraped (histograms appear as ``_bucket``/``_sum``/``_count``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3stream.s3.store import Store
from tests.observe import run_and_scrape

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "s3stream-dashboard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "s3stream-alerts.yaml"

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(?!\w)(\s*\()?")
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a minimal reading of PromQL, enough for ours)."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _LISTS.sub("", text)
    return {m.group(1) for m in _NAME.finditer(text)
            if m.group(2) is None and m.group(1).lower() not in _KEYWORDS}


def test_metric_name_extraction() -> None:
    """The PromQL reader keeps metric names and drops functions, keywords, label names, matcher values,
    ranges, Grafana variables and numbers."""
    expr = ('histogram_quantile(0.99, sum by (le, operation) (rate(s3stream_a_bucket{job=~"$job", '
            'code="x_total"}[$__rate_interval]))) / on (job) group_left s3stream_b > bool 1e3 '
            'and time() - s3stream_c offset 5m')
    assert metric_names(expr) == {"s3stream_a_bucket", "s3stream_b", "s3stream_c"}
    assert metric_names("label_values(s3stream_build_info, job)") == {"s3stream_build_info", "job"}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_dashboard_is_a_grafana_dashboard_covering_what_operators_watch() -> None:
    """The dashboard parses as JSON with a title, uid, schema version and a Prometheus data source
    variable; every panel has an id, type, title and position, ids are unique, every graph queries
    with refIds; it charts throughput, lag, handler latency, dead letters, S3 latency and errors,
    checkpoint age and lease ownership."""
    doc = dashboard()
    assert doc["title"]
    assert doc["uid"]
    assert isinstance(doc["schemaVersion"], int)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = doc["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["type"]
        assert panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert all(t["expr"] and t["refId"] for t in panel["targets"])
    used = set().union(*map(metric_names, dashboard_exprs()))
    assert {"s3stream_messages_consumed_total", "s3stream_lag_seconds",
            "s3stream_handler_duration_seconds_bucket", "s3stream_dead_letters_total",
            "s3stream_s3_request_duration_seconds_bucket", "s3stream_s3_errors_total",
            "s3stream_checkpoint_last_success_timestamp_seconds", "s3stream_lease_owned"} <= used


def test_alert_rules_have_the_required_fields() -> None:
    """The alert file parses as YAML rule groups; every rule has alert, expr, a ``for:`` duration,
    labels.severity (critical, warning or info), annotations.summary, a description and a runbook;
    alert names are unique and cover lag, checkpoints, dead letters, SlowDown and lease ownership."""
    doc = yaml.safe_load(ALERTS.read_text())
    assert all(group["name"] and group["rules"] for group in doc["groups"])
    rules = alert_rules()
    for rule in rules:
        assert rule["alert"], rule
        assert rule["expr"].strip(), rule
        assert _DURATION.match(str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"][key].strip(), (rule["alert"], key)
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names)
    assert set(names) >= {"S3StreamLagGrowing", "S3StreamCheckpointStale", "S3StreamDeadLettersRising",
                          "S3StreamS3SlowDownRateHigh", "S3StreamShardUnowned", "S3StreamMemberOwnsNoShards"}
    assert next(r for r in rules if r["alert"] == "S3StreamLagGrowing")["for"] == "15m"


@pytest.fixture
async def exported(store: Store, bucket: str, moto_endpoint: str) -> set[str]:
    """The sample names a group member exposes on ``/metrics`` after real traffic."""
    run = await run_and_scrape(store, moto_endpoint, bucket)
    return {name for name, _ in run.samples}


async def test_every_queried_metric_is_exported(exported: set[str]) -> None:
    """Every metric name in the dashboard's queries and variables and in the alert expressions is one
    that a running s3stream consumer exposes (scraped on moto, not listed by hand)."""
    variables = [v["query"]["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    queried = {expr: metric_names(expr) for expr in [*dashboard_exprs(), *(r["expr"] for r in alert_rules())]}
    queried.update({q: metric_names(q) - {"job", "topic", "group"} for q in variables})
    for expr, names in queried.items():
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{sorted(names - exported)} not exported; in {expr!r}"
