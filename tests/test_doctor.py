"""``dffmpeg-client doctor`` against real clusters: it passes on a good one, and for each
classic fault it names the failing check with its fix (and exits 1)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster, start_cluster
from tests.helpers import admin, free_port, process_env, require, running, wait_until, write_yaml

pytestmark = pytest.mark.ffmpeg

# Long leases: a worker whose last job just ended can flap offline for a moment when its
# held poll outlives the short lease (a known fault of the lease logic, not of doctor),
# and a doctor run in that moment would rightly find no worker serving $Media.
LEASES = {"worker_lease_seconds": 60, "worker_idle_lease_seconds": 120}

ORDER = ["config", "reachable", "clock", "credentials", "role", "paths", "roundtrip", "versions"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, media_dir: Path) -> Iterator[Cluster]:
    yield from start_cluster(
        tmp_path_factory.mktemp("cluster"), media_dir, coordinator_extra=LEASES
    )


def doctor(config: Path, *prefix: str, json_out: bool = False) -> subprocess.CompletedProcess[str]:
    command = [*prefix, sys.executable, "-m", "client.cli", "--config", str(config), "doctor"]
    if json_out:
        command.append("--json")
    return subprocess.run(
        command, env=process_env(), capture_output=True, text=True, timeout=150, check=False
    )


def checks(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(out.stdout)["checks"]
    return found


def only(results: list[dict[str, Any]], name: str) -> dict[str, Any]:
    [found] = [r for r in results if r["check"] == name]
    return found


def config_with(cluster: Cluster, name: str, **changes: Any) -> Path:
    import yaml

    data = yaml.safe_load(cluster.client_config.read_text())
    return write_yaml(cluster.root / name, {**data, **changes})


@pytest.mark.timeout(150)
def test_a_good_cluster_passes(cluster: Cluster) -> None:
    out = doctor(cluster.client_config)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == len(ORDER) and all(line.startswith("\u2713 ") for line in lines)
    assert "round trip through a worker (variable Media worker worker1)" in out.stdout
    as_json = doctor(cluster.client_config, json_out=True)
    assert as_json.returncode == 0
    data = json.loads(as_json.stdout)
    assert data["ok"] is True
    assert [c["check"] for c in data["checks"]] == ORDER
    # The round trip's token files were cleaned up on this side.
    assert not list(cluster.client_media.glob(".dffmpeg-doctor-*"))


def test_a_wrong_key_is_named_with_its_fix(cluster: Cluster) -> None:
    wrong = config_with(cluster, "wrong-key.yaml", hmac_key="not-the-key-of-client1")
    out = doctor(wrong)
    assert out.returncode == 1
    assert "\u2717 credentials accepted: the coordinator refused the signature of client1" in (
        out.stdout
    )
    assert "fix: hmac_key (or hmac_key_file) must hold the key of user client1" in out.stdout
    results = checks(doctor(wrong, json_out=True))
    assert only(results, "credentials")["ok"] is False
    assert only(results, "clock")["ok"] is True  # the clock is not blamed
    assert all(r["skipped"] for r in results[results.index(only(results, "credentials")) + 1 :])


def test_a_clock_a_minute_off_is_named_with_its_fix(cluster: Cluster) -> None:
    faketime = shutil.which("faketime")
    require(faketime is not None, "faketime (Debian's faketime package)")
    assert faketime is not None
    out = doctor(cluster.client_config, faketime, "-f", "+60s", json_out=True)
    assert out.returncode == 1
    clock = only(checks(out), "clock")
    assert clock["ok"] is False
    assert "ahead of the coordinator" in clock["detail"] and "window is 30 s" in clock["detail"]
    assert "NTP" in clock["fix"]
    # A wrong clock makes every signature fail: the key is not blamed for it.
    credentials = only(checks(out), "credentials")
    assert credentials["skipped"] and "clock" in credentials["detail"]
    text = doctor(cluster.client_config, faketime, "-f", "+60s")
    assert "\u2717 clock within the signing window: this machine is 6" in text.stdout


def test_an_unreachable_coordinator_is_named_with_its_fix(cluster: Cluster) -> None:
    away = config_with(cluster, "away.yaml", coordinator_url=f"http://127.0.0.1:{free_port()}")
    out = doctor(away)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith("\u2713 config found and valid")
    assert lines[1].startswith("\u2717 coordinator reachable: cannot reach http://127.0.0.1:")
    assert lines[2].startswith("  fix: check coordinator_url, that dffmpeg-coordinator runs")
    assert all(line.startswith("- ") for line in lines[3:])  # the rest: not checked


def test_a_missing_config_is_named_with_its_fix(tmp_path: Path) -> None:
    out = doctor(tmp_path / "nothing.yaml")
    assert out.returncode == 1
    assert out.stdout.startswith("\u2717 config found and valid: config file")
    assert "fix: write a client config with client_id" in out.stdout


@pytest.fixture
def elsewhere(tmp_path: Path, media_dir: Path) -> Iterator[tuple[Cluster, Path]]:
    """A cluster whose worker maps $Media to a directory the client never sees."""
    other = tmp_path / "other-storage"
    other.mkdir()
    paths = {"paths": {"Media": str(other)}}
    for live in start_cluster(tmp_path, media_dir, worker_extra=paths, coordinator_extra=LEASES):
        yield live, other


@pytest.mark.timeout(150)
def test_a_worker_whose_root_is_other_storage_is_named(elsewhere: tuple[Cluster, Path]) -> None:
    cluster, other = elsewhere
    out = doctor(cluster.client_config, json_out=True)
    assert out.returncode == 1
    trip = only(checks(out), "roundtrip")
    assert trip["ok"] is False and trip["context"] == {"variable": "Media", "worker": "worker1"}
    assert "does not exist here" in trip["detail"]
    assert "must be the same storage as" in trip["fix"]
    # Evidence that the worker really wrote it, into its own (wrong) root.
    [stray] = other.glob(".dffmpeg-doctor-*")
    assert stray.name in trip["detail"] and stray.name in trip["fix"]
    assert only(checks(out), "paths")["ok"] is True  # the variable is offered, just not ours


WRAPPER = """#!/bin/sh
# Another build of ffmpeg, as far as its version line tells.
if [ "$1" = "-version" ]; then
  {ffmpeg} -version | sed '1s/version [^ ]*/version 99.9-other/'
