"""Tables of the coordinator. One model set for SQLite, MariaDB and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    false,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from coordinator.db import UTCDateTime, db, now_utc

# MEDIUMBLOB on MariaDB (plain BLOB stops at 64 KiB); BYTEA / BLOB elsewhere.
CHUNK_TYPE = LargeBinary(length=16 * 1024 * 1024 - 1)


class User(db.Model):  # type: ignore[name-defined]
    __tablename__ = "users"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    # "f1:" + a Fernet token, opened with the coordinator's secret (coordinator/keystore.py).
    hmac_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now_utc)
    # CIDRs this identity may connect from; empty means anywhere (see coordinator/auth.py).
    allowed_networks: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Limits an admin set for this identity ({name: value}); the others are the
    # defaults (coordinator/quotas.py). None: none set.
    quotas: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    # For a worker identity: what an admin grants it (coordinator/grants.py); None: none.
    worker_grant: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "role": self.role,
            "created_at": self.created_at.isoformat(),
            "allowed_networks": list(self.allowed_networks or []),
        }


class Nonce(db.Model):  # type: ignore[name-defined]
    """Nonces seen inside the signing window; the primary key rejects a replay."""

    __tablename__ = "nonces"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Worker(db.Model):  # type: ignore[name-defined]
    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="online")
    slots: Mapped[int] = mapped_column(Integer, default=1)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The full probe report (raw -version/-encoders/... outputs, a few hundred KB) is a
    # row of its own (revision 0007): kept inside this row, SQLite walked its overflow
    # pages to reach every column stored after it, for every poll and every listing.
    report: Mapped[WorkerReport | None] = relationship(
        cascade="all, delete-orphan", lazy="select", uselist=False
    )
    # {binary: {"encoders": [...], ...}} or {binary: None} when not probed; what the
    # scheduler matches jobs against (names only, tens of KB).
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path_variables: Mapped[list[str]] = mapped_column(JSON, default=list)
    version: Mapped[str] = mapped_column(String(32), default="")
    hostname: Mapped[str] = mapped_column(String(255), default="")
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now_utc)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now_utc)
    lease_expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Set by an operator: the worker keeps its running jobs but is given no new ones.
    # Separate from ``state`` so that it survives the worker restarting and registering.
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    # Whether the worker runs its jobs confined (worker key ``sandbox``). A worker that
    # does not say is taken to be unconfined: operators must see it, not assume safety.
    sandboxed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # From its identity's grant (coordinator/grants.py), copied at registration and when
    # an admin changes it: whose jobs it may run (None: anybody's) and whether its
    # captured probe outputs may be served to drop-ins.
    allowed_clients: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    probe_trusted: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # What an operator reads about the worker, small enough for every console refresh
    # (revision 0007): per binary its path, version and hardware checks; its mounts,
    # operating system, and the slots and labels its own config asked for.
    info: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The latest load sample from its heartbeat, with the coordinator's time ``at``.
    load: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Slots and labels an admin set live ({"slots": 2, "labels": [...]}); they win over
    # the worker's config, also when it registers again, until cleared.
    overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    @property
    def binaries(self) -> dict[str, Any]:
        """The probe report (one more query: only the details and fast probes read it)."""
        return dict(self.report.binaries) if self.report is not None else {}

    @binaries.setter
    def binaries(self, value: dict[str, Any]) -> None:
        if self.report is None:
            self.report = WorkerReport(worker_id=self.worker_id, binaries=value)
        else:
            self.report.binaries = value

    def to_dict(self) -> dict[str, Any]:
        info = self.info or {}
        return {
            "worker_id": self.worker_id,
            "state": self.state,
            "drained": bool(self.drained),
            "sandboxed": bool(self.sandboxed),
            "allowed_clients": self.allowed_clients,
            "probe_trusted": bool(self.probe_trusted),
            "slots": self.slots,
            "labels": self.labels,
            "binaries": sorted(info.get("binaries") or self.capabilities),
            "path_variables": self.path_variables,
            "version": self.version,
            "hostname": self.hostname,
            "registered_at": self.registered_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
            "lease_expires_at": self.lease_expires_at.isoformat(),
            "load": self.load,
            "overrides": self.overrides or {},
        }


class WorkerReport(db.Model):  # type: ignore[name-defined]
    """A worker's probe report, as registered: per binary its path, version, the raw
    outputs of each probe (replayed to the drop-in) and the hardware checks."""

    __tablename__ = "worker_reports"

    worker_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("workers.worker_id", ondelete="CASCADE"), primary_key=True
    )
    binaries: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Job(db.Model):  # type: ignore[name-defined]
    __tablename__ = "jobs"
    __table_args__ = (
        # The claim query: pending jobs by priority, oldest first.
        Index("ix_jobs_state_priority_created", "state", "priority", "created_at"),
        Index("ix_jobs_worker_state", "worker_id", "state"),
        # Job listings, newest first: a page is read from this index, not sorted.
        Index("ix_jobs_created_id", "created_at", "id"),
        # One requester's job list, newest first; the janitor's search for abandoned
        # monitored jobs (revision 0002).
        Index("ix_jobs_requester_created", "requester", "created_at", "id"),
        Index("ix_jobs_state_client_lease", "state", "client_lease_expires_at"),
        # The scheduler's "served longest ago": one lookup per requester (revision 0003).
        Index("ix_jobs_requester_started", "requester", "started_at"),
        # GET /metrics counts jobs by state and binary from this index alone (0006).
        Index("ix_jobs_state_binary", "state", "binary"),
        # A submit sent again with the same key finds its job (0007).
        Index("ix_jobs_requester_idempotency", "requester", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    requester: Mapped[str] = mapped_column(String(64), index=True)
    binary: Mapped[str] = mapped_column(String(32))
    args: Mapped[list[str]] = mapped_column(JSON)
    cwd: Mapped[str | None] = mapped_column(Text, nullable=True)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    path_variables: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The requester's own roots, so the worker can show it its paths in messages.
    client_paths: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    mode: Mapped[str] = mapped_column(String(16), default="active")
    priority: Mapped[int] = mapped_column(Integer, default=0)
    # What the job needs from a worker ({"encoders": [...], ...}, derived from args).
    needs: Mapped[dict[str, list[str]]] = mapped_column(JSON, default=dict)
    required_labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    preferred_labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Absolute deadline for leaving ``pending``; None waits forever.
    queue_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Queue even when no online worker can run the job now (else it fails at once).
    wait_for_worker: Mapped[bool] = mapped_column(Boolean, default=False)
    # Only this worker may run the job: set by ``dffmpeg-client doctor``'s round trips
    # (POST /api/v1/doctor/probe), never by a plain submit (revision 0006).
    pinned_worker: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    failure: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now_utc)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now_utc)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    client_lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The latest ffmpeg progress seen in the job's stderr (coordinator/progress.py).
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Bytes of stdin stored for the job so far (the ``max_stdin_bytes`` limit); the
    # requester is the only writer of a job's input, so no update is lost.
    stdin_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The file names of the first input and the last output, read from the arguments
    # at submission (coordinator/arguments.py), for listing and searching (revision 0007).
    input_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    output_name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The requester's key for this submission (client/submit.py); a submit sent again
    # with it answers with this job (revision 0009).
    idempotency_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # ``retry_on_worker_loss``: how many more times the job may be queued again when its
    # worker is lost before any of its output reached the requester; ``attempt`` counts
    # the runs; ``output_seen`` is set once output was handed to the requester, which
    # rules out another run (coordinator/retries.py).
    retries_left: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    output_seen: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "requester": self.requester,
            "binary": self.binary,
            "args": self.args,
            "cwd": self.cwd,
            "mode": self.mode,
            "priority": self.priority,
            "needs": self.needs,
            "required_labels": self.required_labels,
            "preferred_labels": self.preferred_labels,
            "queue_deadline": self.queue_deadline.isoformat() if self.queue_deadline else None,
            "wait_for_worker": self.wait_for_worker,
            "pinned_worker": self.pinned_worker,
            "state": self.state,
            "worker_id": self.worker_id,
            "exit_code": self.exit_code,
            "failure": self.failure,
            "reason": self.reason,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "progress": self.progress,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "attempt": self.attempt,
        }


class JobEvent(db.Model):  # type: ignore[name-defined]
    """One row per state transition: when, from what, to what, and why."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=now_utc)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
        }


