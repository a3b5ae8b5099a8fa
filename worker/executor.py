"""Running one assigned job: map its paths, start the binary without a shell, relay its
streams, feed its stdin, deliver signals and cancellation, report its exit code."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from client.api import Api, ApiError, Unreachable
from dffmpeg.config import DEFAULT_OUTAGE_GRACE_SECONDS
from dffmpeg.exitcodes import from_returncode
from dffmpeg.paths import StreamRewriter, output_rewriter, to_variables, unmap_args
from dffmpeg.wire import (
    CONTENT_TYPE_FRAMES,
    Frame,
    FrameError,
    FrameKind,
    decode_frames,
    encode_frames,
)
from worker.guard import (
    ConcatLists,
    Refused,
    forwarded_env,
    read_script,
    refuse_code_loading,
    refuse_network,
    refuse_unmapped,
    working_directory,
)
from worker.process import Unconfined
from worker.relay import FrameSender, OutputBuffer, read_pipe
from worker.sandbox import private_path
from worker.spool import SpoolFile

log = logging.getLogger(__name__)

INPUT_WAIT_SECONDS = 20.0
# The input long-poll (stdin, signals) opens this long after the process started. Most
# jobs (every ffprobe, every short batch job) end before that and never cost the
# coordinator a held request; input sent meanwhile waits in the database and arrives
# with the first read, at most this much later.
INPUT_DELAY_SECONDS = 0.2
CANCEL_GRACE_SECONDS = 5.0
# Variables of the worker's own environment a job's process gets: finding its libraries
# and drivers (set by the operator, e.g. for VAAPI or CUDA), never the worker's secrets.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "LD_LIBRARY_PATH")
DRIVER_ENV = (
    "LIBVA_DRIVER_NAME",
    "LIBVA_DRIVERS_PATH",
    "VDPAU_DRIVER",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
    "NVIDIA_DRIVER_CAPABILITIES",
    "OCL_ICD_VENDORS",
)
# Inside the sandbox: the standard places, and a home and temporary directory that are
# the job's private /tmp.
CONFINED_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp"}


def _status_state(data: bytes) -> str | None:
    """The ``state`` of a status frame; None when it is not a JSON object with one."""
    try:
        status = json.loads(data)
    except ValueError:
        return None
    state = status.get("state") if isinstance(status, dict) else None
    return state if isinstance(state, str) else None


class Runner(Protocol):
    """How a job's process is started, signalled and stopped (confined or not)."""

    confined: bool

    def launch(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        files: Mapping[str, bytes] | None = None,
    ) -> subprocess.Popen[bytes]: ...

    def deliver(self, process: subprocess.Popen[bytes], signum: int) -> None: ...

    def stop(self, process: subprocess.Popen[bytes], grace: float) -> None: ...


@dataclass(frozen=True)
class JobRules:
    """What this worker lets a job do (its config), the same for every job."""

    binaries: Mapping[str, str]
    paths: Mapping[str, str]
    allow_unmapped_paths: bool = False
    allow_network: bool = False
    allow_filters: frozenset[str] = frozenset()


@dataclass
class Prepared:
    argv: list[str]
    cwd: str
    env: dict[str, str]
    files: dict[str, bytes] = field(default_factory=dict)