else
  exec {ffmpeg} "$@"
fi
"""


@pytest.mark.timeout(150)
def test_workers_with_different_builds_are_named(cluster: Cluster, ffmpeg: str) -> None:
    script = cluster.root / "other-ffmpeg"
    script.write_text(WRAPPER.format(ffmpeg=ffmpeg))
    script.chmod(0o755)
    key = admin(cluster.coordinator_config, "user", "add", "worker2", "--role", "worker")[
        "hmac_key"
    ]
    config = write_yaml(
        cluster.root / "worker2.yaml",
        {
            "client_id": "worker2",
            "hmac_key": key,
            "coordinator_url": cluster.url,
            "paths": {"Media": str(cluster.worker_media)},
            "binaries": {"ffmpeg": str(script), "ffprobe": shutil.which("ffprobe")},
            "slots": 1,
            "heartbeat_seconds": 1,
        },
    )
    command = [sys.executable, "-m", "worker.cli", "--config", str(config)]
    with running(command, cluster.root / "worker2.log", env=process_env()):
        wait_until(lambda: _online(cluster, "worker2"), timeout=30)
        out = doctor(cluster.client_config, json_out=True)
    wait_until(lambda: not _online(cluster, "worker2"), timeout=30)
    assert out.returncode == 1, out.stdout
    versions = only(checks(out), "versions")
    assert versions["ok"] is False
    assert "ffmpeg differs" in versions["detail"] and "99.9-other" in versions["detail"]
    assert "install the same ffmpeg build on every worker" in versions["fix"]
    trips = [r for r in checks(out) if r["check"] == "roundtrip"]
    assert {r["context"]["worker"] for r in trips} == {"worker1", "worker2"}
    assert all(r["ok"] for r in trips)


def _online(cluster: Cluster, worker_id: str) -> bool:
    rows: Any = admin(cluster.coordinator_config, "worker", "list")
    return any(w["worker_id"] == worker_id and w["state"] == "online" for w in rows)
