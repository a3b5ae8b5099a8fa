"""Real clusters for fault tests: restartable coordinators, workers, callers through the drop-in.

The job is a small shell script offered by every worker under the binary name
``faultjob`` (allowed on the coordinators). It records each run in a shared file, so
"ran exactly once" is checked against what really ran; it writes a known stdout (with
NUL and 0xff bytes in it) and a known stderr (``\\r`` progress lines) over a given time,
and exits with the code it is given. Callers run it through the drop-in (a ``faultjob``
symlink to ``dffmpeg-proxy``), as a media server runs ffmpeg; ``Caller.check`` compares
everything the caller got with what the job produced.

Timings are scaled down for CI (``Timing.fast``: leases of a few seconds) and can be
the defaults (``Timing.defaults``), with the same code either way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.api import Api
from tests.helpers import BIN, free_port, health, process_env, running, wait_until, write_yaml

BINARY = "faultjob"
SCRIPT = """#!/bin/sh
case "$1" in -*) echo "faultjob 1"; exit 0;; esac  # the worker's capability probes
echo "$1" >> {runs}
i=0
while [ "$i" -lt "$2" ]; do
  printf 'out %s %d \\000\\377\\n' "$1" "$i"
  [ -n "$5" ] && head -c "$5" /dev/zero | tr '\\000' p
  printf 'progress %s %d\\r' "$1" "$i" >&2
  i=$((i + 1))
  sleep "$4"
done
printf 'done %s\\n' "$1" >&2
exit "$3"
"""


@dataclass(frozen=True)
class Timing:
    """The lease and grace settings of a fault cluster."""

    worker_lease: float
    idle_lease: float
    client_lease: float
    janitor: float
    grace: float
    heartbeat: float
    connect_retry: float

    @classmethod
    def fast(cls) -> Timing:
        """Scaled down for CI: a 3 s lease, so an outage of 12 s is four leases."""
        return cls(
            worker_lease=3,
            idle_lease=6,
            # A caller renews at a third of it: 6 s leaves it at least 4 s to fail over
            # to another coordinator on a loaded CI host (4 s failed there once).
            client_lease=6,
            janitor=0.25,
            grace=90,
            heartbeat=0.5,
            connect_retry=10,
        )

    @classmethod
    def defaults(cls) -> Timing:
        """The shipped defaults (dffmpeg/config.py)."""
        return cls(
            worker_lease=15,
            idle_lease=60,
            client_lease=15,
            janitor=2,
            grace=300,
            heartbeat=5,
            connect_retry=10,
        )

    def coordinator(self) -> dict[str, Any]:
        return {
            "worker_lease_seconds": int(self.worker_lease),
            "worker_idle_lease_seconds": int(self.idle_lease),
            "client_lease_seconds": int(self.client_lease),
            "janitor_seconds": self.janitor,
            "outage_grace_seconds": self.grace,
        }


class CoordinatorProcess:
    """One coordinator instance that a test may stop (SIGTERM), kill (SIGKILL, the
    gunicorn master and its workers together, as a crash or a kill of the service's
    control group) and start again on the same port and database."""

    def __init__(self, config: Path, log: Path, url: str, extra_args: Sequence[str] = ()) -> None:
        self.config = config
        self.log = log
        self.url = url
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "dffmpeg-coordinator"), "--config", str(self.config), *self.extra_args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=process_env(),
                start_new_session=True,
            )
        if wait:
            wait_until(lambda: health(self.url) == 200, timeout=60, interval=0.05)

    def stop(self) -> None:
        """SIGTERM: the coordinator drains and exits."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to every process of the coordinator, no drain."""
        proc = self.proc
        if proc is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)

    def down(self, how: str) -> None:
        if how == "kill":
            self.kill()
        else:
            self.stop()


