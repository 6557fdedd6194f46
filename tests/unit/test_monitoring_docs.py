"""docs/monitoring.md: its scrape configuration and alert rules parse, and name only metrics the
station serves (checked against a real exposition of the station's registry on a real database)."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from station.db import Database
from station.services.metrics import Metrics, Snapshot, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"


def blocks() -> list[Any]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.DOTALL)]


def served(tmp_path: Path) -> set[str]:
    """Every metric and sample name of an exposition with one unit and one volume in it."""
    db = Database(f"sqlite:///{tmp_path / 'station.db'}")
    db.migrate()
    m = Metrics()
    m.latency.labels("GET", "/api/v1/units", "200").observe(0.01)
    snap = Snapshot(protocol={"refused": 1, "dropped_bad-signature": 2}, snmp={"snmp_received": 1},
                    stats={"accepted": 1},
                    units={"unit-a": {"t": 1.0, "cpu_seconds": 1.0, "net_rx_bytes": 1.0, "net_tx_bytes": 1.0,
                                      "cpu_percent": 1.0, "cpus": 1, "mem_total": 2, "mem_available": 1,
                                      "nic": "eth1"}},
                    volumes=[("unit-a", "vdb1", 1, (1.0, 1.0, 1.0, 1.0))])
    text = render(m, db, snap).decode()
    db.dispose()
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
    return names


def test_gp_the_scrape_config_sends_a_bearer_credentials_file():
    scrape, _rules = blocks()
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/etc/prometheus/dvsan.token"}
    assert job["static_configs"][0]["targets"] == ["station.example.org:7480"]


def test_gp_every_alert_names_only_metrics_the_station_serves(tmp_path):
    _scrape, rules = blocks()
    names = served(tmp_path)
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert {"DvsanUnitUnreachable", "DvsanPoolNearlyFull", "DvsanTaskFailed"} <= set(alerts)
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]
        for metric in re.findall(r"\b(dvsan_[a-z_]+)", rule["expr"]):
            assert metric in names, (name, metric)


def test_gp_promtool_takes_the_rules(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    _scrape, rules = blocks()
    f = tmp_path / "dvsan.yml"
    f.write_text(yaml.safe_dump(rules))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
