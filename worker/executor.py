"""Running one assigned job: map its paths, start the binary without a shell, relay its
streams, feed its stdin, deliver signals and cancellation, report its exit code."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from typing import Any

from client.api import Api, ApiError, Unreachable
from dffmpeg.exitcodes import from_returncode
from dffmpeg.paths import (
    StreamRewriter,
    from_variables,
    output_rewriter,
    unmap_args,
    unmapped_paths,
)
from dffmpeg.wire import (
    CONTENT_TYPE_FRAMES,
    Frame,
    FrameError,
    FrameKind,
    decode_frames,
    encode_frames,
)
from worker.process import die_with_parent, stop_group
from worker.relay import FrameSender, OutputBuffer, read_pipe

log = logging.getLogger(__name__)

INPUT_WAIT_SECONDS = 20.0
# The input long-poll (stdin, signals) opens this long after the process started. Most
# jobs (every ffprobe, every short batch job) end before that and never cost the
# coordinator a held request; input sent meanwhile waits in the database and arrives
# with the first read, at most this much later.
INPUT_DELAY_SECONDS = 0.2
RETRY_SECONDS = 60.0
CANCEL_GRACE_SECONDS = 5.0
# Variables every process needs to find its libraries and write temporary files.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "LD_LIBRARY_PATH")


def _status_state(data: bytes) -> str | None:
    """The ``state`` of a status frame; None when it is not a JSON object with one."""
    try:
        status = json.loads(data)
    except ValueError:
        return None
    state = status.get("state") if isinstance(status, dict) else None
    return state if isinstance(state, str) else None


class StartError(Exception):
    """The job cannot be started here; the message goes back to the requester."""


def refuse_unmapped(args: list[str], paths: Mapping[str, str], cwd: str | None) -> None:
    """Refuse a command naming a path outside every mapped root (and its working dir).

    Without this, any client could make the worker read or overwrite any file its user
    can reach (``-i /etc/shadow``, ``-y /home/worker/.ssh/authorized_keys``).
    """
    outside = unmapped_paths(args, paths, cwd)
    if outside:
        shown = ", ".join(sorted(set(outside))[:3])
        raise StartError(f"path outside every mapped root refused: {shown}")


# Variables a client may not set for the remote process: they change which code runs
# (loader, interpreter, shell hooks) or where the worker keeps its own files.
_UNSAFE_ENV = re.compile(r"^(LD_|DYLD_|PYTHON|PATH$|HOME$|TMPDIR$|IFS$|SHELL$|ENV$|BASH_)")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def requested_env(env: Mapping[str, str]) -> dict[str, str]:
    """The client's forwarded variables that are safe to set on this worker."""
    return {
        k: v
        for k, v in env.items()
        if _ENV_NAME.match(k) and not _UNSAFE_ENV.match(k) and "\0" not in v
    }


