"""The monitoring kit (deploy/monitoring/): rules that promtool accepts and whose unit tests pass,
runbook links that land on a heading, only series the code exports, dashboards as generated."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from deploy_support import REPO

KIT = REPO / "deploy" / "monitoring"
RULES = KIT / "rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed: "
                                    "apt-get install prometheus (make lint installs it when root)")


def alerts() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = subprocess.run([PROMTOOL, "test", "rules", "rules_test.yml"], capture_output=True, text=True,
                            cwd=KIT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert has at least one test in which it fires.
    tests = yaml.safe_load((KIT / "rules_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    assert {a["alert"] for a in alerts()} <= fired


def test_every_alert_links_a_runbook_heading() -> None:
    headings = {re.sub(r"[^a-z0-9-]", "", line[3:].strip().lower().replace(" ", "-"))
                for line in (REPO / "docs" / "runbooks.md").read_text().splitlines() if line.startswith("## ")}
    wanted = {"EdgeErrorRatio", "EdgeLatency", "QueueGrowing", "DeadLettered", "WorkersUnhealthy",
              "WithoutLeader", "StorageDegraded", "BudgetBurnFast", "BudgetBurnSlow"}
    assert all(any(w in a["alert"] for a in alerts()) for w in wanted)
    for alert in alerts():
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("docs/runbooks.md"), url
        assert anchor in headings, f"{alert['alert']}: no heading #{anchor} in docs/runbooks.md"


def exported_names() -> set[str]:
    """Every metric name string in the product's code (counters, gauges, histograms, collectors)."""
    names: set[str] = set()
    for folder in ("edge", "farm", "control", "common"):
        for path in (REPO / folder).rglob("*.py"):
            names |= set(re.findall(r'"(streamgate_[a-z0-9_]+)"', path.read_text()))
    return names


def base_name(series: str) -> str:
    return re.sub(r"_(total|bucket|sum|count)$", "", series)


def test_rules_and_dashboards_query_only_exported_series() -> None:
    exported = {base_name(n) for n in exported_names()}
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    texts = [RULES.read_text(), *(p.read_text() for p in (KIT / "dashboards").glob("*.json"))]
    used = {name for text in texts for name in re.findall(r"\b(streamgate_[a-z0-9_]+)", text)}
    # Dashboard uids and tags are "streamgate-..." (a hyphen), never series.
    unknown = {n for n in used if base_name(n) not in exported}
    assert not unknown, f"series the code does not export: {sorted(unknown)}"
    rule_refs = {n for text in texts for n in re.findall(r"\b(streamgate:[a-z0-9_:]+)", text)}
    assert rule_refs <= recorded, f"recording rules that do not exist: {sorted(rule_refs - recorded)}"


def test_committed_dashboards_are_what_the_script_generates(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(KIT / "dashboards.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    generated = sorted(p.name for p in tmp_path.glob("*.json"))
    assert generated == ["control.json", "edge.json", "farm.json", "fleet.json"]
    for name in generated:
        assert (KIT / "dashboards" / name).read_text() == (tmp_path / name).read_text(), (
            f"deploy/monitoring/dashboards/{name} is stale: run make dashboards")