@dataclass
class FaultCluster:
    root: Path
    database_url: str
    coordinators: list[CoordinatorProcess]
    client_config: Path
    bin_dir: Path
    runs_file: Path
    admin_key: str
    worker_logs: list[Path]
    timing: Timing

    @property
    def urls(self) -> list[str]:
        return [c.url for c in self.coordinators]

    def admin(self, instance: int = 0) -> Api:
        return Api(self.urls[instance], "ops", self.admin_key)

    def runs(self) -> list[str]:
        if not self.runs_file.exists():
            return []
        return self.runs_file.read_text().split()

    def wait_running(self, count: int, timeout: float = 60, submitted: int = 0) -> None:
        """Until ``count`` jobs started on workers (their first line is in the runs file)
        and ``submitted`` jobs were accepted by the coordinator in all."""
        wait_until(lambda: len(self.runs()) >= count, timeout=timeout, interval=0.05)
        if submitted:
            wait_until(lambda: self._total() >= submitted, timeout=timeout, interval=0.1)

    def _total(self) -> int:
        api = self.admin()
        try:
            return int(api.call("GET", "/jobs", params={"limit": 1})["total"])
        finally:
            api.close()

    def callers(
        self,
        specs: Sequence[tuple[int, int]],
        step: float = 0.25,
        padding: int = 0,
        late_eof: bool = False,
    ) -> list[Caller]:
        """Start one drop-in per (steps, exit code), in order, a moment apart.

        ``late_eof``: their stdin is a pipe that ends a moment into the job, an EOF the
        drop-in relays with an input request (the EOF of a /dev/null stdin goes with
        the submission)."""
        callers = []
        for number, (steps, code) in enumerate(specs):
            marker = f"job{number}-{os.urandom(3).hex()}"
            caller = Caller(marker, steps, code, step, padding, late_eof)
            caller.start(self)
            callers.append(caller)
            time.sleep(0.05)
        return callers

    def jobs(self) -> list[dict[str, Any]]:
        api = self.admin(len(self.coordinators) - 1)
        try:
            jobs: list[dict[str, Any]] = api.call("GET", "/jobs", params={"limit": 500})["jobs"]
            return [api.call("GET", f"/jobs/{j['job_id']}")["job"] for j in jobs]
        finally:
            api.close()


@dataclass
class Caller:
    """One drop-in process running ``faultjob MARKER STEPS CODE STEP``."""

    marker: str
    steps: int
    code: int
    step: float
    padding: int = 0  # bytes of "p" after each stdout line
    late_eof: bool = False  # stdin a pipe closed 0.5 s after the start (else /dev/null)
    proc: subprocess.Popen[bytes] | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    returncode: int | None = None
    started_at: float = 0.0
    ended_at: float = 0.0
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def expected_stdout(self) -> bytes:
        pad = b"p" * self.padding
        return b"".join(
            f"out {self.marker} {i} ".encode() + b"\0\xff\n" + pad for i in range(self.steps)
        )

    @property
    def expected_stderr(self) -> bytes:
        progress = b"".join(f"progress {self.marker} {i}\r".encode() for i in range(self.steps))
        return progress + f"done {self.marker}\n".encode()

    def start(self, cluster: FaultCluster) -> None:
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(cluster.bin_dir / BINARY),
                self.marker,
                str(self.steps),
                str(self.code),
                str(self.step),
                *([str(self.padding)] if self.padding else []),
            ],
            stdin=subprocess.PIPE if self.late_eof else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=process_env(DFFMPEG_CLIENT_CONFIG=str(cluster.client_config)),
        )
        if self.late_eof:
            assert self.proc.stdin is not None
            threading.Timer(0.5, self.proc.stdin.close).start()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc is not None
        if self.late_eof:  # communicate() would close stdin at once
            assert self.proc.stdout is not None and self.proc.stderr is not None
            errors = threading.Thread(target=self._read_stderr, daemon=True)
            errors.start()
            self.stdout = self.proc.stdout.read()
            errors.join()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc.stderr.close()
        else:
            self.stdout, self.stderr = self.proc.communicate()
        self.returncode = self.proc.returncode
        self.ended_at = time.monotonic()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait(self, timeout: float) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            assert self.proc is not None
            self.proc.kill()
            self._thread.join(10)
            raise AssertionError(f"{self.marker} did not end within {timeout:.0f}s")

    def check(self) -> None:
        """Exit code, stdout and stderr exactly what the job produced, nothing of ours."""
        detail = f"{self.marker}: exit {self.returncode}, stderr {self.stderr[-300:]!r}"
        assert self.returncode == self.code, detail
        assert self.stdout == self.expected_stdout, detail
        assert self.stderr == self.expected_stderr, detail


def check_all(cluster: FaultCluster, callers: Sequence[Caller], timeout: float) -> None:
    """Every caller ended as its job did, and every job ran exactly once."""
    deadline = time.monotonic() + timeout
    for caller in callers:
        caller.wait(max(1.0, deadline - time.monotonic()))
    for caller in callers:
        caller.check()
    runs = cluster.runs()
    for caller in callers:
        assert runs.count(caller.marker) == 1, (caller.marker, runs)