class JobExecution:
    """One job on this worker, from its accept to its finish.

    Every request it makes is retried (connection failures, the coordinator's 503s)
    for ``grace`` seconds, the coordinator's ``outage_grace_seconds``: an outage that
    short loses nothing, the process keeps running and its output waits in memory and
    then in ``spool_dir`` (worker/spool.py). Output that cannot be delivered even so
    stops the job, and its finish says so: the coordinator never records as completed
    a job whose caller did not get all of its output.
    """

    def __init__(
        self,
        api: Api,
        assignment: Mapping[str, Any],
        rules: JobRules,
        runner: Runner | None = None,
        grace: float = DEFAULT_OUTAGE_GRACE_SECONDS,
        spool_dir: Path | None = None,
    ) -> None:
        self.api = api
        self.grace = grace
        self.spool_dir = spool_dir
        self.rules = rules
        self.runner: Runner = runner if runner is not None else Unconfined()
        self.job_id: str = assignment["job_id"]
        self.assignment = assignment
        self.paths = rules.paths
        self.process: subprocess.Popen[bytes] | None = None
        self._canceled = threading.Event()
        self._done = threading.Event()  # the process is over
        self._reported = threading.Event()  # ... and the coordinator was told
        self._finished = threading.Event()  # a finish was sent
        self._aborted: str | None = None
        self._stdout_hung_up = threading.Event()
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None

    # -- preparing ---------------------------------------------------------------------

    def prepare(self) -> Prepared:
        """The command, working directory, environment and private files of the job.

        Raises ``Refused`` (shown to the caller) when a check says no.
        """
        binary = self.assignment["binary"]
        path = self.rules.binaries.get(binary)
        if path is None:
            raise Refused(f"binary {binary} is not available on this worker")
        raw_args = [str(a) for a in self.assignment["args"]]
        if not self.rules.allow_network:
            refuse_network(raw_args)
        refuse_code_loading(
            raw_args, self.rules.allow_filters, lambda p: read_script(p, self.paths)
        )
        cwd = self.working_directory()
        args = unmap_args(raw_args, self.paths)
        if not self.rules.allow_unmapped_paths:
            refuse_unmapped(args, self.paths, cwd)
        lists = ConcatLists(
            self.paths,
            self.assignment.get("client_paths") or {},
            cwd,
            self.rules.allow_network,
            self._private_place(),
            check_roots=not self.rules.allow_unmapped_paths,
        )
        args = lists.rewrite(args)
        return Prepared([path, *args], cwd, self.environment(), lists.files)

    def working_directory(self) -> str:
        cwd = self.assignment.get("cwd")
        if cwd:
            return working_directory(str(cwd), self.paths)
        if self.runner.confined:
            return "/tmp"  # the sandbox's own, gone with the job
        self._tempdir = tempfile.TemporaryDirectory(prefix=f"dffmpeg-{self.job_id[:8]}-")
        return self._tempdir.name

    def _private_place(self) -> Callable[[str], str]:
        if self.runner.confined:
            return private_path
        if self._tempdir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix=f"dffmpeg-{self.job_id[:8]}-")
        folder = self._tempdir.name
        return lambda name: os.path.join(folder, name)

    def environment(self) -> dict[str, str]:
        own = BASE_ENV + DRIVER_ENV
        env = {k: v for k in own if (v := os.environ.get(k)) is not None}
        if self.runner.confined:
            env.update(CONFINED_ENV)
            env.pop("LD_LIBRARY_PATH", None)
        env.update(forwarded_env(self.assignment.get("env") or {}))
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
        """Run and report the job. Never raises. The agent's next poll accepts it
        (worker/agent.py), and so does its first output or its finish, whichever the
        coordinator sees first: the process starts without waiting for either. A job
        that was no longer ours comes back in a poll's ``cancel``, and its output and
        finish are refused (409), which stops it."""
        try:
            self._run_process()
        except Exception as exc:
            log.exception("job %s failed in the worker", self.job_id)
            if not self._finished.is_set():  # never leave the job running on the coordinator
                self._finish({"error": f"worker error: {type(exc).__name__}"})
        finally:
            self._done.set()
            self._reported.set()
            if self._tempdir is not None:
                self._tempdir.cleanup()

    def _run_process(self) -> None:
        try:
            job = self.prepare()
        except Refused as exc:
            self._finish({"error": f"refused: {exc}"})
            return
        try:
            if not self.runner.confined:
                self._write_private(job.files)
            self.process = self.runner.launch(job.argv, cwd=job.cwd, env=job.env, files=job.files)
        except OSError as exc:
            self._finish({"error": f"could not start: {_without_roots(exc, self.paths)}"})
            return
        log.info("job %s started: pid %s", self.job_id, self.process.pid)
        if self._canceled.is_set():  # canceled while it was starting
            threading.Thread(target=self._kill_group, name="cancel", daemon=True).start()
        buffer = OutputBuffer(spool=self._open_spool if self.spool_dir is not None else None)
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
        sender = FrameSender(buffer, self._send_output, self._undeliverable, keep_final=True)
        try:
            sender.run()  # returns once both pipes reached EOF and everything was sent
        finally:
            buffer.close()  # the spool file, if any, goes with the job
        returncode = self.process.wait()
        self._done.set()
        result: dict[str, Any] = {"exit_code": from_returncode(returncode)}
        if self._aborted is not None:
            result["aborted"] = self._aborted
        if sender.final:
            result["output"] = base64.b64encode(encode_frames(sender.final)).decode()
        self._finish(result)

    def _open_spool(self) -> SpoolFile:
        assert self.spool_dir is not None
        return SpoolFile(self.spool_dir, f"{self.api.client_id}-{self.job_id}")

    def _undeliverable(self, exc: Exception) -> None:
        """The output could not be delivered: stop the job, and report it as lost."""
        if isinstance(exc, ApiError) and exc.status == 409:
            # The job is over on the coordinator (canceled, or declared lost): nobody
            # reads this output any more.
            log.warning("job %s ended on the coordinator; stopping its process", self.job_id)
            self._aborted = self._aborted or "the job ended on the coordinator"
            self.cancel()
            return
        log.warning("job %s: output not delivered (%s); stopping it", self.job_id, exc)
        self.abort(f"output could not be delivered: {exc}"[:200])

    def _write_private(self, files: Mapping[str, bytes]) -> None:
        place = self._private_place()
        for name, data in files.items():
            with open(place(name), "wb") as private:
                private.write(data)

    def _send_output(self, frames: list[Frame]) -> None:
        self.api.request(
            "POST",
            f"/jobs/{self.job_id}/output",
            body=encode_frames(frames),
            content_type=CONTENT_TYPE_FRAMES,
            retry_for=self.grace,
        )

    def _finish(self, result: dict[str, Any]) -> None:
        self._finished.set()
        try:
            self.api.request(
                "POST", f"/jobs/{self.job_id}/finish", json_body=result, retry_for=self.grace
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
        stdin, after = self._write_early_stdin(stdin)
        if self._done.wait(INPUT_DELAY_SECONDS):
            return
        while not self._done.is_set():
            try:
                response = self.api.request(
                    "GET",
                    f"/jobs/{self.job_id}/input",
                    params={"after": after, "wait": INPUT_WAIT_SECONDS},
                    timeout=INPUT_WAIT_SECONDS + 30,
                    retry_for=self.grace,
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

    def _write_early_stdin(self, stdin: Any) -> tuple[Any, int]:
        """Write the stdin that came with the assignment (what the caller's stdin held
        when it submitted) as the process starts; the input stream goes on after it."""
        after = self.assignment.get("input_after")
        if not isinstance(after, int) or isinstance(after, bool) or after < 0:
            return stdin, 0
        try:
            data = base64.b64decode(self.assignment.get("stdin") or "", validate=True)
        except (binascii.Error, ValueError):
            log.warning("job %s: malformed stdin in the assignment ignored", self.job_id)
            return stdin, 0
        if data:
            stdin = self._apply_input(Frame(FrameKind.STDIN, 0, data), stdin)
        if self.assignment.get("stdin_eof") is True:
            stdin = self._apply_input(Frame(FrameKind.STDIN_EOF, 0, b""), stdin)
        return stdin, after

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
        if process is not None:
            self.runner.deliver(process, signum)

    def cancel(self) -> None:
        """Stop the whole process group: SIGTERM, then SIGKILL after a grace period."""
        if self._canceled.is_set() or self._done.is_set():
            # Over: its process was reaped, and its pid may be another process's now.
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
            self.runner.stop(process, CANCEL_GRACE_SECONDS)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def reported(self) -> bool:
        """The job's thread is over: its end was reported (or it never started)."""
        return self._reported.is_set()


def _without_roots(exc: OSError, roots: Mapping[str, str]) -> str:
    """An OS error as the caller may see it: the worker's roots written as variables."""
    return to_variables(str(exc), roots)
