"""Running one job from the caller's side: stream its output, feed its stdin, relay signals.

The output loop writes stdout and stderr bytes to file descriptors 1 and 2 as they
arrive, unbuffered and undecoded. stdin is read raw and relayed as it comes, so a
media server's ``q`` reaches ffmpeg at once.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from client.api import AnswerRefused, Api, ApiError, AuthError, Unreachable
from client.early_stdin import EarlyStdin
from dffmpeg.config import DEFAULT_OUTAGE_GRACE_SECONDS
from dffmpeg.exitcodes import ExitCode
from dffmpeg.text import printable

if TYPE_CHECKING:  # the transport machinery loads only when a transport is configured
    from dffmpeg.transport.session import Downlink
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, decode_frames, encode_frames

# The output long-poll is short enough that a dead client's lease runs out soon after
# (the coordinator extends the lease when a poll arrives, not while it waits).
OUTPUT_WAIT_SECONDS = 5.0
# How long to keep trying when the coordinator goes away in the middle of a job, until
# the coordinator said how long it allows (its ``outage_grace_seconds``).
RECONNECT_SECONDS = DEFAULT_OUTAGE_GRACE_SECONDS
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# At most this many 64 KiB stdin chunks wait to be sent, and one request carries at most
# MAX_INPUT_BATCH bytes.
STDIN_CHUNKS_IN_FLIGHT = 64
MAX_INPUT_BATCH = 1024 * 1024

FAILURE_CODES = {
    "worker_lost": ExitCode.WORKER_LOST,
    "start_failed": ExitCode.JOB_REJECTED,
    "no_capable_worker": ExitCode.NO_CAPABLE_WORKER,
    "queue_timeout": ExitCode.NO_CAPABLE_WORKER,
    "canceled": ExitCode.CANCELED_BY_CLUSTER,
}


class ClusterFailure(Exception):
    """The cluster could not run the job; ``code`` is the documented exit code."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def explain(exc: Exception) -> ClusterFailure:
    """Translate an API exception into the failure the caller is shown."""
    if isinstance(exc, ClusterFailure):
        return exc
    if isinstance(exc, Unreachable):
        return ClusterFailure(ExitCode.COORDINATOR_UNREACHABLE, f"coordinator unreachable: {exc}")
    if isinstance(exc, ApiError) and exc.status == 503:
        # Reachable, but unable to serve (its database is away, its volume full...):
        # for the caller the same as unreachable, with the coordinator's own words.
        return ClusterFailure(
            ExitCode.COORDINATOR_UNREACHABLE, f"coordinator unavailable: {exc.message}"
        )
    if isinstance(exc, AnswerRefused):
        return ClusterFailure(ExitCode.PROTOCOL_ERROR, f"coordinator {exc.message}")
    if isinstance(exc, AuthError):
        return ClusterFailure(ExitCode.AUTH_REFUSED, f"coordinator refused us: {exc.message}")
    if isinstance(exc, ApiError):
        return ClusterFailure(ExitCode.JOB_REJECTED, f"job rejected: {exc.message}")
    return ClusterFailure(ExitCode.PROTOCOL_ERROR, f"unexpected error: {exc}")


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


@dataclass
class Outcome:
    exit_code: int
    message: str | None = None  # one line for stderr when the cluster itself failed


def outcome_of(status: dict[str, Any]) -> Outcome:
    state = status.get("state")
    exit_code = status.get("exit_code")
    if state == "completed" and isinstance(exit_code, int):
        return Outcome(exit_code)
    failure = str(status.get("failure") or "")
    code = FAILURE_CODES.get(failure, ExitCode.PROTOCOL_ERROR)
    reason = status.get("reason") or state
    return Outcome(int(code), f"job {state}: {reason}")


