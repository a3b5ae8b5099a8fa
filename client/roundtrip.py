"""A real round trip through one worker and one path variable (``dffmpeg-client doctor``).

Two small ffmpeg jobs pinned to the worker (``POST /api/v1/doctor/probe``; the
coordinator builds their command lines): the first writes a token file under
``$Variable`` on the worker, which this machine must then find under its own root; the
second reads a token file this machine wrote under its root, and must print its token.
Either fails when the worker's root for the variable is not the same storage as ours,
the classic "the transcode runs but the video never plays".
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import Api, ApiError, Unreachable
from dffmpeg.wire import FrameKind, decode_frames

JOB_SECONDS = 45.0
# A network share may show a file another host wrote a moment later than it exists.
APPEAR_SECONDS = 3.0


@dataclass
class Trip:
    ok: bool
    detail: str
    fix: str | None = None


@dataclass
class Ran:
    status: dict[str, Any]
    stdout: bytes
    stderr: bytes

    @property
    def succeeded(self) -> bool:
        return self.status.get("state") == "completed" and self.status.get("exit_code") == 0

    def why(self) -> str:
        text = self.stderr.decode(errors="replace").strip().splitlines()
        if text:
            return text[-1][:300]
        return str(self.status.get("reason") or self.status.get("state"))


def run_probe(api: Api, body: dict[str, Any], timeout: float = JOB_SECONDS) -> Ran:
    """Submit one round-trip job and read its output to the end, like the drop-in."""
    job_id = api.call("POST", "/doctor/probe", json_body=body)["job"]["job_id"]
    deadline = time.monotonic() + timeout
    after, stdout, stderr = 0, b"", b""
    while time.monotonic() < deadline:
        reply = api.request(
            "GET", f"/jobs/{job_id}/output", params={"after": after, "wait": 5}, timeout=40
        )
        for frame in decode_frames(reply.body):
            if frame.kind == FrameKind.STATUS:
                return Ran(json.loads(frame.data), stdout, stderr)
            after = frame.seq
            if frame.kind == FrameKind.STDOUT:
                stdout += frame.data
            else:
                stderr += frame.data
    with contextlib.suppress(ApiError, Unreachable):
        api.request("POST", f"/jobs/{job_id}/cancel")
    return Ran({"state": "timeout", "reason": f"no result within {timeout:.0f}s"}, stdout, stderr)


def _appeared(path: Path) -> bool:
    deadline = time.monotonic() + APPEAR_SECONDS
    while True:
        if path.exists():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _names() -> tuple[str, str]:
    return f".dffmpeg-doctor-{secrets.token_hex(8)}.txt", secrets.token_hex(16)


def worker_writes(api: Api, worker: str, variable: str, root: str) -> Trip:
    name, token = _names()
    body = {"worker_id": worker, "variable": variable, "direction": "write"}
    ran = run_probe(api, {**body, "name": name, "token": token})
    if not ran.succeeded:
        return Trip(
            False,
            f"{worker} could not write ${variable}/{name}: {ran.why()}",
            f"the root {worker} maps ${variable} to must exist and be writable by the "
            "user dffmpeg-worker runs as (worker config 'paths')",
        )
    local = Path(root) / name
    try:
        if not _appeared(local):
            return Trip(
                False,
                f"{worker} wrote ${variable}/{name}, but {local} does not exist here",
                f"{worker}'s root for ${variable} must be the same storage as {root} on "
                f"this machine: mount the same share on both (worker config "
                f"'paths: {{{variable}: ...}}'); then delete {name} from {worker}'s root",
            )
        if f"dffmpeg_token={token}" not in local.read_text(errors="replace"):
            return Trip(
                False,
                f"{local} exists but does not hold what {worker} wrote",
                f"{root} and {worker}'s root for ${variable} are different directories",
            )
    finally:
        local.unlink(missing_ok=True)
    return Trip(True, f"{worker} wrote under ${variable}, this machine read it")


def worker_reads(api: Api, worker: str, variable: str, root: str) -> Trip:
    name, token = _names()
    local = Path(root) / name
    try:
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as stream:
            stream.write(f";FFMETADATA1\ndffmpeg_token={token}\n")
    except OSError as exc:
        return Trip(
            False,
            f"this machine cannot write a test file under {root}: {exc.strerror or exc}",
            f"the user running the drop-in must be able to write under {root} "
            "(outputs of jobs land there)",
        )
    try:
        body = {"worker_id": worker, "variable": variable, "direction": "read"}
        ran = run_probe(api, {**body, "name": name, "token": token})
    finally:
        local.unlink(missing_ok=True)
    if ran.succeeded and f"dffmpeg_token={token}".encode() in ran.stdout:
        return Trip(True, f"this machine wrote under {root}, {worker} read it")
    return Trip(
        False,
        f"{worker} could not read {local} as ${variable}/{name}: {ran.why()}",
        f"{worker}'s root for ${variable} must be the same storage as {root} here "
        f"(worker config 'paths: {{{variable}: ...}}'), readable by its user",
    )


def round_trip(api: Api, worker: str, variable: str, root: str) -> Trip:
    """Both directions; the first failure is the answer."""
    written = worker_writes(api, worker, variable, root)
    if not written.ok:
        return written
    read = worker_reads(api, worker, variable, root)
    if not read.ok:
        return read
    return Trip(True, f"{written.detail}; {read.detail}")
