"""The coordinator's own measurements: what this process saw happen.

Counters, histograms and gauges of one coordinator process (requests, refusals,
database errors, held long-polls, transport deliveries, job timings and outcomes,
what drop-ins reported). Under gunicorn they live in the per-start multiprocess
directory (coordinator/metrics_dir.py) and a scrape merges every process; several
coordinator instances are summed by Prometheus (docs/monitoring.md). What describes the
whole cluster (jobs, workers, slots) is read from the database at scrape time instead
(coordinator/cluster_metrics.py).

Only ``coordinator.create_app`` imports this module, and only when it builds an app:
prometheus-client chooses between in-process and multiprocess storage when it is first
imported, which must happen after the gunicorn master set the directory up.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values

from dffmpeg.exitcodes import ExitCode
from dffmpeg.wire import TERMINAL_STATES, JobState

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Outcomes that are not ffmpeg's own (the ``failure`` column of a finished job).
FAILURE_CLASSES = ("no_capable_worker", "queue_timeout", "start_failed", "worker_lost", "canceled")
AUTH_REASONS = (
    "missing_headers",
    "unknown_identity",
    "bad_signature",
    "stale_timestamp",
    "replayed_nonce",
    "network",
    "role",
)
DATABASE_ERROR_KINDS = ("disconnect", "operational", "integrity", "other")
LONG_POLL_KINDS = ("worker", "output", "input", "stream")
PUSH_TRANSPORTS = ("stream", "mqtt", "rabbitmq")
FALLBACK_REASONS = ("coordinator_unavailable", "handshake_failed", "down", "not_delivering")

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
QUEUE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
FIRST_OUTPUT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400)


def multiprocess_dir() -> str | None:
    """The multiprocess directory this process was started with, or None.

    Raises when the directory is set but prometheus-client was imported before it was:
    its values would then stay in this process and every scrape would show a fraction.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    if values.ValueClass is values.MutexValue:
        raise RuntimeError(
            f"{MULTIPROC_ENV} is set but prometheus_client was imported before it: "
            "metrics would not be shared between the coordinator's processes"
        )
    return path


def exit_kind(code: int) -> str:
    """``coordinator_unreachable`` for 200, ...: the documented name of a cluster code."""
    try:
        return ExitCode(code).name.lower()
    except ValueError:
        return "unknown"


