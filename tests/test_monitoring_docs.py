"""The monitoring files in docs/ are valid for Prometheus itself (promtool), and the
recommended alerts fire on the series the coordinator really serves.

Which metrics the dashboard uses exist in a real scrape: tests/test_metrics_cluster.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import REPO
from tests.prom import DASHBOARD, promtool_run

DOCS = REPO / "docs"


def test_scrape_config_and_alert_rules_pass_promtool() -> None:
    promtool_run("check", "config", DOCS / "prometheus.yml")  # loads the rule file too
    promtool_run("check", "rules", DOCS / "prometheus-alerts.yml")


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query becomes a recording rule, which promtool parses."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            rules.append({"record": f"dashboard:panel_{panel['id']}_{target['refId']}",
                          "expr": target["expr"]})  # fmt: skip
    assert len(rules) > 20
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool_run("check", "rules", path)


ALERT_TESTS = {
    "evaluation_interval": "30s",
    "tests": [
        {
            # Two instances report the same cluster gauge: max, so one alert, not two.
            "interval": "30s",
            "input_series": [
                {"series": 'dffmpeg_queue_oldest_pending_seconds{instance="a"}',
                 "values": "0+30x30"},
                {"series": 'dffmpeg_queue_oldest_pending_seconds{instance="b"}',
                 "values": "0+30x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "DffmpegQueueStuck", "exp_alerts": []},
                {"eval_time": "12m", "alertname": "DffmpegQueueStuck",
                 "exp_alerts": [{"exp_labels": {"severity": "warning"},
                                 "exp_annotations": {
                                     "summary": "a job has waited 12m 0s for a worker",
                                     "description": "All slots busy, no worker with the "
                                     "job's labels, paths or capabilities."}}]},
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {"series": 'dffmpeg_local_fallbacks_total{instance="a",client="jellyfin",'
                           'kind="coordinator_unreachable"}',
                 "values": "0 0 0 1 1 1"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "DffmpegLocalFallbacks", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "DffmpegLocalFallbacks",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "client": "jellyfin"},
                                 "exp_annotations": {
                                     "summary": "drop-ins of jellyfin ran ffmpeg locally in "
                                     "the last hour",
                                     "description": "The cluster could not run their jobs; "
                                     "see dffmpeg-client status --all."}}]},
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                {"series": 'dffmpeg_workers{instance="a",state="online",sandboxed="true",'
                           'drained="false"}',
                 "values": "1 1 0 0 0 0 0 0 0 0"},
                {"series": 'dffmpeg_workers{instance="b",state="online",sandboxed="true",'
                           'drained="false"}',
                 "values": "1 1 0 0 0 0 0 0 0 0"},
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": "DffmpegNoWorkerOnline", "exp_alerts": []},
                {"eval_time": "9m", "alertname": "DffmpegNoWorkerOnline",
                 "exp_alerts": [{"exp_labels": {"severity": "critical"},
                                 "exp_annotations": {
                                     "summary": "no dffmpeg worker is online: every job "
                                     "waits or falls back"}}]},
            ],
        },
    ],
}  # fmt: skip


def test_recommended_alerts_fire_on_real_series(tmp_path: Path) -> None:
    path = tmp_path / "alerts-test.yml"
    path.write_text(
        yaml.safe_dump({"rule_files": [str(DOCS / "prometheus-alerts.yml")], **ALERT_TESTS})
    )
    promtool_run("test", "rules", path)
