"""Reading what ``GET /metrics`` served: samples by name and labels, promtool's verdict."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO, require

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"


class Scrape:
    """One scrape's samples; ``value`` sums the samples matching the given labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict[str, str], float]] = []
        self.families: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), float(sample.value)))

    @property
    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def value(self, name: str, **labels: str) -> float:
        found = [
            v
            for n, got, v in self.samples
            if n == name and all(got.get(k) == want for k, want in labels.items())
        ]
        assert found, f"no sample {name} {labels} in the scrape"
        return sum(found)


def scrape_url(url: str) -> Scrape:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as reply:
        return Scrape(reply.read().decode())


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool (Debian's prometheus package)")
    assert path is not None
    return path


def promtool_check_metrics(text: str) -> None:
    """``promtool check metrics`` must find nothing: no format error, no lint problem."""
    out = subprocess.run(
        [promtool(), "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


def promtool_run(*args: str | Path) -> None:
    """``promtool ARGS...`` must succeed (``check config F``, ``test rules F``, ...)."""
    out = subprocess.run([promtool(), *(str(a) for a in args)], capture_output=True, timeout=30)
    assert out.returncode == 0, (out.stdout + out.stderr).decode()


_METRIC = re.compile(r"\bdffmpeg_[a-z_]+\b")


def dashboard_metrics() -> set[str]:
    """Every metric name the Grafana dashboard's queries use."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    names.update(_METRIC.findall(value))
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return names
