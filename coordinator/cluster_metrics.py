"""Cluster-wide gauges, read from the database when Prometheus scrapes.

Every coordinator instance answers these with the same values (they describe the
shared database, not the instance): aggregate them with ``max``, not ``sum``
(docs/monitoring.md). A scrape costs five small statements whatever the history: jobs
by state and binary (from ``ix_jobs_state_binary`` alone), the oldest pending job,
workers by state, the non-offline workers' slots, and the active jobs per worker. When
the database cannot answer, only ``dffmpeg_database_up 0`` is reported, and the
process-local metrics are still served.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from coordinator import scheduler
from coordinator.db import db, now_utc
from coordinator.models import Job, Worker
from dffmpeg import __version__
from dffmpeg.wire import JobState

log = logging.getLogger(__name__)

_JOBS = Job.__table__.c
_WORKERS = Worker.__table__.c
_JOB_COUNTS = select(_JOBS.state, _JOBS.binary, func.count()).group_by(_JOBS.state, _JOBS.binary)
_OLDEST_PENDING = select(func.min(_JOBS.created_at)).where(_JOBS.state == JobState.PENDING.value)
_WORKER_COUNTS = select(
    _WORKERS.state, _WORKERS.sandboxed, _WORKERS.drained, func.count()
).group_by(_WORKERS.state, _WORKERS.sandboxed, _WORKERS.drained)
_WORKER_SLOTS = select(_WORKERS.worker_id, _WORKERS.slots).where(_WORKERS.state != "offline")
WORKER_STATES = ("online", "draining", "offline")


def _flag(value: Any) -> str:
    return "true" if value else "false"


class ClusterCollector:
    """A prometheus-client collector over the app's database (use inside a request)."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not query the database.
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        settings = self.app.config["DFFMPEG"]
        draining = self.app.extensions["dffmpeg.draining"].is_set()
        info = GaugeMetricFamily(
            "dffmpeg_coordinator_info", "This coordinator's version", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            "dffmpeg_coordinator_draining",
            "1 while this coordinator process drains (shutting down)",
            value=1 if draining else 0,
        )
        try:
            families = list(self._from_database(settings.allowed_binaries))
        except SQLAlchemyError as exc:
            db.session.rollback()
            log.warning("metrics: the database did not answer: %s", type(exc).__name__)
            families = []
        yield GaugeMetricFamily(
            "dffmpeg_database_up",
            "1 when the cluster gauges could be read from the database",
            value=1 if families else 0,
        )
        yield from families
        yield GaugeMetricFamily(
            "dffmpeg_cluster_metrics_seconds",
            "Time this scrape spent reading the cluster gauges",
            value=time.perf_counter() - started,
        )

    def _from_database(self, binaries: list[str]) -> Iterator[Metric]:
        session = db.session
        counts = {(str(s), str(b)): int(n) for s, b, n in session.execute(_JOB_COUNTS)}
        oldest = session.execute(_OLDEST_PENDING).scalar_one_or_none()
        workers = list(session.execute(_WORKER_COUNTS))
        slots = list(session.execute(_WORKER_SLOTS))
        used = scheduler.slots_used()
        now = now_utc()
        session.commit()

        jobs = GaugeMetricFamily(
            "dffmpeg_jobs",
            "Jobs in the database by state and binary (finished ones until the retention purge)",
            labels=["state", "binary"],
        )
        # Zeros for every state of every allowed binary: a series must not vanish when
        # its count drops to nothing.
        job_keys = {(s.value, b) for s in JobState for b in binaries} | set(counts)
        for job_key in sorted(job_keys):
            jobs.add_metric(list(job_key), counts.get(job_key, 0))
        yield jobs
        yield GaugeMetricFamily(
            "dffmpeg_queue_oldest_pending_seconds",
            "Age of the oldest pending job (0 when none waits)",
            value=max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0,
        )

        by_state = GaugeMetricFamily(
            "dffmpeg_workers",
            "Workers by state, whether they run jobs confined, and whether drained",
            labels=["state", "sandboxed", "drained"],
        )
        known: dict[tuple[str, str, str], int] = {
            (s, _flag(sb), _flag(dr)): 0
            for s in WORKER_STATES
            for sb in (False, True)
            for dr in (False, True)
        }
        for state, sandboxed, drained, count in workers:
            key = (str(state), _flag(sandboxed), _flag(drained))
            known[key] = known.get(key, 0) + int(count)
        for key, count in sorted(known.items()):
            by_state.add_metric(list(key), count)
        yield by_state

        total = GaugeMetricFamily(
            "dffmpeg_worker_slots",
            "Slots of each worker that is not offline",
            labels=["worker"],
        )
        busy = GaugeMetricFamily(
            "dffmpeg_worker_slots_used",
            "Jobs assigned, running or canceling on each worker that is not offline",
            labels=["worker"],
        )
        for worker_id, count in slots:
            total.add_metric([str(worker_id)], int(count))
            busy.add_metric([str(worker_id)], used.get(str(worker_id), 0))
        yield total
        yield busy
