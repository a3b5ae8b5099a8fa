"""The worker agent: registration, heartbeats, the poll loop and the jobs it runs.

Threads, all owned here: one heartbeat thread, one poll thread (long-polls the
coordinator for jobs and cancellations), one mount-monitor thread, one load-sampling
thread and one thread per running job (plus that job's pipe readers). ``start``
starts them; ``drain`` stops taking work; ``abort_all`` stops running jobs; ``stop``
deregisters and ends the loops.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from client.api import Api, ApiError, AuthError, Unreachable
from client.downlink import open_downlink
from dffmpeg import __version__
from dffmpeg.backoff import Backoff
from dffmpeg.config import DEFAULT_OUTAGE_GRACE_SECONDS, WorkerConfig
from dffmpeg.transport.session import Downlink
from worker.capabilities import probe_binaries
from worker.executor import JobExecution, JobRules, Runner
from worker.load import LoadMonitor
from worker.mounts import MountMonitor
from worker.namespaces import MountGuard, NamespaceError
from worker.process import Unconfined
from worker.sandbox import Policy, Sandbox, SandboxError
from worker.spool import prepare_directory

log = logging.getLogger(__name__)

POLL_WAIT_SECONDS = 20.0
# At most this many accepts ride on one poll (the coordinator takes 64, which keeps the
# request line within gunicorn's 4 KiB); the rest go with the next.
ACCEPTS_PER_POLL = 64
# The coordinator's default worker lease, until it tells us its own.
DEFAULT_LEASE_SECONDS = 15.0
# With a broker or stream transport: how often to read anyway (catches up on anything a
# notification could not bring, e.g. a change made through another coordinator).
CATCHUP_SECONDS = 60.0


class StoppedBeforeOnline(Exception):
    """A drain or stop was asked for before the worker ever reached the coordinator."""


class WorkerAgent:
    def __init__(self, config: WorkerConfig, api: Api) -> None:
        self.config = config
        self.api = api
        self.jobs: dict[str, JobExecution] = {}
        self._jobs_lock = threading.Lock()
        self._confirming: set[str] = set()  # cancels of jobs not ours, being confirmed
        # Jobs taken up since the last poll that got through: the next poll accepts them.
        self._taken_up: set[str] = set()
        self._draining = threading.Event()  # no new jobs
        self._stopped = threading.Event()  # all threads should end
        self._threads: list[threading.Thread] = []
        self._register_lock = threading.Lock()
        self._registered_at = 0.0
        self.binaries: dict[str, dict[str, Any]] = {}
        # The lease the coordinator grants while we hold no job (it says so when we
        # register; 0 from one that does not), the short one while we hold a job, and
        # how long it lets us keep trying while it is away.
        self._idle_lease = 0.0
        self._lease = DEFAULT_LEASE_SECONDS
        self.grace = DEFAULT_OUTAGE_GRACE_SECONDS
        # Retries of the loops while the coordinator is away (dffmpeg/backoff.py): never
        # more than a quarter of the lease apart, so a coordinator that comes back hears
        # from us well within it.
        self._backoff = Backoff.for_lease(self._lease)
        self.spool_dir: Path | None = None
        self._renewed_at = 0.0  # monotonic send time of the last request that renewed
        self._poll_ok = False  # the last poll (or registration) reached the coordinator
        # The coordinator's last renewal was made while we held nothing, so it granted
        # the idle lease. Until then the short lease of a busy worker still runs, and an
        # idle heartbeat interval would let it expire right after a job ends.
        self._idle_lease_held = False
        self._beat = threading.Event()  # re-think the next heartbeat (a job started)
        self.downlink: Downlink | None = None
        self.runner: Runner = Unconfined()
        self.rules: JobRules | None = None
        self.mounts = MountMonitor(
            config.paths, self._paths_changed, interval=config.mount_check_seconds
        )
        self.load = LoadMonitor()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        # Before any thread starts: a confined worker moves into its own mount namespace,
        # which a process can only do while it is single-threaded (worker/namespaces.py).
        guard = self._mount_guard()  # fails closed: SandboxError
        self.load.start()  # first, so the registration carries a CPU figure
        self.binaries = probe_binaries(self.config.binaries)
        if not self.binaries:
            self.load.stop()
            raise RuntimeError("none of the configured binaries could be run")
        binaries = {n: str(b["path"]) for n, b in self.binaries.items()}
        self.runner = self._runner(binaries, guard)  # fails closed: SandboxError
        self.rules = JobRules(
            binaries=binaries,
            paths=dict(self.config.paths),
            allow_unmapped_paths=self.config.allow_unmapped_paths,
            allow_network=self.config.allow_network,
            allow_filters=frozenset(f.lower() for f in self.config.allow_filters),
        )
        try:
            self.spool_dir = prepare_directory(self.config.spool_directory, self.config.client_id)
        except OSError as exc:
            # Not a reason to refuse work: only an outage longer than the memory share
            # lasts would need it, and then the jobs wait on their pipes instead.
            log.warning(
                "no spool directory (%s): during an outage output waits in memory only; "
                "set spool_dir (or state_dir) to a directory this user may write",
                exc,
            )
            self.spool_dir = None
        self.mounts.available()
        # Transport first: the worker goes online only once its transport passed the
        # reachability handshake (or it settled on HTTP long-poll).
        self.downlink = self._open_downlink()
        self.register()
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._poll_loop, "poll")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.mounts.start()

    def _mount_guard(self) -> MountGuard | None:
        if not self.config.sandbox:
            return None
        try:
            return MountGuard(self.config.paths.values())
        except NamespaceError as exc:
            raise SandboxError(f"cannot confine jobs: {exc}") from exc

    def _runner(self, binaries: dict[str, str], guard: MountGuard | None) -> Runner:
        """The sandbox every job runs in, checked once now; unconfined with ``sandbox: off``."""
        config = self.config
        if guard is None:
            log.warning("sandbox: off -- jobs run unconfined, with this worker's rights")
            return Unconfined()
        hidden = [p for p in (config.source, config.key_file) if p]
        sandbox = Sandbox(
            Policy(
                roots=dict(config.paths),
                read_only=frozenset(config.read_only_paths),
                allow_network=config.allow_network,
                devices=tuple(config.devices),
                job_user=str(config.job_user) if config.job_user is not None else None,
                hidden=tuple(os.path.abspath(p) for p in hidden),
                binaries=tuple(binaries.values()),
            ),
            mounts=guard,
        )
        sandbox.check(next(iter(binaries.values())))
        log.info("jobs run confined (bubblewrap %s)", sandbox.bwrap)
        return sandbox

    def _open_downlink(self) -> Downlink | None:
        backoff = Backoff(initial=0.5, maximum=10.0)
        while not self._stopped.is_set():
            if self._draining.is_set():
                raise StoppedBeforeOnline("stopped before reaching the coordinator")
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
                self._stopped.wait(backoff.next_delay())
        return None

    def register(self, unless_since: float | None = None) -> None:
        """Register, retrying with back-off while the coordinator is unreachable.

        ``unless_since``: the monotonic time a refused request was sent; if another
        thread registered after that, do not register again (a second registration
        would settle the jobs accepted since as lost).
        """
        with self._register_lock:
            if unless_since is not None and self._registered_at > unless_since:
                return
            self._register()

    def _register(self) -> None:
        backoff = Backoff(initial=0.5, maximum=self._backoff.maximum)
        while not self._stopped.is_set():
            if self._draining.is_set() and not self._registered_at:
                raise StoppedBeforeOnline("stopped before reaching the coordinator")
            try:
                sent = time.monotonic()
                answer = self.api.call("POST", "/workers/register", json_body=self.registration())
                self._registered_at = self._renewed_at = sent
                self._idle_lease_held = not self.running_jobs()  # registration: idle lease
                self._poll_ok = True  # the coordinator is reachable: polls count as renewals
                self._idle_lease = float(answer.get("idle_lease_seconds") or 0)
                self._lease = float(answer.get("lease_seconds") or DEFAULT_LEASE_SECONDS)
                self.grace = float(
                    answer.get("outage_grace_seconds") or DEFAULT_OUTAGE_GRACE_SECONDS
                )
                self._backoff = Backoff.for_lease(self._lease)
                log.info("registered with %s as %s", self.api.base_url, self.config.client_id)
                if self._draining.is_set():
                    self._announce_drain()
                return
            except AuthError:
                raise
            except (Unreachable, ApiError) as exc:
                delay = backoff.next_delay()
                log.warning("cannot register yet (%s); retrying in %.1fs", exc, delay)
                self._stopped.wait(delay)

    def registration(self) -> dict[str, Any]:
        return {
            "slots": self.config.slots,
            "labels": self.config.labels,
            "binaries": self.binaries,
            "path_variables": self.available_paths(),
            "version": __version__,
            "hostname": socket.gethostname(),
            "sandboxed": self.runner.confined,
            # For the operator's eyes (console, details of a worker): not used to schedule.
            "mounts": dict(self.config.paths),
            "os": " ".join(os.uname()[i] for i in (0, 2, 4)),
            "load": self.load.latest(),
        }

    def available_paths(self) -> list[str]:
        """The path variables whose roots were present at the last mount check."""
        return list(self.mounts.current)

    def _paths_changed(self, variables: list[str]) -> None:
        """A mount came or went: offer exactly the variables present now."""
        log.info("offering path variables: %s", ", ".join(variables) or "none")
        sent = time.monotonic()
        try:
            self.api.call(
                "POST", "/workers/paths", json_body={"path_variables": variables}, timeout=10
            )
        except ApiError as exc:
            if exc.status == 409:
                self.register(unless_since=sent)  # it carries the current variables
            else:
                log.warning("path update refused: %s", exc)
        except Unreachable as exc:
            # The next registration (the coordinator answers 409 once it is back and
            # has expired us) carries the current variables.
            log.warning("path update failed: %s", exc)

    def drain(self) -> None:
        """Stop taking jobs (the coordinator assigns no more); running ones finish."""
        self._draining.set()
        self._announce_drain()

    def _announce_drain(self) -> None:
        try:
            self.api.request("POST", "/workers/drain", timeout=10)
        except (ApiError, Unreachable) as exc:
            log.warning("could not announce the drain: %s", exc)

    def abort_all(self, reason: str) -> None:
        """Stop every running job now; each is reported to its requester as lost."""
        with self._jobs_lock:
            running = list(self.jobs.values())
        for job in running:
            job.abort(reason)

    def cancel_all(self) -> None:
        self.abort_all("worker shutting down")

    def running_jobs(self) -> list[str]:
        with self._jobs_lock:
            return [job_id for job_id, j in self.jobs.items() if not j.reported]

    def wait_jobs(self, timeout: float | None = None) -> bool:
        """Wait until every job has ended and its end was reported."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._jobs_lock:
                busy = [j for j in self.jobs.values() if not j.reported]
            if not busy:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def stop(self) -> None:
        self._draining.set()
        self._stopped.set()
        self._beat.set()
        self.mounts.stop()
        self.load.stop()
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

    @property
    def idle_heartbeat_seconds(self) -> float:
        """Heartbeats while holding no job: a third of the idle lease."""
        return max(self.config.heartbeat_seconds, self._idle_lease / 3)

    def heartbeat_interval(self) -> float:
        if self.running_jobs() or not self._idle_lease_held:
            return self.config.heartbeat_seconds
        downlink = self.downlink
        if self._poll_ok and (downlink is None or downlink.long_poll):
            # Each long-poll renews the lease as it arrives, one every POLL_WAIT_SECONDS:
            # a heartbeat only covers a gap between polls, so it comes a little later
            # than the next poll would (still well within the idle lease).
            gap = min(POLL_WAIT_SECONDS + 5, self._idle_lease / 2)
            return max(self.idle_heartbeat_seconds, gap)
        return self.idle_heartbeat_seconds

    def _heartbeat_loop(self) -> None:
        # A heartbeat is due an interval after the last request that renewed the lease:
        # the poll renews it too, so a long-polling idle worker rarely sends one.
        while not self._stopped.is_set():
            wait = self._renewed_at + self.heartbeat_interval() - time.monotonic()
            if wait > 0:
                self._beat.wait(wait)
                self._beat.clear()
                continue
            self._heartbeat()

    def _heartbeat(self) -> None:
        sent = time.monotonic()
        idle = not self.running_jobs()
        try:
            # The load sample rides along: the latest one, taken by its own thread.
            body = {"load": self.load.latest()}
            self.api.request("POST", "/workers/heartbeat", json_body=body, timeout=10)
            self._renewed_at = max(self._renewed_at, sent)
            self._idle_lease_held = idle and not self.running_jobs()
            self._backoff.reset()
        except ApiError as exc:
            if exc.status == 409:  # the coordinator forgot us, or declared us lost
                self.register(unless_since=sent)
            else:  # e.g. a 503: the coordinator's database is away
                log.warning("heartbeat refused: %s", exc)
                self._stopped.wait(min(self.heartbeat_interval(), self._backoff.next_delay()))
        except Unreachable as exc:
            log.warning("heartbeat failed: %s", exc)
            self._stopped.wait(min(self.heartbeat_interval(), self._backoff.next_delay()))

    def _poll_loop(self) -> None:
        # Runs while draining too: cancellations of running jobs still arrive this way.
        backoff = Backoff.for_lease(self._lease)
        while not self._stopped.is_set():
            downlink = self.downlink
            long_poll = downlink is None or downlink.long_poll
            if downlink is not None and not long_poll:
                downlink.arm("worker")  # before the read: news during it is not lost
            sent = time.monotonic()
            with self._jobs_lock:
                taken_up = sorted(self._taken_up)[:ACCEPTS_PER_POLL]
            params: dict[str, Any] = {"wait": POLL_WAIT_SECONDS if long_poll else 0}
            if taken_up:
                params["accepted"] = ",".join(taken_up)
            if self._poll_ok:
                # The coordinator renews the lease when a poll arrives; the previous
                # poll got through, so this one is taken to get through too (a failure is
                # noticed by the next heartbeat, well within the lease).
                self._renewed_at = max(self._renewed_at, sent)
            try:
                work = self.api.call(
                    "GET",
                    "/workers/poll",
                    params=params,
                    timeout=POLL_WAIT_SECONDS + 30,
                )
                with self._jobs_lock:
                    self._taken_up.difference_update(taken_up)
                backoff = Backoff.for_lease(self._lease)  # the lease may have changed
                self._poll_ok = True
                self._renewed_at = max(self._renewed_at, sent)
            except ApiError as exc:
                self._poll_ok = False
                if exc.status == 409:
                    self.register(unless_since=sent)
                    continue
                log.warning("poll refused: %s", exc)
                self._stopped.wait(backoff.next_delay())
                continue
            except Unreachable as exc:
                self._poll_ok = False
                log.warning("poll failed: %s", exc)
                self._stopped.wait(backoff.next_delay())
                continue
            for job_id in work.get("cancel", []):
                self._cancel(job_id)
            with self._jobs_lock:
                known = set(self.jobs)
            fresh = [a for a in work.get("jobs", []) if a["job_id"] not in known]
            for assignment in work.get("jobs", []):
                self._start_job(assignment)
            # A fresh job is accepted by the next poll, sent at once: until then it is
            # "assigned", and its own output or finish may accept it first.
            if downlink is not None and not long_poll and not fresh:
                self._await_news(downlink)
            elif not fresh and work.get("retry_after"):
                # The coordinator answered at once instead of holding the poll (its
                # share of held requests is taken): ask again in a moment, not at once.
                self._stopped.wait(min(float(work["retry_after"]), 5.0))

    def _await_news(self, downlink: Downlink) -> None:
        """Sleep until the transport brings news, it breaks, or it is time to catch up."""
        deadline = time.monotonic() + CATCHUP_SECONDS
        while not self._stopped.is_set() and time.monotonic() < deadline:
            if downlink.wait("worker", 1.0) or downlink.long_poll:
                return

    def _start_job(self, assignment: dict[str, Any]) -> None:
        job_id = assignment["job_id"]
        with self._jobs_lock:
            self.jobs = {k: v for k, v in self.jobs.items() if not v.reported}
            # While draining, a job assigned just before the coordinator heard of the
            # drain is still run: it was ours, and the drain finishes what it holds.
            if job_id in self.jobs or self._stopped.is_set():
                return
            assert self.rules is not None  # set by start()
            execution = JobExecution(
                self.api,
                assignment,
                self.rules,
                self.runner,
                grace=self.grace,
                spool_dir=self.spool_dir,
            )
            self.jobs[job_id] = execution
            self._taken_up.add(job_id)
        self._idle_lease_held = False
        threading.Thread(target=execution.run, name=f"job-{job_id[:8]}", daemon=True).start()
        self._beat.set()  # held a job: heartbeats at the short interval from now on

    def _cancel(self, job_id: str) -> None:
        with self._jobs_lock:
            execution = self.jobs.get(job_id)
        if execution is not None:
            execution.cancel()
        else:
            # Not ours any more (e.g. we restarted): confirm the cancel, so the slot is
            # free at once instead of when the janitor gives up on the confirmation.
            with self._jobs_lock:
                if job_id in self._confirming:
                    return
                self._confirming.add(job_id)
            threading.Thread(
                target=self._confirm_cancel, args=(job_id,), name="confirm", daemon=True
            ).start()

    def _confirm_cancel(self, job_id: str) -> None:
        try:
            self.api.request(
                "POST",
                f"/jobs/{job_id}/finish",
                json_body={"exit_code": 143},
                retry_for=self.grace,
                timeout=10,
            )
        except (ApiError, Unreachable) as exc:
            log.warning("cancel of job %s not confirmed: %s", job_id, exc)
        finally:
            with self._jobs_lock:
                self._confirming.discard(job_id)
