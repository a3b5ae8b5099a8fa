"""Exit codes of the drop-in and the client.

ffmpeg itself exits 0, 1, 69 (error rate exceeded) or 255, and a process killed by signal
N is reported as 128+N (129..192). Failures of the cluster itself use the 200 range so a
caller can always tell "ffmpeg said no" from "the cluster could not run ffmpeg".
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    COORDINATOR_UNREACHABLE = 200
    AUTH_REFUSED = 201
    JOB_REJECTED = 202
    NO_CAPABLE_WORKER = 203
    WORKER_LOST = 204
    CANCELED_BY_CLUSTER = 205
    PROTOCOL_ERROR = 206
    CONFIG_ERROR = 207


def from_returncode(returncode: int) -> int:
    """Translate a ``subprocess`` return code into what a shell would report."""
    if returncode < 0:
        return 128 + (-returncode)
    return returncode