class Instruments:
    """Every process-local metric of one coordinator app.

    ``registry`` is where they are registered for a single-process scrape; None in
    multiprocess mode, where the scrape reads the shared directory instead. Series
    whose labels are known in advance (binaries, failure classes, reasons) are created
    at once with zero, so rates and alerts see them before the first event.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None,
        binaries: Iterable[str],
        transports: Iterable[str],
    ) -> None:
        r = registry
        self.requests = Counter(
            "dffmpeg_http_requests",
            "HTTP requests answered, by route (Flask rule), method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "dffmpeg_http_request_duration_seconds",
            "Time to answer a request (a long-poll's includes its wait), by route",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.auth_refusals = Counter(
            "dffmpeg_auth_refusals",
            "Requests refused by authentication (401) or authorisation (403), by reason",
            ["reason"],
            registry=r,
        )
        self.database_errors = Counter(
            "dffmpeg_database_errors",
            "Errors raised by the database driver, by kind",
            ["kind"],
            registry=r,
        )
        self.long_polls = Gauge(
            "dffmpeg_long_polls_held",
            "Long-polls and streams waiting right now, by what they wait for",
            ["kind"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.deliveries = Counter(
            "dffmpeg_transport_deliveries",
            "Notifications delivered: broker and stream messages published, held HTTP "
            "long-polls answered by a wake-up",
            ["transport"],
            registry=r,
        )
        self.fallbacks = Counter(
            "dffmpeg_transport_fallbacks",
            "Times a party was left with HTTP long-poll instead of a transport it offered",
            ["transport", "reason"],
            registry=r,
        )
        self.submitted = Counter(
            "dffmpeg_jobs_submitted", "Jobs submitted, by binary", ["binary"], registry=r
        )
        self.finished = Counter(
            "dffmpeg_jobs_finished",
            "Jobs that reached a final state, by binary and state",
            ["binary", "state"],
            registry=r,
        )
        self.failures = Counter(
            "dffmpeg_job_failures",
            "Jobs failed or canceled by the cluster, by failure class",
            ["binary", "failure"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "dffmpeg_job_queue_wait_seconds",
            "From submission to the process starting on a worker, by binary",
            ["binary"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.first_output = Histogram(
            "dffmpeg_job_first_output_seconds",
            "From submission to the job's first output reaching the coordinator, by binary",
            ["binary"],
            buckets=FIRST_OUTPUT_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "dffmpeg_job_run_seconds",
            "From the process starting to the job's end, by binary",
            ["binary"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.total_time = Histogram(
            "dffmpeg_job_total_seconds",
            "From submission to the job's end, by binary",
            ["binary"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.cluster_exits = Counter(
            "dffmpeg_cluster_exit_codes",
            "Drop-in runs that exited with a cluster code (200-207), as the drop-ins "
            "reported them, by code and kind",
            ["code", "kind"],
            registry=r,
        )
        self.local_fallbacks = Counter(
            "dffmpeg_local_fallbacks",
            "Drop-in runs that ran the local binary because the cluster could not, as the "
            "drop-ins reported them, by client and the failure that caused it",
            ["client", "kind"],
            registry=r,
        )
        self._zero_series(list(binaries), [t for t in transports if t != "http"])

    def _zero_series(self, binaries: list[str], transports: list[str]) -> None:
        for reason in AUTH_REASONS:
            self.auth_refusals.labels(reason)
        for kind in DATABASE_ERROR_KINDS:
            self.database_errors.labels(kind)
        for kind in LONG_POLL_KINDS:
            self.long_polls.labels(kind)
        for transport in ["http", *transports]:
            self.deliveries.labels(transport)
        # Every transport a party could want, enabled here or not: a party offering one
        # this coordinator lacks is not a fallback, but the series exist for dashboards.
        for transport in PUSH_TRANSPORTS:
            for reason in FALLBACK_REASONS:
                self.fallbacks.labels(transport, reason)
        for code in ExitCode:
            self.cluster_exits.labels(str(int(code)), exit_kind(int(code)))
        for binary in binaries:
            self.submitted.labels(binary)
            for state in TERMINAL_STATES:
                self.finished.labels(binary, state.value)
            for failure in FAILURE_CLASSES:
                self.failures.labels(binary, failure)
            for histogram in (self.queue_wait, self.first_output, self.run_time, self.total_time):
                histogram.labels(binary)

    # -- what the rest of the coordinator reports --------------------------------------

    def request_done(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_seconds.labels(route, method).observe(seconds)

    def refused(self, reason: str) -> None:
        self.auth_refusals.labels(reason).inc()

    def database_error(self, kind: str) -> None:
        self.database_errors.labels(kind).inc()

    def wait_started(self, kind: str) -> None:
        self.long_polls.labels(kind).inc()

    def wait_ended(self, kind: str, woken_with_news: bool) -> None:
        self.long_polls.labels(kind).dec()
        if woken_with_news and kind != "stream":
            self.deliveries.labels("http").inc()

    def delivered(self, transport: str, count: int = 1) -> None:
        self.deliveries.labels(transport).inc(count)

    def fell_back(self, transport: str, reason: str) -> None:
        self.fallbacks.labels(transport, reason).inc()

    def job_submitted(self, binary: str) -> None:
        self.submitted.labels(binary).inc()

    def job_moved(
        self, job: Any, to_state: JobState, values: dict[str, Any], now: datetime
    ) -> None:
        """A transition committed. ``job`` has the row's ``binary``, ``created_at`` and
        ``started_at`` as they were before it; ``values`` are what it set."""
        binary = job.binary
        if to_state == JobState.RUNNING:
            started = values.get("started_at") or now
            self.queue_wait.labels(binary).observe(_seconds(started, job.created_at))
            return
        if not to_state.terminal:
            return
        self.finished.labels(binary, to_state.value).inc()
        failure = values.get("failure")
        if failure:
            self.failures.labels(binary, str(failure)).inc()
        self.total_time.labels(binary).observe(_seconds(now, job.created_at))
        if job.started_at is not None:
            self.run_time.labels(binary).observe(_seconds(now, job.started_at))

    def first_output_seen(self, binary: str, created_at: datetime, now: datetime) -> None:
        self.first_output.labels(binary).observe(_seconds(now, created_at))

    def dropin_reported(self, client: str, kind: str, code: int, count: int) -> None:
        if kind == "local_fallback":
            self.local_fallbacks.labels(client, exit_kind(code)).inc(count)
        else:
            self.cluster_exits.labels(str(code), exit_kind(code)).inc(count)


def _seconds(later: datetime, earlier: datetime) -> float:
    # Clocks of two coordinator instances may differ a little: never a negative time.
    return max((later - earlier).total_seconds(), 0.0)
