"""Turning a local command line into a job and running it; shared by the drop-in and CLI."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from client import incidents, reporting
from client.api import Api
from client.downlink import open_downlink
from client.job import (
    ClusterFailure,
    JobSession,
    die_like_remote,
    explain,
    report,
    stdin_at_eof,
)
from dffmpeg.config import DEFAULT_OUTAGE_GRACE_SECONDS, ClientConfig
from dffmpeg.exitcodes import ExitCode
from dffmpeg.paths import map_args, to_variables


@dataclass
class JobRequest:
    binary: str
    args: list[str]
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    mode: str = "active"
    priority: int = 0
    client_paths: dict[str, str] = field(default_factory=dict)
    required_labels: list[str] = field(default_factory=list)
    preferred_labels: list[str] = field(default_factory=list)
    queue_timeout: float | None = None
    wait_for_worker: bool = False
    retry_on_worker_loss: int = 0
    # The caller's stdin is empty (/dev/null): its EOF rides in the submission.
    stdin_eof: bool = False
    # One per submission, so that sending it again (its answer was lost, or the
    # coordinator restarted under it) finds the job instead of making a second one.
    idempotency_key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.idempotency_key,
            "retry_on_worker_loss": self.retry_on_worker_loss,
            "required_labels": self.required_labels,
            "preferred_labels": self.preferred_labels,
            "queue_timeout": self.queue_timeout,
            "wait_for_worker": self.wait_for_worker,
            "binary": self.binary,
            "args": self.args,
            "cwd": self.cwd,
            "env": self.env,
            "mode": self.mode,
            "priority": self.priority,
            "client_paths": self.client_paths,
            "stdin_eof": self.stdin_eof,
        }


def build_request(
    config: ClientConfig, binary: str, argv: Sequence[str], cwd: str | None = None
) -> JobRequest:
    """Map local roots to ``$Variable`` paths in the arguments and working directory."""
    cwd = cwd if cwd is not None else current_directory()
    mapped_cwd = to_variables(cwd, config.paths)
    return JobRequest(
        binary=binary,
        args=map_args(argv, config.paths),
        # A working directory outside every mapped root means nothing on a worker.
        cwd=mapped_cwd if mapped_cwd != cwd else None,
        env=forwarded_env(config.forward_env),
        client_paths=dict(config.paths),
        priority=config.priority,
        required_labels=list(config.require_labels),
        preferred_labels=list(config.prefer_labels),
        queue_timeout=config.queue_timeout,
        wait_for_worker=config.wait_for_worker,
        retry_on_worker_loss=config.retry_on_worker_loss,
    )


def forwarded_env(names: Sequence[str]) -> dict[str, str]:
    """The allow-listed variables (client key ``forward_env``) that are set here."""
    return {name: value for name in names if (value := os.environ.get(name)) is not None}


def current_directory() -> str:
    """The working directory as the caller named it: ``$PWD`` keeps symlinked roots."""
    real = os.getcwd()
    logical = os.environ.get("PWD")
    if logical and os.path.isabs(logical):
        try:
            if os.path.samefile(logical, real):
                return logical
        except OSError:
            pass
    return real


@dataclass
class Submitted:
    job_id: str
    # How long the coordinator lets parties keep trying while it is away.
    grace: float = DEFAULT_OUTAGE_GRACE_SECONDS
    # The coordinator stored the input's EOF with the job (the request asked it to; a
    # coordinator that does not know the field leaves it to the input relay).
    stdin_eof: bool = False


def submit(api: Api, request: JobRequest, retry_for: float = 0.0) -> str:
    return submit_job(api, request, retry_for).job_id


def submit_job(api: Api, request: JobRequest, retry_for: float = 0.0) -> Submitted:
    """Submit ``request``, sending it again for ``retry_for`` seconds while the
    coordinator cannot be reached or its database is unavailable (the idempotency key
    makes every attempt the same submission)."""
    reply = api.call("POST", "/jobs", json_body=request.to_json(), retry_for=retry_for)
    grace = reply.get("outage_grace_seconds")
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace > 0:
        grace = DEFAULT_OUTAGE_GRACE_SECONDS
    return Submitted(str(reply["job"]["job_id"]), float(grace), reply.get("stdin_eof") is True)


def run(
    api: Api,
    request: JobRequest,
    stdin_fd: int | None = 0,
    fallback: Callable[[str], int] | None = None,
    config: ClientConfig | None = None,
    connect_retry: float | None = None,
) -> int:
    """Submit ``request``, relay its streams and signals, return the exit code to use.

    ``fallback(reason)`` runs the command some other way (the local binary) when the
    cluster failed before the caller saw anything of the job: no output written and no
    stdin consumed, so running it again elsewhere is indistinguishable from a first run.
    With ``config`` its ``transports`` are negotiated for following the job, and a
    fallback or a cluster exit code is recorded in its state directory; what earlier
    runs recorded is reported once the submission got through (client/incidents.py).
    The submission waits ``connect_retry`` seconds (default: the config's
    ``connect_retry_seconds``) for a coordinator that cannot be reached.
    """
    directory = incidents.directory_of(config) if config is not None else None
    reporter = reporting.Reporter(api, directory) if directory is not None else None

    def record(kind: str, code: int) -> None:
        if directory is not None:
            incidents.record(directory, kind, code, request.binary)

    try:
        return _run(api, request, stdin_fd, fallback, config, record, reporter, connect_retry)
    finally:
        if reporter is not None:
            reporter.finish()


def _run(
    api: Api,
    request: JobRequest,
    stdin_fd: int | None,
    fallback: Callable[[str], int] | None,
    config: ClientConfig | None,
    record: Callable[[str, int], None],
    reporter: reporting.Reporter | None,
    connect_retry: float | None,
) -> int:
    session: JobSession | None = None
    try:
        # A coordinator that restarts is waited for, a moment (connect_retry_seconds),
        # before the local binary runs instead (or the cluster failure is reported).
        wait = config.connect_retry_seconds if config is not None else 0.0
        if stdin_fd is not None and stdin_at_eof(stdin_fd):
            request = replace(request, stdin_eof=True)
        submitted = submit_job(
            api, request, retry_for=wait if connect_retry is None else connect_retry
        )
        if reporter is not None:
            reporter.start_if_pending()  # we reached the coordinator: tell it the past
        downlink = open_downlink(api, config, "client") if config is not None else None
        session = JobSession(api, submitted.job_id, downlink=downlink, grace=submitted.grace)
        session.forward_signals()
        if submitted.stdin_eof:
            session.relay_input(None, sent=1)  # frame 1, the EOF, went with the job
        else:
            session.relay_input(stdin_fd)
        outcome = session.follow()
    except Exception as exc:  # every failure becomes one line and a documented code
        failure: ClusterFailure = explain(exc)
        if fallback is not None and (session is None or session.untouched):
            record(incidents.LOCAL_FALLBACK, int(failure.code))
            return fallback(failure.message)
        record(incidents.CLUSTER_EXIT, int(failure.code))
        report(failure.message)
        return int(failure.code)
    if session.stopping_signal is not None:
        die_like_remote(session, outcome.exit_code)  # we canceled it: no message
    if outcome.message:
        canceled = outcome.exit_code == ExitCode.CANCELED_BY_CLUSTER  # someone meant it
        if fallback is not None and session.untouched and not canceled:
            record(incidents.LOCAL_FALLBACK, outcome.exit_code)
            return fallback(outcome.message)
        record(incidents.CLUSTER_EXIT, outcome.exit_code)
        report(outcome.message)
    die_like_remote(session, outcome.exit_code)
    return outcome.exit_code