class JobExecution:
    def __init__(
        self,
        api: Api,
        assignment: Mapping[str, Any],
        binaries: Mapping[str, str],
        paths: Mapping[str, str],
        allow_unmapped_paths: bool = False,
    ) -> None:
        self.api = api
        self.allow_unmapped_paths = allow_unmapped_paths
        self.job_id: str = assignment["job_id"]
        self.assignment = assignment
        self.binaries = binaries
        self.paths = paths
        self.process: subprocess.Popen[bytes] | None = None
        self._canceled = threading.Event()
        self._done = threading.Event()  # the process is over
        self._reported = threading.Event()  # ... and the coordinator was told
        self._aborted: str | None = None
        self._stdout_hung_up = threading.Event()
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None

    # -- preparing ---------------------------------------------------------------------

    def command(self, cwd: str | None = None) -> list[str]:
        binary = self.assignment["binary"]
        path = self.binaries.get(binary)
        if path is None:
            raise StartError(f"binary {binary} is not available on this worker")
        args = unmap_args(self.assignment["args"], self.paths)
        if not self.allow_unmapped_paths:
            refuse_unmapped(args, self.paths, cwd)
        return [path, *args]

    def working_directory(self) -> str:
        cwd = self.assignment.get("cwd")
        if cwd:
            local = from_variables(cwd, self.paths)
            if local == cwd or not os.path.isdir(local):
                raise StartError(f"working directory {cwd} is not available on this worker")
            return local
        self._tempdir = tempfile.TemporaryDirectory(prefix=f"dffmpeg-{self.job_id[:8]}-")
        return self._tempdir.name

    def environment(self) -> dict[str, str]:
        env = {k: v for k in BASE_ENV if (v := os.environ.get(k)) is not None}
        env.update(requested_env(self.assignment.get("env") or {}))
        return env

    def rewriter(self, kind: FrameKind) -> StreamRewriter | None:
        """Show the caller its own paths: in stderr always, in stdout for ffprobe only.

        ffmpeg's stdout is often media (``-f mpegts -``) and must stay byte for byte.
        """
        if kind == FrameKind.STDOUT and self.assignment["binary"] != "ffprobe":
            return None
        return output_rewriter(self.paths, self.assignment.get("client_paths") or {})

    # -- running -----------------------------------------------------------------------

    def run(self) -> None:
        """Accept, run and report the job. Never raises."""
        try:
            self.api.request("POST", f"/jobs/{self.job_id}/accept", retry_for=RETRY_SECONDS)
        except (ApiError, Unreachable) as exc:
            log.warning("job %s not accepted: %s", self.job_id, exc)
            self._done.set()
            self._reported.set()
            return
        try:
            self._run_accepted()
        except Exception:
            log.exception("job %s failed in the worker", self.job_id)
        finally:
            self._done.set()
            self._reported.set()
            if self._tempdir is not None:
                self._tempdir.cleanup()

    def _run_accepted(self) -> None:
        try:
            cwd = self.working_directory()
            cmd = self.command(cwd)
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=die_with_parent(),
                bufsize=0,
            )
        except (StartError, OSError) as exc:
            self._finish({"error": f"could not start: {exc}"})
            return
        log.info("job %s started: pid %s", self.job_id, self.process.pid)
        if self._canceled.is_set():  # canceled while it was starting
            threading.Thread(target=self._kill_group, name="cancel", daemon=True).start()
        buffer = OutputBuffer()
        readers = []
        for stream, kind in (
            (self.process.stdout, FrameKind.STDOUT),
            (self.process.stderr, FrameKind.STDERR),
        ):
            assert stream is not None
            fd = os.dup(stream.fileno())
            stream.close()
            buffer.reader_started()
            readers.append(
                threading.Thread(
                    target=read_pipe,
                    args=(fd, kind, buffer, self.rewriter(kind), self._hang_up_for(kind)),
                    name=f"read-{kind.name}",
                    daemon=True,
                )
            )
        for reader in readers:
            reader.start()
        threading.Thread(target=self._feed_input, name="input", daemon=True).start()
        sender = FrameSender(buffer, self._send_output)
        sender.run()  # returns once both pipes reached EOF and everything was sent
        returncode = self.process.wait()
        self._done.set()
        if sender.error is not None:
            log.warning("job %s: output not delivered: %s", self.job_id, sender.error)
        result: dict[str, Any] = {"exit_code": from_returncode(returncode)}
        if self._aborted is not None:
            result["aborted"] = self._aborted
        self._finish(result)

    def _send_output(self, frames: list[Frame]) -> None:
        self.api.request(
            "POST",
            f"/jobs/{self.job_id}/output",
            body=encode_frames(frames),
            content_type=CONTENT_TYPE_FRAMES,
            retry_for=RETRY_SECONDS,
        )

    def _finish(self, result: dict[str, Any]) -> None:
        try:
            self.api.request(
                "POST", f"/jobs/{self.job_id}/finish", json_body=result, retry_for=RETRY_SECONDS
            )
        except (ApiError, Unreachable) as exc:
            log.warning("job %s: finish not recorded: %s", self.job_id, exc)

    # -- input, signals, cancellation ----------------------------------------------------

    def _feed_input(self) -> None:
        process = self.process
        assert process is not None and process.stdin is not None
        try:
            self._relay_input(process.stdin)
        finally:
            # This thread owns the pipe: a long-lived worker must not keep one per job.
            with contextlib.suppress(OSError):
                process.stdin.close()

    def _relay_input(self, stdin: Any) -> None:
        after = 0
        if self._done.wait(INPUT_DELAY_SECONDS):
            return
        while not self._done.is_set():
            try:
                response = self.api.request(
                    "GET",
                    f"/jobs/{self.job_id}/input",
                    params={"after": after, "wait": INPUT_WAIT_SECONDS},
                    timeout=INPUT_WAIT_SECONDS + 30,
                    retry_for=RETRY_SECONDS,
                )
            except ApiError as exc:
                if exc.status == 409:
                    self._stop_if_orphaned()
                return
            except Unreachable:
                return
            try:
                frames = list(decode_frames(response.body))
            except FrameError as exc:
                # Never end this thread over one bad answer: later signals must still
                # arrive. The same read is tried again in a moment.
                log.warning("job %s: malformed input answer ignored: %s", self.job_id, exc)
                self._done.wait(1.0)
                continue
            for frame in frames:
                if frame.kind == FrameKind.STATUS:
                    state = _status_state(frame.data)
                    if state is not None and state != "canceling":
                        self._stop_if_orphaned()
                        return
                    continue
                after = frame.seq
                stdin = self._apply_input(frame, stdin)
            if not frames and "retry-after" in response.headers:
                self._done.wait(1.0)  # answered at once instead of held: not a busy loop

    def _apply_input(self, frame: Frame, stdin: Any) -> Any:
        process = self.process
        assert process is not None
        if frame.kind == FrameKind.STDIN and stdin is not None:
            try:
                stdin.write(frame.data)
                stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                stdin = None
        elif frame.kind == FrameKind.STDIN_EOF and stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()
            stdin = None
        elif frame.kind == FrameKind.SIGNAL:
            signum = frame.data.strip()
            if signum.isdigit() and len(signum) <= 3:
                self.send_signal(int(signum))
            else:
                log.warning("job %s: malformed signal frame ignored", self.job_id)
        return stdin

    def _hang_up_for(self, kind: FrameKind) -> threading.Event | None:
        return self._stdout_hung_up if kind == FrameKind.STDOUT else None

    def send_signal(self, signum: int) -> None:
        """Deliver a signal the caller's drop-in received (or SIGPIPE, see below)."""
        if signum == signal.SIGPIPE:
            # The caller closed our stdout. A local ffmpeg would see its next write fail,
            # not a SIGPIPE out of the blue (it may ignore SIGPIPE and exit cleanly on
            # EPIPE): close the pipe it writes into and let the same thing happen here.
            self._stdout_hung_up.set()
            return
        if signum not in (
            signal.SIGINT,
            signal.SIGTERM,
            signal.SIGHUP,
            signal.SIGPIPE,
            signal.SIGKILL,
        ):
            return
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def cancel(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after a grace period."""
        if self._canceled.is_set():
            return
        self._canceled.set()
        threading.Thread(target=self._kill_group, name="cancel", daemon=True).start()

    def abort(self, reason: str) -> None:
        """Stop the job because the worker is going away; it is reported as lost."""
        self._aborted = reason
        self.cancel()

    def _stop_if_orphaned(self) -> None:
        """The job ended on the coordinator (e.g. declared lost) while it still runs
        here: nobody will read its output, so stop it."""
        process = self.process
        if not self._done.is_set() and process is not None and process.poll() is None:
            log.warning("job %s ended on the coordinator; stopping its process", self.job_id)
            self.cancel()

    def _kill_group(self) -> None:
        process = self.process
        if process is not None:
            stop_group(process, CANCEL_GRACE_SECONDS)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def reported(self) -> bool:
        """The job's thread is over: its end was reported (or it never started)."""
        return self._reported.is_set()
