"""GET /metrics of a real multi-process coordinator (``dffmpeg-coordinator --workers 2``)
after a known mix of jobs run through the drop-in with real ffmpeg.

The scrape must equal the mix whichever of the two processes served each request (and
the scrape itself); ``promtool check metrics`` must accept it; every metric the Grafana
dashboard uses must be in it; a killed process's live gauges stop counting while its
counters stay; the per-start metrics directory is gone after the coordinator stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from client.api import Api
from tests.helpers import (
    BIN,
    admin,
    free_port,
    health,
    process_env,
    running,
    stop,
    wait_until,
    write_yaml,
)
from tests.lifecycle_cluster import coordinator
from tests.prom import Scrape, dashboard_metrics, promtool_check_metrics, scrape_url

pytestmark = pytest.mark.ffmpeg


@dataclass
class Live:
    root: Path
    url: str
    admin: Api
    tmpdir: Path  # the coordinator's TMPDIR: its metrics directory is made in there
    state_dir: Path  # the drop-ins' state directory (client/incidents.py)
    bin_dir: Path
    media: Path
    master: int

    def client_config(self, name: str, **extra: Any) -> Path:
        base = json.loads((self.root / "client-base.json").read_text())
        return write_yaml(self.root / f"{name}.yaml", {**base, **extra})

    def dropin(self, config: Path, name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        env = process_env(DFFMPEG_CLIENT_CONFIG=str(config))
        return subprocess.run(
            [str(self.bin_dir / name), *args], env=env, capture_output=True, timeout=60
        )

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.tmpdir.glob("dffmpeg-metrics-*"))


@pytest.fixture
def live(tmp_path: Path, media_dir: Path, ffmpeg: str) -> Iterator[Live]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {
            "host": "127.0.0.1",
            "port": port,
            "database_url": f"sqlite:///{tmp_path / 'coordinator.db'}",
            "janitor_seconds": 0.5,
            # Long leases: an idle worker can flap offline for a moment when its held
            # poll outlives the short lease after its last job (a known fault of the
            # lease logic), and "workers online" is part of what is checked here.
            "worker_lease_seconds": 60,
            "worker_idle_lease_seconds": 120,
        },
    )
    worker_key = admin(config, "user", "add", "worker1", "--role", "worker")["hmac_key"]
    client_key = admin(config, "user", "add", "client1", "--role", "client")["hmac_key"]
    admin_key = admin(config, "user", "add", "ops", "--role", "admin")["hmac_key"]
    media = tmp_path / "client-media"
    media.symlink_to(media_dir)
    (tmp_path / "worker-media").symlink_to(media_dir)
    state_dir = tmp_path / "state"
    (tmp_path / "client-base.json").write_text(
        json.dumps(
            {
                "client_id": "client1",
                "hmac_key": client_key,
                "coordinator_url": url,
                "paths": {"Media": str(media)},
                "state_dir": str(state_dir),
            }
        )
    )
    worker_config = write_yaml(
        tmp_path / "worker.yaml",
        {
            "client_id": "worker1",
            "hmac_key": worker_key,
            "coordinator_url": url,
            "paths": {"Media": str(tmp_path / "worker-media")},
            "binaries": {"ffmpeg": ffmpeg, "ffprobe": shutil.which("ffprobe")},
            "slots": 2,
            "heartbeat_seconds": 1,
        },
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ffmpeg", "ffprobe"):
        (bin_dir / name).symlink_to(BIN / "dffmpeg-proxy")
    tmpdir = tmp_path / "coordinator-tmp"
    tmpdir.mkdir()
    command = [str(BIN / "dffmpeg-coordinator"), "--config", str(config), "--workers", "2"]
    env = process_env(TMPDIR=str(tmpdir))
    with running(command, tmp_path / "coordinator.log", env=env) as master:
        wait_until(lambda: health(url) == 200, timeout=30)
        with running(
            [sys.executable, "-m", "worker.cli", "--config", str(worker_config)],
            tmp_path / "worker.log",
            env=process_env(),
        ):
            ops = Api(url, "ops", admin_key)
            wait_until(lambda: _online(ops), timeout=30)
            yield Live(tmp_path, url, ops, tmpdir, state_dir, bin_dir, media, master.pid)
            ops.close()


def _online(api: Api) -> bool:
    return any(w["state"] == "online" for w in api.call("GET", "/workers")["workers"])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def _held_worker_polls(path: Path) -> float:
    """The worker long-polls one process's live gauge file says it holds."""
    for metric in MultiProcessCollector.merge([str(path)], accumulate=False):
        for sample in metric.samples:
            if sample.name == "dffmpeg_long_polls_held" and sample.labels["kind"] == "worker":
                return float(sample.value)
    return 0.0


