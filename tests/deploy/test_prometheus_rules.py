"""The Prometheus rules, their promtool unit tests, the scrape config and the Grafana dashboard
(deploy/prometheus, deploy/grafana): valid for promtool, every alert tested, and every metric they
query exported by the code under that name.

promtool comes from Debian's `prometheus` package, which `make test` installs when it is missing.
Without it these tests fail: a skipped test would hide rules nobody has checked."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_FILES = [PROMETHEUS / "recording_rules.yml", PROMETHEUS / "alert_rules.yml"]
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "fraud-overview.json"
RUNBOOK = ROOT / "docs" / "monitoring.md"

_METRIC = re.compile(r"\bfraud_[a-z0-9_]+")
_RECORDED = re.compile(r"\bfraud:[a-zA-Z0-9_:]+")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool not found: `make test` installs it (Debian package `prometheus`)", pytrace=False)
    return path


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def _rules() -> list[dict]:
    return [rule for f in RULE_FILES for group in yaml.safe_load(f.read_text())["groups"] for rule in group["rules"]]


def _alerts() -> list[dict]:
    return [r for r in _rules() if "alert" in r]


def _dashboard_panels() -> list[dict]:
    def walk(panels: list[dict]) -> list[dict]:
        out = []
        for p in panels:
            out.append(p)
            out.extend(walk(p.get("panels", [])))
        return out

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def test_rule_files_pass_promtool_check(promtool):
    result = _run(promtool, "check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool):
    assert UNIT_TESTS
    result = _run(promtool, "test", "rules", *UNIT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_passes_promtool_check(promtool):
    result = _run(promtool, "check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_wrong_expectation_fails_the_unit_tests(promtool, tmp_path):
    """The unit tests can fail: the same test with the expected severity changed is refused."""
    source = PROMETHEUS / "tests" / "pipeline_alerts_test.yml"
    test = yaml.safe_load(source.read_text())
    test["rule_files"] = [str(f) for f in RULE_FILES]
    case, expected = next(
        (case, alert)
        for case in test["tests"]
        for check in case.get("alert_rule_test", [])
        if check["alertname"] == "DeadLetterSurge"
        for alert in check["exp_alerts"]
    )
    test["tests"] = [case]  # that case alone: quicker
    assert expected["exp_labels"]["severity"] == "page"
    expected["exp_labels"]["severity"] = "ticket"
    (tmp_path / "wrong_test.yml").write_text(yaml.safe_dump(test))
    result = _run(promtool, "test", "rules", tmp_path / "wrong_test.yml")
    assert result.returncode != 0
    assert "DeadLetterSurge" in result.stdout + result.stderr


def test_every_alert_is_documented_and_unit_tested():
    tested_firing, tested = set(), set()
    for f in UNIT_TESTS:
        for case in yaml.safe_load(f.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.add(check["alertname"])
                if check["exp_alerts"]:
                    tested_firing.add(check["alertname"])
    runbook = RUNBOOK.read_text()
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"page", "ticket"} or "{{" in alert["labels"]["severity"], name
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"]), name
        anchor = name.lower()
        assert alert["annotations"]["runbook_url"] == f"docs/monitoring.md#{anchor}", name
        assert f"\n### {name}\n" in runbook, f"docs/monitoring.md has no section for {name}"
        assert name in tested_firing, f"no unit test where {name} fires"
        assert name in tested, name


def _exported_metric_names() -> set[str]:
    """Sample names the four services expose, from their metric families (a labelled family with no
    children yet has no samples, so the names follow from each family's name and type)."""
    from monitoring.metrics import MonitorMetrics
    from review_queue.metrics import ReviewMetrics
    from scoring.metrics import ScorerMetrics
    from streaming.metrics import StreamMetrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    names: set[str] = set()
    for cls in (ScorerMetrics, StreamMetrics, MonitorMetrics, ReviewMetrics):
        registry = CollectorRegistry()
        cls(registry)
        for family in registry.collect():
            names.update(family.name + s for s in suffixes.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
    return names


def _referenced(expressions: list[str]) -> set[str]:
    return {m for e in expressions for m in _METRIC.findall(_RECORDED.sub("", e))}


def test_rules_query_only_exported_metrics():
    exported = _exported_metric_names()
    referenced = _referenced([r["expr"] for r in _rules()])
    assert referenced, "no fraud_ metric found in the rules"
    assert referenced <= exported, f"not exported by the code: {sorted(referenced - exported)}"


def test_dashboard_queries_only_exported_metrics_and_recorded_series():
    panels = [p for p in _dashboard_panels() if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exported = _exported_metric_names()
    referenced = _referenced(exprs)
    assert referenced <= exported, f"not exported by the code: {sorted(referenced - exported)}"
    recorded = {r["record"] for r in _rules() if "record" in r}
    used = {m for e in exprs for m in _RECORDED.findall(e)}
    assert used <= recorded, f"not recorded by recording_rules.yml: {sorted(used - recorded)}"


def test_dashboard_panels_have_a_datasource_a_promql_target_and_unique_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"] if v["type"] == "datasource"] == ["datasource"]
    panels = _dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert t["expr"].strip(), p["title"]
