"""Coordinator outages lose nothing (docs/operations.md, "What each fault does").

A real cluster (a coordinator process, two workers with two slots each) runs six jobs
through the drop-in, four running and two queued, while the coordinator goes away
twice: once for less than a worker lease (stopped or killed, and started again at
once), once for four leases. Every caller must end with its job's exit code, stdout
bytes and stderr, with nothing of ours on them; every job must have run exactly once,
no worker may have been declared lost (each registered once), and the job records must
say what happened.

Which faults run on which database (SIGTERM drains, ``kill`` is SIGKILL to every
process of the coordinator): on SQLite both orders, so each signal is seen short and
long; on MariaDB and PostgreSQL one order each, so each signal is seen long on a
server database. The leases are scaled down (``Timing.fast``: a 3 s lease, 30 s of
outage grace) so the suite stays short; the same test at the shipped defaults, with
the coordinator away for 120 s, runs with ``DFFMPEG_FAULTS_FULL=1``.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from tests import databases
from tests.faults import Timing, check_all, fault_cluster, registrations
from tests.helpers import wait_until

# (database, fault of the short outage, fault of the long one)
CASES = [
    ("sqlite", "sigterm", "kill"),
    ("sqlite", "kill", "sigterm"),
    ("mariadb", "sigterm", "kill"),
    ("postgresql", "kill", "sigterm"),
]
SPECS = [(24, 0), (24, 1), (24, 0), (24, 3), (16, 0), (16, 69)]  # (steps, exit code)
STEP = 0.25


def selected(kind: str) -> None:
    if kind not in databases.selected():
        pytest.skip(f"{kind} is not among DFFMPEG_TEST_DATABASES")


def outages(
    tmp_path: Path, kind: str, timing: Timing, faults: list[tuple[str, float]], pause: float
) -> list[float]:
    """Run the six jobs through ``faults`` ((how, seconds away) each, ``pause`` apart);
    check everything; return how long the coordinator was really away each time."""
    away: list[float] = []
    with (
        databases.fresh_database(kind, tmp_path) as url,
        fault_cluster(tmp_path, url, timing) as cluster,
    ):
        callers = cluster.callers(SPECS, STEP)
        cluster.wait_running(4, submitted=len(SPECS))
        coordinator = cluster.coordinators[0]
        for how, seconds in faults:
            time.sleep(pause)
            down = time.monotonic()
            coordinator.down(how)
            time.sleep(seconds)
            coordinator.start()
            away.append(time.monotonic() - down)
        check_all(cluster, callers, timeout=120 + sum(s for _, s in faults))
        jobs = {j["args"][0]: j for j in cluster.jobs()}
        for caller in callers:
            job = jobs[caller.marker]
            assert (job["state"], job["exit_code"]) == ("completed", caller.code)
            accepted = [e for e in job["events"] if e["reason"] == "accepted"]
            assert len(accepted) == 1, job["events"]
        # No worker was declared lost (it would have registered again).
        assert [registrations(log) for log in cluster.worker_logs] == [1, 1]
    return away


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("kind", "short", "long"), CASES)
def test_coordinator_away_shorter_and_longer_than_the_lease(
    tmp_path: Path, kind: str, short: str, long: str
) -> None:
    selected(kind)
    timing = Timing.fast()
    away = outages(
        tmp_path, kind, timing, [(short, 0.0), (long, 4 * timing.worker_lease)], pause=0.5
    )
    # The long one really was several leases (the short one is as short as a restart).
    assert away[1] >= 4 * timing.worker_lease


@pytest.mark.timeout(900)
def test_coordinator_away_120s_at_the_default_settings(tmp_path: Path) -> None:
    if not os.environ.get("DFFMPEG_FAULTS_FULL"):
        pytest.skip("the full-length fault runs need DFFMPEG_FAULTS_FULL=1 (minutes)")
    away = outages(tmp_path, "sqlite", Timing.defaults(), [("kill", 120.0)], pause=1.0)
    assert away[0] >= 120


@pytest.mark.timeout(180)
def test_output_during_an_outage_is_spooled_and_delivered_once(tmp_path: Path) -> None:
    """Two jobs write 12 MiB each while the coordinator is away: beyond the worker's
    memory share (8 MiB a job) their output waits on disk, in private files, and
    reaches the callers whole and in order once the coordinator is back."""
    timing = Timing.fast()
    with (
        databases.fresh_database("sqlite", tmp_path) as url,
        fault_cluster(tmp_path, url, timing) as cluster,
    ):
        callers = cluster.callers([(24, 0), (24, 7)], step=0.1, padding=512 * 1024)
        cluster.wait_running(2, submitted=2)
        coordinator = cluster.coordinators[0]
        coordinator.kill()
        spooled = wait_until(
            lambda: list(tmp_path.glob("w*-state/spool/*.spool")), timeout=30, interval=0.1
        )
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in spooled)
        assert stat.S_IMODE(spooled[0].parent.stat().st_mode) == 0o700
        time.sleep(2 * timing.worker_lease)
        coordinator.start()
        check_all(cluster, callers, timeout=120)
        assert len(callers[0].stdout) > 12 * 1024 * 1024
        assert not list(tmp_path.glob("w*-state/spool/*.spool"))  # removed with the jobs
        assert [registrations(log) for log in cluster.worker_logs] == [1, 1]
