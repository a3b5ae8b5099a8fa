"""Turning a local command line into a job and running it; shared by the drop-in and CLI."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from client import incidents, reporting
from client.api import Api, ApiError, Unreachable
from client.downlink import open_downlink
from client.early_stdin import EarlyStdin, put_back, take_ready
from client.job import (
    ClusterFailure,
    Interrupted,
    JobSession,
    SubmitSignals,
    die_like_remote,
    die_of,
    explain,
    report,
)
from dffmpeg.config import DEFAULT_OUTAGE_GRACE_SECONDS, ClientConfig
from dffmpeg.exitcodes import ExitCode
from dffmpeg.paths import map_args, to_variables
from dffmpeg.wire import Frame, FrameKind, decode_frames

# How long a submission waits for the job's first output (``JobRequest.wait_output``):
# a short job's output and end come with the answer, a request fewer; longer, and a
# signal or input that comes meanwhile would wait for it (``SubmitSignals``).
SUBMIT_WAIT_SECONDS = 0.5


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
    # One per submission, so that sending it again (its answer was lost, or the
    # coordinator restarted under it) finds the job instead of making a second one.
    # (Random hex as uuid4 would give, without importing uuid: it costs every call 1.5 ms.)
    idempotency_key: str = field(default_factory=lambda: os.urandom(16).hex())
    # What the caller's stdin held already (client/early_stdin.py).
    stdin: EarlyStdin = field(default_factory=EarlyStdin)
    # The submission waits this long for the job's first output (and, for a short job,
    # its end), which its answer then carries; None: it answers at once.
    wait_output: float | None = None

    def to_json(self) -> dict[str, Any]:
        early: dict[str, Any] = {}
        if self.stdin.data:
            early["stdin"] = base64.b64encode(self.stdin.data).decode()
        if self.stdin.eof:
            early["stdin_eof"] = True
        if self.wait_output is not None:
            early["wait_output"] = self.wait_output
        return {
            **early,
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
    # Input frames the coordinator stored with the job (the stdin sent with it).
    stdin_frames: int = 0
    # The first read of its output, when the submission waited for it (``wait_output``).
    output: list[Frame] | None = None


def submit(api: Api, request: JobRequest, retry_for: float = 0.0) -> str:
    return submit_job(api, request, retry_for).job_id


def submit_job(
    api: Api,
    request: JobRequest,
    retry_for: float = 0.0,
    lost_answer_grace: float = DEFAULT_OUTAGE_GRACE_SECONDS,
) -> Submitted:
    """Submit ``request``, sending it again for ``retry_for`` seconds while the
    coordinator cannot be reached or its database is unavailable (the idempotency key
    makes every attempt the same submission).

    An attempt whose answer was lost may have made the job, and a submission waits
    for the job's first output (``wait_output``), so the coordinator going away in that
    moment is an outage in the middle of a job: the attempts go on for
    ``lost_answer_grace`` seconds, the outage grace a job under way is given."""
    reply = api.call(
        "POST",
        "/jobs",
        json_body=request.to_json(),
        retry_for=retry_for,
        lost_answer_grace=lost_answer_grace,
    )
    grace = reply.get("outage_grace_seconds")
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace > 0:
        grace = DEFAULT_OUTAGE_GRACE_SECONDS
    stored = reply.get("stdin_frames")
    stored = stored if isinstance(stored, int) and not isinstance(stored, bool) else 0
    output = reply.get("output")
    frames = list(decode_frames(base64.b64decode(output))) if isinstance(output, str) else None
    return Submitted(str(reply["job"]["job_id"]), float(grace), stored, frames)


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


def _found_or_die(api: Api, request: JobRequest, signum: int) -> Submitted:
    """The job of a submission a signal broke off: sent again without waiting (the
    idempotency key finds the job if the first attempt made it; else this makes it, and
    the signal, passed on, cancels it). A coordinator that cannot be reached now has
    nothing of ours running: die of the signal, as a local ffmpeg would."""
    request.wait_output = None
    try:
        return submit_job(api, request, retry_for=0.0, lost_answer_grace=0.0)
    except (ApiError, Unreachable):
        die_of(signum)
        raise


def _putting_back(
    fallback: Callable[[str], int], early: EarlyStdin, fd: int
) -> Callable[[str], int]:
    def run_elsewhere(reason: str) -> int:
        put_back(early, fd)  # the local binary reads what we took, then the rest
        return fallback(reason)

    return run_elsewhere


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
    request.stdin = take_ready(stdin_fd)
    if fallback is not None and stdin_fd is not None and request.stdin.data:
        fallback = _putting_back(fallback, request.stdin, stdin_fd)
    try:
        # A coordinator that restarts is waited for, a moment (connect_retry_seconds),
        # before the local binary runs instead (or the cluster failure is reported).
        wait = config.connect_retry_seconds if config is not None else 0.0
        request.wait_output = SUBMIT_WAIT_SECONDS
        received: list[int] = []
        try:
            with SubmitSignals():
                submitted = submit_job(
                    api, request, retry_for=wait if connect_retry is None else connect_retry
                )
        except Interrupted as stop:
            received.append(stop.signum)
            submitted = _found_or_die(api, request, stop.signum)
        if reporter is not None:
            reporter.start_if_pending()  # we reached the coordinator: tell it the past
        over = submitted.output is not None and any(
            f.kind == FrameKind.STATUS for f in submitted.output
        )
        # A job over already needs no notifications (a broker connection costs a call
        # about 20 ms of CPU).
        downlink = open_downlink(api, config, "client") if config is not None and not over else None
        session = JobSession(api, submitted.job_id, downlink=downlink, grace=submitted.grace)
        session.forward_signals(received)
        early = request.stdin
        if submitted.stdin_frames != early.frames:
            early = EarlyStdin()  # not stored (an older coordinator): sent as usual
            session.relay.resend(request.stdin)
        session.relay_input(None if request.stdin.eof else stdin_fd, early)
        outcome = session.follow(submitted.output)
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
