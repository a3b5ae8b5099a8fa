"""Database faults are waited out, not reported as job failures (docs/operations.md).

* A PostgreSQL and a MariaDB restart mid-job: the database server is one of the test's
  own (``initdb`` / ``mariadb-install-db`` on a free port), never the shared one other
  engineers' tests use. It is stopped for four worker leases while six jobs run and
  wait through the drop-in, then started again.
* A full and a read-only SQLite volume: a small tmpfs the test mounts itself (and always
  unmounts). It is filled while jobs run, then space is freed; then it is remounted
  read-only, then writable again.

In each case every caller must end with its job's exit code, stdout and stderr, every
job must have run exactly once, no worker may have been declared lost, and while the
fault lasts ``/health/ready`` says 503 with the reason (naming the volume), and 200
after. A drop-in started while the volume is full waits ``connect_retry_seconds`` and
then exits 200 with one ``dffmpeg:`` line naming the volume.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.databases import private_mariadb, private_postgres
from tests.faults import BINARY, Timing, check_all, fault_cluster, registrations
from tests.helpers import process_env, require, wait_until

SPECS = [(24, 0), (24, 2), (24, 0), (24, 1), (12, 0), (12, 5)]
STEP = 0.25


def ready(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url + "/health/ready", timeout=5) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}


def _check_records(cluster: Any, callers: list[Any]) -> None:
    jobs = {j["args"][0]: j for j in cluster.jobs()}
    for caller in callers:
        job = jobs[caller.marker]
        assert (job["state"], job["exit_code"]) == ("completed", caller.code), job["events"]
    assert [registrations(log) for log in cluster.worker_logs] == [1, 1]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_database_restart_mid_job_fails_nothing(tmp_path: Path, kind: str) -> None:
    timing = Timing.fast()
    private = private_postgres if kind == "postgresql" else private_mariadb
    with private() as database, fault_cluster(tmp_path, database.url, timing) as cluster:
        url = cluster.urls[0]
        callers = cluster.callers(SPECS, STEP)
        cluster.wait_running(4, submitted=len(SPECS))
        time.sleep(0.5)
        database.stop()
        down = time.monotonic()
        _, body = wait_until(lambda: (r := ready(url))[0] == 503 and r, timeout=20)
        assert body["reason"].startswith("database unreachable"), body
        time.sleep(max(0.0, 4 * timing.worker_lease - (time.monotonic() - down)))
        database.start()
        wait_until(lambda: ready(url)[0] == 200, timeout=30)
        check_all(cluster, callers, timeout=150)
        _check_records(cluster, callers)


@contextmanager
def small_tmpfs(path: Path, size: str = "12m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the test; always unmounted."""
    require(os.getuid() == 0 and shutil.which("mount") is not None, "root to mount a tmpfs")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True, timeout=30)  # fmt: skip
    try:
        yield path
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(
                ["mount", "-o", "remount,rw", str(path)], capture_output=True, timeout=30
            )
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(volume: Path) -> Path:
    """Write a file until the volume has no space left; the file is returned."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (256 * 1024, 4096, 1):  # the last bytes in smaller and smaller pieces
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.timeout(240)
def test_a_full_and_a_read_only_volume_are_named_and_recovered(tmp_path: Path) -> None:
    timing = Timing.fast()
    with small_tmpfs(tmp_path / "volume") as volume:
        url_db = f"sqlite:///{volume / 'coordinator.db'}"
        with fault_cluster(
            tmp_path / "cluster",
            url_db,
            timing,
            client_extra={"connect_retry_seconds": 2},
        ) as cluster:
            url = cluster.urls[0]
            assert ready(url)[0] == 200

            # Full: jobs are running and queued when the last byte is taken.
            callers = cluster.callers(SPECS, STEP)
            cluster.wait_running(4, submitted=len(SPECS))
            filler = fill(volume)
            _, body = wait_until(lambda: (r := ready(url))[0] == 503 and r, timeout=20)
            assert body["kind"] == "disk_full"
            assert (
                f"the database volume {volume} (holding coordinator.db) is full" in (body["reason"])
            )
            # A drop-in started now waits connect_retry_seconds, then says what is wrong.
            started = time.monotonic()
            late = subprocess.run(
                [str(cluster.bin_dir / BINARY), "late", "1", "0", "0"],
                capture_output=True,
                timeout=60,
                env=process_env(DFFMPEG_CLIENT_CONFIG=str(cluster.client_config)),
            )
            assert time.monotonic() - started >= 2
            assert late.returncode == 200, late.stderr
            assert late.stdout == b""
            line = late.stderr.decode()
            assert line.count("\n") == 1 and line.startswith("dffmpeg: coordinator unavailable")
            assert f"the database volume {volume} (holding coordinator.db) is full" in line
            log = (cluster.root / "coordinator0.log").read_text()
            assert f"database unavailable: the database volume {volume}" in log
            time.sleep(2 * timing.worker_lease)
            filler.unlink()  # space is back: everything carries on by itself
            wait_until(lambda: ready(url)[0] == 200, timeout=30)
            check_all(cluster, callers, timeout=120)

            # Read-only: the coordinator restarts (the volume cannot be remounted under
            # files open for writing) and finds its volume read-only, as after a file
            # system error; it starts anyway and says so until the volume is writable.
            callers = cluster.callers(SPECS, STEP)
            cluster.wait_running(10, submitted=2 * len(SPECS))
            coordinator = cluster.coordinators[0]
            coordinator.stop()
            subprocess.run(["mount", "-o", "remount,ro", str(volume)], check=True, timeout=30)
            try:
                coordinator.start()  # /health answers: it serves, if only 503s
                _, body = wait_until(lambda: (r := ready(url))[0] == 503 and r, timeout=20)
                assert body["kind"] == "read_only"
                assert (
                    f"the database volume {volume} (holding coordinator.db) is read-only"
                    in (body["reason"])
                )
                log = (cluster.root / "coordinator0.log").read_text()
                assert f"the database volume {volume} (holding coordinator.db) is read-only" in log
                time.sleep(2 * timing.worker_lease)
            finally:
                subprocess.run(["mount", "-o", "remount,rw", str(volume)], check=True, timeout=30)
            wait_until(lambda: ready(url)[0] == 200, timeout=30)
            check_all(cluster, callers, timeout=120)
            # The write-ahead log is truncated by the janitor (at most every 30 s), so a
            # full volume is never the log's doing; here it holds a few pages at most.
            wal = volume / "coordinator.db-wal"
            assert not wal.exists() or wal.stat().st_size < 8 * 1024 * 1024
            _check_records_after(cluster, 12)


def _check_records_after(cluster: Any, count: int) -> None:
    jobs = cluster.jobs()
    done = [j for j in jobs if j["args"][0] != "late"]
    assert len(done) == count
    assert all(j["state"] == "completed" for j in done), [j["events"] for j in done]
    assert [registrations(log) for log in cluster.worker_logs] == [1, 1]
