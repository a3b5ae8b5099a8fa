"""Idle workers never show as offline while they are alive.

Two workers run jobs that start and end at uneven intervals, some close together, some
after an idle spell longer than the idle lease; the workers' states are read from the
database ten times a second the whole time. None may ever be ``offline``, and neither
may have registered again (what a worker declared lost does).

CI observes for 30 s with the leases scaled down (``Timing.fast``: a 3 s lease, 6 s
idle lease); ``DFFMPEG_FAULTS_FULL=1`` observes for 10 minutes at the shipped defaults.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.faults import Caller, Timing, fault_cluster, registrations


def observe(tmp_path: Path, timing: Timing, seconds: float, idle_gap: float) -> None:
    db_path = tmp_path / "coordinator.db"
    with fault_cluster(tmp_path, f"sqlite:///{db_path}", timing) as cluster:
        seen: list[tuple[float, str, str]] = []
        stop = threading.Event()

        def sample() -> None:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
            try:
                while not stop.wait(0.1):
                    rows = conn.execute("SELECT worker_id, state FROM workers").fetchall()
                    seen.extend((time.monotonic(), w, s) for w, s in rows)
            finally:
                conn.close()

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rng = random.Random(17)
        callers: list[Caller] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            # A burst of one to four short jobs, then a pause: short, or longer than
            # the idle lease (the workers' leases turn idle, then busy again).
            burst = cluster.callers([(rng.randint(2, 8), 0) for _ in range(rng.randint(1, 4))])
            callers.extend(burst)
            pause = rng.choice([0.5, 1.5, idle_gap, idle_gap * 1.5])
            time.sleep(min(pause, max(0.0, end - time.monotonic())))
        for caller in callers:
            caller.wait(60)
        stop.set()
        sampler.join(5)
        for caller in callers:
            caller.check()
        offline = [(t, w) for t, w, s in seen if s == "offline"]
        assert not offline, offline[:5]
        assert {w for _, w, _ in seen} == {"w0", "w1"}
        assert len(seen) >= seconds * 10  # the sampler really watched the whole time
        assert [registrations(log) for log in cluster.worker_logs] == [1, 1]


@pytest.mark.timeout(150)
def test_no_idle_worker_goes_offline_scaled(tmp_path: Path) -> None:
    timing = Timing.fast()
    observe(tmp_path, timing, seconds=30, idle_gap=timing.idle_lease + 1)


@pytest.mark.timeout(1200)
def test_no_idle_worker_goes_offline_in_10_minutes(tmp_path: Path) -> None:
    if not os.environ.get("DFFMPEG_FAULTS_FULL"):
        pytest.skip("the full-length fault runs need DFFMPEG_FAULTS_FULL=1 (minutes)")
    timing = Timing.defaults()
    observe(tmp_path, timing, seconds=600, idle_gap=timing.idle_lease + 10)
