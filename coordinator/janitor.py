"""Periodic clean-up inside the coordinator.

Every sweep is made of compare-and-set transitions and idempotent deletes, so any
number of coordinator processes may run it at the same time. Besides judging leases
and time-outs it does the maintenance that keeps the database's size bounded: the
retention purge (coordinator/retention.py) and, on SQLite, a checkpoint that truncates
the write-ahead log every ``MAINTENANCE_SECONDS`` (coordinator/storage.py).

A sweep that fails because the database cannot be used is reported to the
``StorageMonitor`` (one log line per kind and half minute, not a traceback every
sweep), which also notes the impairment: leases are judged again only a whole lease
after the database was last seen failing.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import update

from coordinator import lifecycle, retention, retries, samples, serving, storage
from coordinator.db import db, now_utc
from coordinator.models import Job, Worker
from dffmpeg.wire import JobState

log = logging.getLogger(__name__)

# The SQLite write-ahead log is truncated at most this often.
MAINTENANCE_SECONDS = 30.0


class Janitor:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.interval = app.config["DFFMPEG"].janitor_seconds
        self.serving: serving.ServingMonitor = app.extensions["dffmpeg.serving"]
        self.storage: storage.StorageMonitor = app.extensions["dffmpeg.storage"]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The latest impairment of any instance, read at the start of each sweep.
        self._impaired_at: datetime | None = None
        self._sampled: datetime | None = None  # the minute whose end was last recorded
        self._maintained_at: float | None = None  # monotonic

    def start(self) -> None:
        # This instance may be starting after an outage of any length, during which no
        # party could renew a lease: the first leases judged are those the parties had
        # the whole of to renew against the running coordinator (coordinator.serving).
        self.serving.impaired("coordinator started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.app.app_context():
                    self.sweep()
            except Exception as exc:
                fault = storage.classify(exc)
                if fault is None:
                    log.exception("janitor sweep failed")
                else:
                    self.storage.failed(fault)  # logged there, at most twice a minute

    def sweep(self) -> None:
        # First: what this instance noted since the last sweep reaches the database, and
        # no lease is judged before parties had a whole lease since any impairment.
        written = self.serving.flush()
        if written is not None:
            self.storage.wrote(written)  # that write went through: the database is back
        self._impaired_at = self.serving.latest()
        self.expire_workers()
        self.release_lost_jobs()
        self.requeue_unaccepted()
        self.close_unconfirmed_cancels()
        self.expire_queued()
        self.cancel_abandoned_jobs()
        self.sample()
        self.maintain()

    def maintain(self, force: bool = False) -> None:
        """The retention purge (every sweep: it reads little when there is nothing to
        do), and on SQLite the write-ahead log's truncation when ``MAINTENANCE_SECONDS``
        have passed since the last one (the first sweep always does it)."""
        self.purge()
        now = time.monotonic()
        last = self._maintained_at
        if not force and last is not None and now - last < MAINTENANCE_SECONDS:
            return
        self._maintained_at = now
        storage.checkpoint(db.engine)

    def _may_judge(self, lease: timedelta, now: datetime) -> bool:
        return serving.may_judge(lease, self._impaired_at, now)

    def sample(self) -> None:
        """Once a minute, the minute that just ended (coordinator/samples.py)."""
        minute = samples.minute_of(now_utc())
        if self._sampled != minute:
            samples.record()
            self._sampled = minute

    def _stale(self, state: JobState) -> tuple[list[str], datetime]:
        """Jobs in ``state`` whose last transition is older than the assign timeout."""
        now = now_utc()
        timeout = timedelta(seconds=self.app.config["DFFMPEG"].assign_timeout_seconds)
        limit = now - timeout
        if not self._may_judge(timeout, now):
            return [], limit
        stmt = db.select(Job.id).where(Job.state == state.value, Job.updated_at < limit)
        ids = list(db.session.execute(stmt).scalars())
        db.session.commit()
        return ids, limit

    def requeue_unaccepted(self) -> None:
        """An assignment its (live) worker did not accept in time goes back to the queue."""
        moved = False
        ids, limit = self._stale(JobState.ASSIGNED)
        for job_id in ids:
            moved |= lifecycle.transition(
                job_id,
                [JobState.ASSIGNED],
                JobState.PENDING,
                "not accepted in time; back in the queue",
                unchanged_since=limit,
                worker_id=None,
            )
        if moved:
            self.app.extensions["dffmpeg.notifier"].notify("jobs")

    def close_unconfirmed_cancels(self) -> None:
        """A cancel its worker never confirmed (it lost the job) ends as canceled."""
        ids, limit = self._stale(JobState.CANCELING)
        for job_id in ids:
            lifecycle.transition(
                job_id,
                [JobState.CANCELING],
                JobState.CANCELED,
                "canceled (the worker did not confirm)",
                unchanged_since=limit,
                failure="canceled",
            )

    def expire_queued(self) -> None:
        """Pending jobs past the queue timeout their requester set fail."""
        now = now_utc()
        stmt = db.select(Job.id, Job.created_at).where(
            Job.state == JobState.PENDING.value, Job.queue_deadline < now
        )
        rows = list(db.session.execute(stmt))
        db.session.commit()
        for job_id, created_at in rows:
            waited = (now - created_at).total_seconds()
            lifecycle.transition(
                job_id,
                [JobState.PENDING],
                JobState.FAILED,
                f"queue timeout: no capable worker was free within {waited:.0f}s",
                failure="queue_timeout",
            )

    def expire_workers(self) -> None:
        """Workers silent past their lease go offline, once they had a whole lease to
        renew since the coordinator last could not serve (coordinator.serving)."""
        now = now_utc()
        stmt = db.select(Worker.worker_id, Worker.last_seen_at, Worker.lease_expires_at).where(
            Worker.state != "offline", Worker.lease_expires_at < now
        )
        rows = list(db.session.execute(stmt))
        for worker_id, seen, until in rows:
            # The lease it was granted: the short one while it held a job, else the idle one.
            if not self._may_judge(until - seen, now):
                continue
            # Compare-and-set on the lease read: a renewal meanwhile keeps it online.
            db.session.execute(
                update(Worker)
                .where(
                    Worker.worker_id == worker_id,
                    Worker.state != "offline",
                    Worker.lease_expires_at == until,
                )
                .values(state="offline")
            )
        db.session.commit()

    def release_lost_jobs(self) -> None:
        """Jobs held by offline workers: requeue unstarted ones, fail running ones (or
        queue them again, coordinator/retries.py)."""
        stmt = (
            db.select(Job.id, Job.state, Job.worker_id)
            .join(Worker, Worker.worker_id == Job.worker_id)
            .where(
                Worker.state == "offline",
                Job.state.in_(
                    [JobState.ASSIGNED.value, JobState.RUNNING.value, JobState.CANCELING.value]
                ),
            )
        )
        rows = list(db.session.execute(stmt))
        db.session.commit()
        for job_id, state, worker_id in rows:
            # held_by: the job may have been requeued and assigned elsewhere meanwhile.
            if state == JobState.ASSIGNED.value:
                lifecycle.transition(
                    job_id,
                    [JobState.ASSIGNED],
                    JobState.PENDING,
                    "worker went offline before starting it",
                    held_by=worker_id,
                    worker_id=None,
                )
            elif state == JobState.CANCELING.value:
                lifecycle.transition(
                    job_id,
                    [JobState.CANCELING],
                    JobState.CANCELED,
                    "canceled (worker went offline)",
                    held_by=worker_id,
                    failure="canceled",
                )
            else:
                retries.worker_lost(job_id, worker_id, "worker lost")
        if rows:
            self.app.extensions["dffmpeg.notifier"].notify("jobs")

    def cancel_abandoned_jobs(self) -> None:
        """Monitored jobs whose client stopped watching are canceled."""
        now = now_utc()
        lease = timedelta(seconds=self.app.config["DFFMPEG"].client_lease_seconds)
        if not self._may_judge(lease, now):
            return
        stmt = db.select(Job.id, Job.state, Job.worker_id).where(
            Job.mode == "active",
            Job.client_lease_expires_at < now,
            Job.state.in_(
                [JobState.PENDING.value, JobState.ASSIGNED.value, JobState.RUNNING.value]
            ),
        )
        rows = list(db.session.execute(stmt))
        db.session.commit()
        notifier = self.app.extensions["dffmpeg.notifier"]
        for job_id, state, worker_id in rows:
            reason = "client went away"
            if state == JobState.RUNNING.value:
                lifecycle.transition(job_id, [JobState.RUNNING], JobState.CANCELING, reason)
                notifier.notify(f"worker:{worker_id}")
            else:
                lifecycle.transition(
                    job_id,
                    [JobState.PENDING, JobState.ASSIGNED],
                    JobState.CANCELED,
                    reason,
                    failure="canceled",
                )

    def purge(self) -> None:
        """Drop expired nonces, old jobs' output, and older jobs (coordinator.retention)."""
        settings = self.app.config["DFFMPEG"]
        cursor = self.app.extensions.setdefault("dffmpeg.retention", retention.Cursor())
        retention.purge(
            timedelta(seconds=settings.retention_seconds),
            timedelta(seconds=settings.job_retention_seconds),
            cursor,
        )
        serving.forget_old(timedelta(days=1))