class OutputChunk(db.Model):  # type: ignore[name-defined]
    """stdout/stderr bytes of a job; ``seq`` is assigned by the worker, the only writer."""

    __tablename__ = "output_chunks"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[int] = mapped_column(SmallInteger)
    data: Mapped[bytes] = mapped_column(CHUNK_TYPE)


class InputChunk(db.Model):  # type: ignore[name-defined]
    """stdin bytes, EOF and signals for a job; ``seq`` is assigned by the client."""

    __tablename__ = "input_chunks"

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[int] = mapped_column(SmallInteger)
    data: Mapped[bytes] = mapped_column(CHUNK_TYPE)


class ServingState(db.Model):  # type: ignore[name-defined]
    """When each coordinator instance last could not serve everyone (coordinator/serving.py).

    One row per instance, written only by that instance; the janitors of every instance
    read the latest ``impaired_at`` before they judge anybody's lease.
    """

    __tablename__ = "serving_state"

    instance: Mapped[str] = mapped_column(String(64), primary_key=True)
    impaired_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    reason: Mapped[str] = mapped_column(String(64))


class DropinReport(db.Model):  # type: ignore[name-defined]
    """What a client's drop-ins recorded and reported later (client/incidents.py).

    One row per reported group: drop-in runs of one kind (``local_fallback`` or
    ``cluster_exit``), exit code and binary within one hour, ``count`` of them between
    ``first_at`` and ``last_at``. ``(client_id, batch, position)`` is unique, so a batch
    sent again (its answer was lost) is recognised and counted once.
    """

    __tablename__ = "dropin_reports"
    __table_args__ = (
        Index("ix_dropin_reports_batch", "client_id", "batch", "position", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[str] = mapped_column(String(64))
    batch: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    code: Mapped[int] = mapped_column(SmallInteger)
    binary: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(Integer)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # "In the last day" and the retention purge read this index.
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=now_utc)


class ClusterSample(db.Model):  # type: ignore[name-defined]
    """One minute of the cluster, written once by the first janitor to get there.

    ``finished``/``failed`` count the jobs that ended within the minute (failed: state
    failed, or completed with a non-zero exit code); ``pending``/``running`` are the
    queue and the jobs running when it was sampled, just after the minute ended.
    """

    __tablename__ = "cluster_samples"

    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    running: Mapped[int] = mapped_column(Integer, default=0)
    finished: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
