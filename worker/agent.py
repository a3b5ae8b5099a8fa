"""The worker agent: registration, heartbeats, the poll loop and the jobs it runs.

Threads, all owned here: one heartbeat thread, one poll thread (long-polls the
coordinator for jobs and cancellations) and one thread per running job (plus that
job's pipe readers). ``start`` starts them, ``stop`` stops taking work, ``join`` waits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from client.api import Api, ApiError, AuthError, Unreachable
from client.downlink import open_downlink
from dffmpeg import __version__
from dffmpeg.config import WorkerConfig
from dffmpeg.transport.session import Downlink
from worker.capabilities import probe_binaries
from worker.executor import JobExecution

log = logging.getLogger(__name__)

POLL_WAIT_SECONDS = 20.0
# With a broker or stream transport: how often to read anyway (catches up on anything a
# notification could not bring, e.g. a change made through another coordinator).
CATCHUP_SECONDS = 60.0


class WorkerAgent:
    def __init__(self, config: WorkerConfig, api: Api) -> None:
        self.config = config
        self.api = api
        self.jobs: dict[str, JobExecution] = {}
        self._jobs_lock = threading.Lock()
        self._stopping = threading.Event()  # no new jobs
        self._stopped = threading.Event()  # all threads should end
        self._threads: list[threading.Thread] = []
        self.binaries: dict[str, dict[str, Any]] = {}
        self.downlink: Downlink | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.binaries = probe_binaries(self.config.binaries)
        if not self.binaries:
            raise RuntimeError("none of the configured binaries could be run")
        # Transport first: the worker goes online only once its transport passed the
        # reachability handshake (or it settled on HTTP long-poll).
        self.downlink = self._open_downlink()
        self.register()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._poll_loop, "poll")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def register(self) -> None:
        """Register, retrying with back-off while the coordinator is unreachable."""
        delay = 0.5
        while not self._stopped.is_set():
            try:
                self.api.call("POST", "/workers/register", json_body=self.registration())
                log.info(
                    "registered with %s as %s", self.config.coordinator_url, self.config.client_id
                )
                return
            except AuthError:
                raise
            except (Unreachable, ApiError) as exc:
                log.warning("cannot register yet (%s); retrying in %.1fs", exc, delay)
                self._stopped.wait(delay)
                delay = min(delay * 2, 10.0)

    def _open_downlink(self) -> Downlink | None:
        delay = 0.5
        while not self._stopped.is_set():
            try:
                downlink = open_downlink(self.api, self.config, "worker")
                if downlink is not None:
                    downlink.watch("worker")
                    log.info("jobs arrive over %s", downlink.name)
                return downlink
            except AuthError:
                raise
            except (Unreachable, ApiError) as exc:
                log.warning("cannot negotiate a transport yet (%s); retrying", exc)
                self._stopped.wait(delay)
                delay = min(delay * 2, 10.0)
        return None

    def registration(self) -> dict[str, Any]:
        return {
            "slots": self.config.slots,
            "labels": self.config.labels,
            "binaries": self.binaries,
            "path_variables": self.available_paths(),
            "version": __version__,
            "hostname": socket.gethostname(),
        }

    def available_paths(self) -> list[str]:
        return sorted(name for name, root in self.config.paths.items() if os.path.isdir(root))

    def drain(self) -> None:
        """Stop taking jobs; running ones finish."""
        self._stopping.set()

    def cancel_all(self) -> None:
        with self._jobs_lock:
            running = list(self.jobs.values())
        for job in running:
            job.cancel()

    def wait_jobs(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._jobs_lock:
                busy = [j for j in self.jobs.values() if not j.done]
            if not busy:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def stop(self) -> None:
        self._stopping.set()
        self._stopped.set()
        try:
            self.api.request("POST", "/workers/deregister", timeout=5)
        except (ApiError, Unreachable) as exc:
            log.warning("deregister failed: %s", exc)
        if self.downlink is not None:
            self.downlink.close()

    def join(self, timeout: float | None = None) -> None:
        for thread in self._threads:
            thread.join(timeout)

    # -- loops -------------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        while not self._stopped.wait(self.config.heartbeat_seconds):
            try:
                self.api.request("POST", "/workers/heartbeat", timeout=10)
            except ApiError as exc:
                if exc.status == 409:  # the coordinator forgot us (e.g. new database)
                    self.register()
                else:
                    log.warning("heartbeat refused: %s", exc)
            except Unreachable as exc:
                log.warning("heartbeat failed: %s", exc)

    def _poll_loop(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            downlink = self.downlink
            long_poll = downlink is None or downlink.long_poll
            if downlink is not None and not long_poll:
                downlink.arm("worker")  # before the read: news during it is not lost
            try:
                work = self.api.call(
                    "GET",
                    "/workers/poll",
                    params={"wait": POLL_WAIT_SECONDS if long_poll else 0},
                    timeout=POLL_WAIT_SECONDS + 30,
                )
                delay = 0.5
            except ApiError as exc:
                if exc.status == 409:
                    self.register()
                    continue
                log.warning("poll refused: %s", exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            except Unreachable as exc:
                log.warning("poll failed: %s", exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            for job_id in work.get("cancel", []):
                self._cancel(job_id)
            with self._jobs_lock:
                known = set(self.jobs)
            fresh = [a for a in work.get("jobs", []) if a["job_id"] not in known]
            for assignment in work.get("jobs", []):
                self._start_job(assignment)
            # Jobs we already run stay "assigned" until our accept lands: not news.
            if downlink is not None and not long_poll and not fresh:
                self._await_news(downlink)

    def _await_news(self, downlink: Downlink) -> None:
        """Sleep until the transport brings news, it breaks, or it is time to catch up."""
        deadline = time.monotonic() + CATCHUP_SECONDS
        while not self._stopping.is_set() and time.monotonic() < deadline:
            if downlink.wait("worker", 1.0) or downlink.long_poll:
                return

    def _start_job(self, assignment: dict[str, Any]) -> None:
        job_id = assignment["job_id"]
        with self._jobs_lock:
            self.jobs = {k: v for k, v in self.jobs.items() if not v.done}
            if job_id in self.jobs or self._stopping.is_set():
                return
            paths = {n: r for n, r in self.config.paths.items()}
            binaries = {n: str(b["path"]) for n, b in self.binaries.items()}
            execution = JobExecution(self.api, assignment, binaries, paths)
            self.jobs[job_id] = execution
        threading.Thread(target=execution.run, name=f"job-{job_id[:8]}", daemon=True).start()

    def _cancel(self, job_id: str) -> None:
        with self._jobs_lock:
            execution = self.jobs.get(job_id)
        if execution is not None:
            execution.cancel()
        else:
            # Not ours any more (e.g. we restarted): tell the coordinator it is over.
            with contextlib.suppress(ApiError, Unreachable):
                self.api.request("POST", f"/jobs/{job_id}/finish", json_body={"exit_code": 143})
