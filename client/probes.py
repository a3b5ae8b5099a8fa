"""Answering a recognised probe from the coordinator's capture (see ``client.fastprobe``).

Kept free of the job machinery (threads, queues) so this path starts quickly.
"""

from __future__ import annotations

import base64
import binascii
import os

from client.api import Api, ApiError, Unreachable
from client.fastprobe import ProbeCall


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def answer_probe(api: Api, binary: str, probe: ProbeCall, retry_for: float = 0.0) -> int | None:
    """Write the captured output and return its exit code; None to run it as a job.

    A coordinator that cannot be reached (restarting) is waited for ``retry_for``
    seconds. Any failure to get the capture (not reported by any worker, coordinator
    down, credentials refused) also returns None: the job path then gives the real
    answer or the documented cluster failure, and the local fallback if one is
    configured.
    """
    try:
        data = api.call("GET", f"/probes/{binary}/{probe.option}", timeout=10, retry_for=retry_for)
        stdout = base64.b64decode(data["stdout"], validate=True)
        stderr = base64.b64decode(data["stderr"], validate=True)
        exit_code = int(data["exit_code"])
    except (ApiError, Unreachable, KeyError, TypeError, ValueError, binascii.Error):
        return None
    if exit_code != 0 and not probe.banner:
        # A failing probe (``ffprobe -hwaccels``) prints its error after the banner; what
        # it prints without the banner is not in the capture, so let the binary say it.
        return None
    try:
        _write_all(1, stdout)
        if probe.banner:
            _write_all(2, stderr)
    except BrokenPipeError:
        return 128 + 13  # what a local binary killed by SIGPIPE reports
    return exit_code
