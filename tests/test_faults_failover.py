"""Several coordinator addresses: a party fails over to the next one and carries on.

Two coordinator instances on one database. The drop-ins know both (``coordinator_url``
a list, the first one first); one worker lists them in that order, the other in the
opposite one. The first instance is killed (SIGKILL to all its processes) while six jobs
run and wait through the drop-in, and is not started again: every caller must still end
with its job's exit code, stdout and stderr, each job having run once, no worker
declared lost, within about the time the jobs take (the callers do not sit out a lease
or a time-out first).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests import databases
from tests.faults import Timing, check_all, fault_cluster, registrations

SPECS = [(16, 0), (16, 4), (16, 0), (16, 1), (12, 0), (12, 2)]
STEP = 0.25


@pytest.mark.timeout(180)
def test_clients_of_a_killed_coordinator_continue_through_the_other(tmp_path: Path) -> None:
    timing = Timing.fast()
    with (
        databases.fresh_database("sqlite", tmp_path) as url,
        fault_cluster(
            tmp_path,
            url,
            timing,
            instances=2,
            worker_urls=[[0, 1], [1, 0]],
            client_urls=[0, 1],
        ) as cluster,
    ):
        callers = cluster.callers(SPECS, STEP)
        cluster.wait_running(4, submitted=len(SPECS))
        time.sleep(0.5)
        killed = time.monotonic()
        cluster.coordinators[0].kill()
        check_all(cluster, callers, timeout=90)
        # Four 4 s jobs were running, two 3 s ones waiting for their slots: the whole lot
        # ends a few seconds after the kill, nowhere near a lease or client lease later
        # plus the jobs' time over again.
        assert max(c.ended_at for c in callers) - killed < 4 * 16 * STEP
        jobs = {j["args"][0]: j for j in cluster.jobs()}
        for caller in callers:
            assert (jobs[caller.marker]["state"], jobs[caller.marker]["exit_code"]) == (
                "completed",
                caller.code,
            )
        assert [registrations(log) for log in cluster.worker_logs] == [1, 1]