@contextmanager
def fault_cluster(
    root: Path,
    database_url: str,
    timing: Timing,
    *,
    instances: int = 1,
    workers: int = 2,
    slots: int = 2,
    coordinator_extra: dict[str, Any] | None = None,
    worker_urls: Sequence[Sequence[int]] | None = None,
    client_urls: Sequence[int] | None = None,
    client_extra: dict[str, Any] | None = None,
    worker_extra: dict[str, Any] | None = None,
    urls: Sequence[str] | None = None,
    ports: Sequence[int] | None = None,
) -> Iterator[FaultCluster]:
    """Coordinator instances on ``database_url``, workers, a client config for callers.

    ``worker_urls[i]`` and ``client_urls`` list instance numbers in failover order
    (default: every party knows only the first instance); ``urls`` replaces the
    addresses the parties are given (e.g. a proxy in between), one per instance;
    ``ports`` chooses the instances' ports (default: free ones).
    """
    (root / "runs").mkdir(parents=True)
    (root / "bin").mkdir()
    runs_file = root / "runs" / "runs.txt"
    script = root / "bin" / "faultjob.sh"
    script.write_text(SCRIPT.format(runs=runs_file))
    script.chmod(0o755)
    bin_dir = root / "dropin"
    bin_dir.mkdir()
    (bin_dir / BINARY).symlink_to(BIN / "dffmpeg-proxy")
    # One secret for the identities made here and every instance (the default is beside
    # each config, which is one place only for SQLite beside it).
    secret = str(root / "coordinator.secret")
    keys = _add_users(database_url, workers, secret)
    coordinators = []
    for i in range(instances):
        port = ports[i] if ports is not None else free_port()
        config = write_yaml(
            root / f"coordinator{i}.yaml",
            {
                "host": "127.0.0.1",
                "port": port,
                "database_url": database_url,
                "secret_key_file": secret,
                "allowed_binaries": [BINARY],
                "assign_timeout_seconds": 20,
                **timing.coordinator(),
                **(coordinator_extra or {}),
            },
        )
        coordinators.append(
            CoordinatorProcess(config, root / f"coordinator{i}.log", f"http://127.0.0.1:{port}")
        )
    addresses = list(urls) if urls is not None else [c.url for c in coordinators]
    worker_logs = []
    with ExitStack() as stack:
        for coordinator in coordinators:
            stack.callback(coordinator.kill)
            coordinator.start(wait=False)
        for coordinator in coordinators:
            wait_until(lambda c=coordinator: health(c.url) == 200, timeout=60, interval=0.05)
        for i in range(workers):
            order = worker_urls[i] if worker_urls is not None else [0]
            config = write_yaml(
                root / f"w{i}.yaml",
                {
                    "client_id": f"w{i}",
                    "hmac_key": keys[f"w{i}"],
                    "coordinator_url": [addresses[n] for n in order],
                    "binaries": {BINARY: str(script)},
                    "paths": {"Runs": str(runs_file.parent)},
                    "slots": slots,
                    "heartbeat_seconds": timing.heartbeat,
                    "state_dir": str(root / f"w{i}-state"),
                    **(worker_extra or {}),
                },
            )
            log = root / f"w{i}.log"
            worker_logs.append(log)
            stack.enter_context(
                running(
                    [sys.executable, "-m", "worker.cli", "--config", str(config)],
                    log,
                    env=process_env(),
                )
            )
        client_config = write_yaml(
            root / "client.yaml",
            {
                "client_id": "c1",
                "hmac_key": keys["c1"],
                "coordinator_url": [addresses[n] for n in (client_urls or [0])],
                "connect_retry_seconds": timing.connect_retry,
                "state_dir": str(root / "client-state"),
                **(client_extra or {}),
            },
        )
        cluster = FaultCluster(
            root,
            database_url,
            coordinators,
            client_config,
            bin_dir,
            runs_file,
            keys["ops"],
            worker_logs,
            timing,
        )
        wait_until(lambda: _online(cluster) == workers, timeout=60, interval=0.2)
        yield cluster


def _online(cluster: FaultCluster) -> int:
    api = cluster.admin()
    try:
        workers = api.call("GET", "/workers")["workers"]
    finally:
        api.close()
    return sum(1 for w in workers if w["state"] == "online")


def _add_users(database_url: str, workers: int, secret: str) -> dict[str, str]:
    """Create the schema and the identities in-process (faster than one CLI per user)."""
    from coordinator import create_app, users
    from coordinator.db import db

    app = create_app({"database_url": database_url, "secret_key_file": secret}, start_janitor=False)
    with app.app_context():
        keys = {f"w{i}": users.add_user(f"w{i}", "worker")["hmac_key"] for i in range(workers)}
        keys["c1"] = users.add_user("c1", "client")["hmac_key"]
        keys["ops"] = users.add_user("ops", "admin")["hmac_key"]
        db.session.remove()
        db.engine.dispose()
    return keys


def registrations(log: Path) -> int:
    """How often a worker registered (a worker declared lost registers again)."""
    return log.read_text(errors="replace").count("registered with ")