def _run_the_mix(live: Live) -> None:
    """Completed (incl. a non-zero exit), failed, canceled, a cluster failure, a fallback."""
    plain = live.client_config("plain")
    clip = str(live.media / "clip.mp4")
    out = live.dropin(plain, "ffprobe", "-v", "error", "-show_format", clip)
    assert out.returncode == 0 and b"format_name" in out.stdout, out.stderr
    out = live.dropin(plain, "ffmpeg", "-v", "error", "-i", clip, "-t", "0.2", "-f", "null", "-")
    assert out.returncode == 0, out.stderr
    missing = str(live.media / "missing.mp4")
    out = live.dropin(plain, "ffmpeg", "-v", "error", "-i", missing, "-f", "null", "-")
    assert out.returncode == 1, out.stderr  # ffmpeg's own failure: a completed job
    # A path outside every mapped root: the worker refuses to start it (exit 202).
    out = live.dropin(plain, "ffmpeg", "-v", "error", "-i", "/etc/hostname", "-f", "null", "-")
    assert out.returncode == 202, out.stderr
    # Canceled while it runs.
    submit = [sys.executable, "-m", "client.cli", "--config", str(plain), "submit", "--detach"]
    slow = ["--", "-re", "-f", "lavfi", "-i", "testsrc=d=30:s=64x64", "-f", "null", "-"]
    job_id = (
        subprocess.run(
            [*submit, *slow], env=process_env(), capture_output=True, check=True, timeout=30
        )
        .stdout.decode()
        .strip()
    )
    wait_until(lambda: live.admin.call("GET", f"/jobs/{job_id}")["job"]["state"] == "running")
    live.admin.call("POST", f"/jobs/{job_id}/cancel")
    wait_until(lambda: live.admin.call("GET", f"/jobs/{job_id}")["job"]["state"] == "canceled")
    # No worker has the label: a cluster failure (203), then the same with a fallback.
    nobody = live.client_config("nobody", require_labels=["nobody-has-it"])
    out = live.dropin(nobody, "ffmpeg", "-v", "error", "-i", clip, "-t", "0.2", "-f", "null", "-")
    assert out.returncode == 203, out.stderr
    falls = live.client_config(
        "falls", require_labels=["nobody-has-it"], local_fallback=shutil.which("ffmpeg")
    )
    out = live.dropin(falls, "ffmpeg", "-v", "error", "-i", clip, "-t", "0.2", "-f", "null", "-")
    assert out.returncode == 0, out.stderr
    assert b"running" in out.stderr and b"locally" in out.stderr
    # The next contact reports what the drop-ins recorded (here a fast probe).
    out = live.dropin(plain, "ffmpeg", "-version")
    assert out.returncode == 0 and out.stdout.startswith(b"ffmpeg version")
    assert not (live.state_dir / "sending.json").exists()
    assert (live.state_dir / "incidents.jsonl").stat().st_size == 0


@pytest.mark.timeout(240)
def test_the_scrape_equals_the_mix(live: Live) -> None:
    _run_the_mix(live)
    # Requests spread over both processes: fresh connections, each may land on either.
    for _ in range(30):
        with urllib.request.urlopen(live.url + "/health/ready", timeout=5) as reply:
            assert reply.status == 200
    [directory] = live.metrics_dirs()
    counter_files = sorted(directory.glob("counter_*.db"))
    assert len(counter_files) == 2, counter_files  # both processes counted something

    got = scrape_url(live.url)
    promtool_check_metrics(got.text)
    missing = dashboard_metrics() - got.names
    assert not missing, f"the dashboard uses metrics the scrape lacks: {sorted(missing)}"
    _assert_the_mix(got)
    ready = got.value(
        "dffmpeg_http_requests_total", route="/health/ready", method="GET", status="200"
    )
    assert ready == 30

    # A process killed outright: the master forgets its live gauges (child_exit), keeps
    # its counters, and starts another.
    workers = _children(live.master)
    assert len(workers) == 2
    holding = wait_until(
        lambda: [
            pid for pid in workers if _held_worker_polls(directory / f"gauge_livesum_{pid}.db") >= 1
        ],
        timeout=30,
    )
    victim = holding[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(set(_children(live.master)) - {victim}) == 2, timeout=30)
    wait_until(lambda: not (directory / f"gauge_livesum_{victim}.db").exists(), timeout=10)
    assert (directory / f"counter_{victim}.db").exists()
    # The worker's poll was cut off; it polls again. Only live processes count it.
    wait_until(
        lambda: scrape_url(live.url).value("dffmpeg_long_polls_held", kind="worker") == 1,
        timeout=30,
    )
    after = scrape_url(live.url)
    assert (
        after.value(
            "dffmpeg_http_requests_total", route="/health/ready", method="GET", status="200"
        )
        == 30
    )
    _assert_the_mix(after)