class InputRelay:
    """Sends stdin bytes, EOF and signals to the job, in order, from one thread."""

    def __init__(self, api: Api, job_id: str, grace: float = RECONNECT_SECONDS) -> None:
        self.api = api
        self.job_id = job_id
        self.grace = grace
        self._queue: queue.SimpleQueue[tuple[FrameKind, bytes] | None] = queue.SimpleQueue()
        self._seq = 0
        self.stdin_bytes = 0  # read from our stdin so far (and so lost to a local rerun)
        # stdin chunks read but not yet sent: a fast pipe (``-i pipe:0``) waits for the
        # network instead of filling memory. Signals and EOF never wait.
        self._room = threading.Semaphore(STDIN_CHUNKS_IN_FLIGHT)
        self._thread = threading.Thread(target=self._send_loop, name="input", daemon=True)

    def skip(self, frames: int) -> None:
        """The first ``frames`` input frames were sent another way (with the submit)."""
        self._seq += frames

    def resend(self, early: EarlyStdin) -> None:
        """Send what was read early as the first input frames after all."""
        if early.data:  # not counted in stdin_bytes: a local rerun gets them back
            self._room.acquire()
            self.put(FrameKind.STDIN, early.data)
        if early.eof:
            self.put(FrameKind.STDIN_EOF)

    def start(self, stdin_fd: int | None) -> None:
        self._thread.start()
        if stdin_fd is not None:
            threading.Thread(
                target=self._read_stdin, args=(stdin_fd,), name="stdin", daemon=True
            ).start()

    def put(self, kind: FrameKind, data: bytes = b"") -> None:
        self._queue.put((kind, data))

    def close(self) -> None:
        self._queue.put(None)

    def _read_stdin(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                self.put(FrameKind.STDIN_EOF)
                return
            self.stdin_bytes += len(data)
            self._room.acquire()
            self.put(FrameKind.STDIN, data)

    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            size = len(item[1])
            # Coalesce what is already waiting: fewer requests, same order.
            while size < MAX_INPUT_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
                size += len(more[1])
            frames = []
            for kind, data in batch:
                self._seq += 1
                frames.append(Frame(kind, self._seq, data))
            try:
                self.api.request(
                    "POST",
                    f"/jobs/{self.job_id}/input",
                    body=encode_frames(frames),
                    content_type=CONTENT_TYPE_FRAMES,
                    retry_for=self.grace,
                )
            except ApiError as exc:
                if exc.status == 409:
                    self._open_the_gate()
                    return  # the job is over; nothing more to feed it
                raise
            for kind, _ in batch:
                if kind == FrameKind.STDIN:
                    self._room.release()

    def _open_the_gate(self) -> None:
        # The reader must never stay blocked once nothing is sent any more.
        for _ in range(STDIN_CHUNKS_IN_FLIGHT):
            self._room.release()


class JobSession:
    """Follows one submitted job until it ends and returns the caller's exit code."""

    def __init__(
        self,
        api: Api,
        job_id: str,
        stdout_fd: int = 1,
        stderr_fd: int = 2,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        downlink: Downlink | None = None,
        grace: float = RECONNECT_SECONDS,
    ) -> None:
        self.api = api
        # How long every request keeps trying while the coordinator is away.
        self.grace = grace
        # Notifications from the negotiated transport; None: plain HTTP long-poll.
        self.downlink = downlink
        self.job_id = job_id
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        self.after = 0
        self.on_status = on_status
        self.relay = InputRelay(api, job_id, grace)
        self.signals_received: list[int] = []
        self.stopping_signal: int | None = None
        self._stdout_broken = False

    @property
    def untouched(self) -> bool:
        """Nothing of the job reached the caller, nothing of the caller's stdin left, and
        the caller did not signal us: running the command elsewhere is a clean first run."""
        return self.after == 0 and self.relay.stdin_bytes == 0 and not self.signals_received

    def relay_input(self, stdin_fd: int | None, sent: EarlyStdin | None = None) -> None:
        """Relay ``stdin_fd``; ``sent``: what of it went with the submission already
        (input frames 1 and, if it ended, 2)."""
        if sent is not None:
            self.relay.skip(sent.frames)
        self.relay.start(stdin_fd)

    def forward_signals(self, received: Sequence[int] = ()) -> None:
        """SIGINT/SIGTERM/SIGHUP are sent on to the remote process, as a terminal would.
        ``received``: signals that came before there was a session (``SubmitSignals``)."""

        def handler(signum: int, _frame: Any) -> None:
            self.pass_on(signum)

        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, handler)
        for signum in received:
            self.pass_on(signum)

    def pass_on(self, signum: int) -> None:
        self.signals_received.append(signum)
        self.relay.put(FrameKind.SIGNAL, str(signum).encode())
        threading.Thread(
            target=self._stop_if_unstarted, args=(signum,), name="stop", daemon=True
        ).start()

    def _stop_if_unstarted(self, signum: int) -> None:
        """A job still waiting for a worker has no process to pass the signal to: cancel it,
        and the main thread, seeing it canceled, dies of the signal (``die_like_remote``),
        as a local ffmpeg would have at once. (Only the main thread may reset handlers.)"""
        try:
            state = self.api.call("GET", f"/jobs/{self.job_id}", timeout=5)["job"]["state"]
            if state not in ("pending", "assigned"):
                return
            self.stopping_signal = signum
            self.api.request("POST", f"/jobs/{self.job_id}/cancel", timeout=5)
        except (ApiError, Unreachable, KeyError, TypeError):
            self.stopping_signal = None

    def _write(self, frame: Frame) -> None:
        if frame.kind == FrameKind.STDERR:
            write_all(self.stderr_fd, frame.data)
            return
        if self._stdout_broken:
            return
        try:
            write_all(self.stdout_fd, frame.data)
        except BrokenPipeError:
            # The reader went away, as it would for a local ffmpeg: stop the process.
            self._stdout_broken = True
            self.relay.put(FrameKind.SIGNAL, str(int(signal.SIGPIPE)).encode())

    def take(self, frames: list[Frame]) -> Outcome | None:
        """Write ``frames`` (read by seq); the outcome once the final status is among them."""
        for frame in frames:
            if frame.kind == FrameKind.STATUS:
                status = json.loads(frame.data)
                if self.on_status:
                    self.on_status(status)
                self.relay.close()
                return outcome_of(status)
            self._write(frame)
            self.after = frame.seq
        return None

    def follow(self, first: list[Frame] | None = None) -> Outcome:
        """Read output by seq until the final status. ``first``: what the submission's
        answer carried already (the first read, ``wait_output``).

        With a broker or stream transport the read does not wait on the coordinator;
        the session sleeps until the transport says there is news (or
        ``OUTPUT_WAIT_SECONDS`` pass, which also renews the job's client lease). The
        flag is armed before each read, so news arriving during a read is not missed.
        """
        if first:
            done = self.take(first)
            if done is not None:
                return done
        key = f"output:{self.job_id}"
        downlink = self.downlink
        if downlink is not None:
            downlink.watch(key)
        try:
            while True:
                long_poll = downlink is None or downlink.long_poll
                if downlink is not None and not long_poll:
                    downlink.arm(key)
                response = self.api.request(
                    "GET",
                    f"/jobs/{self.job_id}/output",
                    params={"after": self.after, "wait": OUTPUT_WAIT_SECONDS if long_poll else 0},
                    timeout=OUTPUT_WAIT_SECONDS + 30,
                    retry_for=self.grace,
                )
                frames = list(decode_frames(response.body))
                done = self.take(frames)
                if done is not None:
                    return done
                got = bool(frames)
                if downlink is not None and not long_poll and not got:
                    downlink.wait(key, OUTPUT_WAIT_SECONDS)
                elif not got and "retry-after" in response.headers:
                    # Answered at once instead of held (the coordinator's share of held
                    # requests is taken): read again in a moment, not at once.
                    time.sleep(retry_after(response.headers["retry-after"]))
        finally:
            if downlink is not None:
                downlink.close()


