"""The alert rules of deploy/base/prometheusrule.yaml through promtool: syntax and best practice
(`check rules`) and a unit test for every alert (`test rules`, alerts.test.yaml)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULE = HERE.parents[1] / "deploy" / "base" / "prometheusrule.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Installed by the test command (Debian's prometheus package); its absence is a failure.
    path = shutil.which("promtool")
    assert path is not None, "promtool is not installed: apt-get install prometheus"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, check=False)


def write_rules(directory: Path) -> Path:
    """The PrometheusRule's spec is a Prometheus rule file."""
    rules = directory / "rules.yaml"
    rules.write_text(yaml.safe_dump(yaml.safe_load(RULE.read_text())["spec"]))
    return rules


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    result = promtool("check", "rules", str(write_rules(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "8 rules found" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    groups = yaml.safe_load(RULE.read_text())["spec"]["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    cases = yaml.safe_load((HERE / "alerts.test.yaml").read_text())["tests"]
    tested = {
        case["alertname"]
        for test in cases
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == tested


def test_alert_unit_tests_pass(tmp_path: Path) -> None:
    write_rules(tmp_path)
    shutil.copy(HERE / "alerts.test.yaml", tmp_path)
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_can_fail(tmp_path: Path) -> None:
    """With the lag threshold raised, the lag alert must no longer fire as the test expects."""
    rules = write_rules(tmp_path)
    rules.write_text(rules.read_text().replace("> 10000", "> 1000000"))
    shutil.copy(HERE / "alerts.test.yaml", tmp_path)
    result = promtool("test", "rules", str(tmp_path / "alerts.test.yaml"))
    assert result.returncode != 0
    assert "OmnisendConnectorLagGrowing" in result.stdout + result.stderr


def test_every_alert_has_a_runbook_in_the_readme() -> None:
    groups = yaml.safe_load(RULE.read_text())["spec"]["groups"]
    readme = (HERE.parents[1] / "README.md").read_text()
    headings = {
        line.lstrip("#").strip().lower() for line in readme.splitlines() if line.startswith("#")
    }
    for rule in (r for group in groups for r in group["rules"]):
        url = rule["annotations"]["runbook_url"]
        assert url.endswith("README.md#" + rule["alert"].lower()), url
        assert rule["alert"].lower() in headings, f"no README section for {rule['alert']}"