def _assert_the_mix(got: Scrape) -> None:
    # Cluster gauges (the database).
    assert got.value("dffmpeg_jobs", state="completed", binary="ffmpeg") == 2
    assert got.value("dffmpeg_jobs", state="completed", binary="ffprobe") == 1
    assert got.value("dffmpeg_jobs", state="failed", binary="ffmpeg") == 3
    assert got.value("dffmpeg_jobs", state="canceled", binary="ffmpeg") == 1
    assert got.value("dffmpeg_jobs", state="pending") == 0
    # The cluster's worker confines its jobs (the default).
    assert got.value("dffmpeg_workers", state="online", sandboxed="true") == 1
    assert got.value("dffmpeg_workers", state="online", sandboxed="false") == 0
    assert got.value("dffmpeg_worker_slots", worker="worker1") == 2
    assert got.value("dffmpeg_database_up") == 1
    # What the processes counted, merged.
    assert got.value("dffmpeg_jobs_submitted_total", binary="ffmpeg") == 6
    assert got.value("dffmpeg_jobs_submitted_total", binary="ffprobe") == 1
    assert got.value("dffmpeg_jobs_finished_total", binary="ffmpeg", state="completed") == 2
    assert got.value("dffmpeg_jobs_finished_total", binary="ffmpeg", state="failed") == 3
    assert got.value("dffmpeg_jobs_finished_total", binary="ffmpeg", state="canceled") == 1
    assert got.value("dffmpeg_job_failures_total", failure="start_failed") == 1
    assert got.value("dffmpeg_job_failures_total", failure="no_capable_worker") == 2
    assert got.value("dffmpeg_job_failures_total", failure="canceled") == 1
    assert got.value("dffmpeg_job_failures_total", failure="worker_lost") == 0
    # Started: the three that completed, the refused one (accepted, then could not
    # start) and the canceled one.
    assert got.value("dffmpeg_job_queue_wait_seconds_count", binary="ffmpeg") == 4
    assert got.value("dffmpeg_job_queue_wait_seconds_count", binary="ffprobe") == 1
    assert got.value("dffmpeg_job_total_seconds_count", binary="ffmpeg") == 6
    assert got.value("dffmpeg_job_first_output_seconds_count", binary="ffprobe") == 1
    assert got.value("dffmpeg_job_first_output_seconds_count", binary="ffmpeg") >= 1
    assert got.value("dffmpeg_http_requests_total", route="/api/v1/jobs", status="201") == 7
    # What the drop-ins reported.
    assert got.value("dffmpeg_cluster_exit_codes_total", code="202", kind="job_rejected") == 1
    assert got.value("dffmpeg_cluster_exit_codes_total", code="203") == 1
    assert got.value("dffmpeg_cluster_exit_codes_total") == 2
    assert (
        got.value("dffmpeg_local_fallbacks_total", client="client1", kind="no_capable_worker") == 1
    )


def test_the_metrics_directory_is_the_coordinators_own(tmp_path: Path) -> None:
    """Made at start, fresh for each start, removed when the coordinator stops."""
    port = free_port()
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {"host": "127.0.0.1", "port": port, "database_url": f"sqlite:///{tmp_path / 'c.db'}"},
    )
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    command = [str(BIN / "dffmpeg-coordinator"), "--config", str(config), "--workers", "2"]
    url = f"http://127.0.0.1:{port}"
    seen = []
    for _ in range(2):
        log = tmp_path / "coordinator.log"
        with running(command, log, env=process_env(TMPDIR=str(tmpdir))) as proc:
            wait_until(lambda: health(url) == 200, timeout=30)
            dirs = list(tmpdir.glob("dffmpeg-metrics-*"))
            assert len(dirs) == 1
            seen.append(dirs[0])
            urllib.request.urlopen(url + "/health/ready", timeout=5).close()
            got = scrape_url(url)
            # Nothing of the previous start is added to this one.
            assert got.value("dffmpeg_http_requests_total", route="/health/ready") == 1
            # A SIGTERM that reaches a gunicorn worker still booting is lost (it has the
            # master's handler until its own is set), so the master may wait out its
            # graceful_timeout (10 s) before it kills that worker and cleans up: wait
            # longer than that, as a service manager does.
            stop(proc, timeout=30)
        assert list(tmpdir.iterdir()) == []
    assert seen[0] != seen[1]


def test_metrics_refused_to_a_network_not_listed(tmp_path: Path) -> None:
    with coordinator(tmp_path, metrics_allowed_networks=["10.0.0.0/8"]) as coord:
        try:
            urllib.request.urlopen(coord.url + "/metrics", timeout=5)
            raise AssertionError("metrics were served to 127.0.0.1")
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
            body = exc.read()
        assert json.loads(body)["error"] == "forbidden"
        assert b"dffmpeg_" not in body
        # Liveness and readiness stay open to everyone.
        assert health(coord.url) == 200