def retry_after(value: str) -> float:
    """A ``Retry-After`` in seconds, kept between 0.1 and 5."""
    try:
        seconds = float(value)
    except ValueError:
        return 1.0
    return min(max(seconds, 0.1), 5.0) if seconds == seconds else 1.0


class Interrupted(BaseException):
    """A forwarded signal came while the submission was on its way (``SubmitSignals``).
    A BaseException: nothing on the way may take it for a failure of its own."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SubmitSignals:
    """While a submission is on its way there is no job id to pass a signal on to, and
    the submission may wait on the coordinator a while (``wait_output``, or a coordinator
    that cannot be reached yet): a forwarded signal then breaks it off (``Interrupted``),
    and the caller finds or makes the job and passes the signal on. The handlers in
    place before come back when the block ends."""

    def __enter__(self) -> SubmitSignals:
        self._before = {sig: signal.getsignal(sig) for sig in FORWARDED_SIGNALS}
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._interrupt)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    @staticmethod
    def _interrupt(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)


def die_like_remote(session: JobSession, exit_code: int) -> None:
    """Die by signal N when we passed N on and the remote process died of it (128+N).

    A local ffmpeg killed by SIGHUP is seen by its parent as killed by SIGHUP, not as
    exiting with 129; dying the same way keeps even that difference away from the caller.
    """
    if session.stopping_signal is not None:
        die_of(session.stopping_signal)
    for signum in session.signals_received:
        if exit_code == 128 + signum:
            die_of(signum)


def die_of(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1)  # the signal is delivered before this returns


def report(message: str) -> None:
    """The one ``dffmpeg: ...`` line the caller sees when the cluster itself failed.

    The message may carry another party's text (a worker's error, a job's reason):
    its control characters are shown, never obeyed.
    """
    try:
        sys.stderr.buffer.write(f"dffmpeg: {printable(message)}\n".encode(errors="replace"))
        sys.stderr.flush()
    except OSError:
        pass
