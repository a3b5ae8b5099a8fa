"""The worker's input thread survives malformed answers: later signals still arrive.

The coordinator validates frames before storing them, so a malformed answer can only come
from something else between the worker and its coordinator (a broken proxy, a bug): the
only way to produce one here is a stand-in for the API that returns it.
"""

from __future__ import annotations

import base64
import signal
import subprocess
from typing import Any

from client.api import Response
from dffmpeg.wire import Frame, FrameKind, encode_frames, status_frame
from worker.executor import JobExecution, JobRules


class ScriptedApi:
    """Answers the input long-poll with the given bodies, in order."""

    def __init__(self, bodies: list[bytes]) -> None:
        self.bodies = bodies
        self.calls: list[dict[str, Any]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> Response:
        self.calls.append({"method": method, "path": path, **kwargs})
        body = (
            self.bodies.pop(0)
            if self.bodies
            else encode_frames([status_frame({"state": "completed"})])
        )
        return Response(200, {}, body)


def test_malformed_frames_do_not_end_the_input_thread() -> None:
    process = subprocess.Popen(["sleep", "30"], stdin=subprocess.PIPE)
    try:
        bodies = [
            b"\x05\x00",  # a truncated frame header
            encode_frames([Frame(FrameKind.STATUS, 0, b"not json")]),
            encode_frames([Frame(FrameKind.SIGNAL, 1, b"KILL")]),  # not a number
            encode_frames([Frame(FrameKind.SIGNAL, 2, str(int(signal.SIGTERM)).encode())]),
        ]
        api = ScriptedApi(bodies)
        assignment = {"job_id": "j1", "binary": "sleep", "args": []}
        execution = JobExecution(api, assignment, JobRules(binaries={}, paths={}))  # type: ignore[arg-type]
        execution.process = process
        execution._relay_input(process.stdin)
        # The signal after the malformed frames was delivered...
        assert process.wait(timeout=10) == -signal.SIGTERM
        # ...and the reads went on from the last good frame.
        afters = [call["params"]["after"] for call in api.calls]
        assert afters[:4] == [0, 0, 0, 1]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdin is not None
        process.stdin.close()


def test_stdin_of_the_assignment_is_written_as_the_process_starts() -> None:
    """What the caller's stdin held at submit comes with the assignment: it is in the
    process's stdin before any input long-poll, and the polls go on after it."""
    process = subprocess.Popen(
        ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        api = ScriptedApi([])
        assignment = {
            "job_id": "j1",
            "binary": "cat",
            "args": [],
            "stdin": base64.b64encode(b"?").decode(),
            "stdin_eof": True,
            "input_after": 2,
        }
        execution = JobExecution(api, assignment, JobRules(binaries={}, paths={}))  # type: ignore[arg-type]
        execution.process = process
        execution._relay_input(process.stdin)
        assert process.stdout is not None
        assert process.stdout.read() == b"?"  # written, and closed after it
        assert process.wait(timeout=10) == 0
        assert [call["params"]["after"] for call in api.calls] == [2]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stdout is not None
        process.stdout.close()
