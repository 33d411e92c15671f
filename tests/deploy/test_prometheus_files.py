"""deploy/prometheus/: the scrape config and alert rules pass Debian's promtool, and the rules'
unit tests (lepton-rules.test.yml) fire each alert where it should and nowhere else."""

from __future__ import annotations

import subprocess
from pathlib import Path

PROMETHEUS = Path(__file__).parents[2] / "deploy" / "prometheus"


def _promtool(*args: str) -> str:
    done = subprocess.run(
        ["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_scrape_config_is_valid_and_loads_the_rules() -> None:
    out = _promtool("check", "config", "prometheus.yml")
    assert "1 rule files found" in out


def test_rules_are_valid() -> None:
    assert "7 rules found" in _promtool("check", "rules", "lepton-rules.yml")


def test_rules_fire_where_their_unit_tests_say() -> None:
    assert "SUCCESS" in _promtool("test", "rules", "lepton-rules.test.yml")


def test_a_wrong_expectation_fails_the_rule_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against a rule file that never fires do."""
    (tmp_path / "lepton-rules.yml").write_text(
        (PROMETHEUS / "lepton-rules.yml")
        .read_text()
        .replace("== 0\n        for: 10m", "== 7\n        for: 10m")
    )
    (tmp_path / "tests.yml").write_text((PROMETHEUS / "lepton-rules.test.yml").read_text())
    done = subprocess.run(
        ["promtool", "test", "rules", "tests.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0 and "LeptonDeviceOffline" in done.stdout + done.stderr
