"""deploy/monitoring: the alert rules pass Prometheus' own checks and unit tests; the dashboard's queries are valid PromQL.

That the rules fire on a real server and that every series the dashboard names is
exported is checked against a live server in tests/test_drift.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks.launch import ROOT

pytestmark = pytest.mark.integration

MONITORING = ROOT / "deploy" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus; .ci/run does)")
SERIES_RE = re.compile(r"\b((?:modelserve|bentoml)_[a-z0-9_]+)\b")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def dashboard_series() -> set[str]:
    return {name for query in dashboard_queries() for name in SERIES_RE.findall(query)}


@needs_promtool
def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0 and "SUCCESS: 4 rules found" in result.stdout, result.stdout + result.stderr


@needs_promtool
def test_the_alert_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


@needs_promtool
def test_the_unit_tests_fail_when_a_rule_is_wrong(tmp_path: Path) -> None:
    """The unit tests can fail: with the drift threshold moved from 0.2 to 0.7 the expected alert never fires."""
    rules = (MONITORING / "alerts.yml").read_text()
    assert "(modelserve_drift_score) > 0.2" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("(modelserve_drift_score) > 0.2", "(modelserve_drift_score) > 0.7"))
    shutil.copy(MONITORING / "alerts_test.yml", tmp_path)
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "ModelInputDrift" in result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query becomes a recording rule, so promtool parses it."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]}]}
    (tmp_path / "dashboard_rules.yml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "dashboard_rules.yml", cwd=tmp_path)
    assert result.returncode == 0 and f"SUCCESS: {len(queries)} rules found" in result.stdout, result.stdout + result.stderr


def test_the_dashboard_watches_drift_errors_latency_and_candidates() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"])
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    series = dashboard_series()
    for wanted in ("modelserve_drift_score", "modelserve_requests_total", "bentoml_service_request_duration_seconds_bucket"):
        assert wanted in series
    assert "modelserve_shadow_disagreements_total" in series
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert alerts == {"ModelInputDrift", "ModelErrorRate", "EndpointLatencyP99", "CandidateDisagrees"}
