"""Capturing the output of a binary's information options, once, at start-up.

Media servers run ``ffmpeg -version``, ``-encoders``, ``-hwaccels``... every time they
start or look at a file. Those answers never change while the worker runs, so the worker
captures them at registration (``binaries[name]["probes"][OPTION]``) and the coordinator
serves them to the drop-in without running a job. Captured raw: stdout and stderr as
base64 of the exact bytes, and the exit code.
"""

from __future__ import annotations

import base64
import logging
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

PROBE_OPTIONS = ("-version", "-encoders", "-decoders", "-filters", "-hwaccels", "-formats")
PROBE_TIMEOUT = 20.0


def capture_one(path: str, option: str) -> dict[str, Any] | None:
    """The raw result of ``path option``, or None if it could not be run."""
    try:
        result = subprocess.run(
            [path, option],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("%s %s could not be captured: %s", path, option, exc)
        return None
    return {
        "stdout": base64.b64encode(result.stdout).decode("ascii"),
        "stderr": base64.b64encode(result.stderr).decode("ascii"),
        "exit_code": result.returncode,
    }


def capture_probes(path: str) -> dict[str, dict[str, Any]]:
    """``{OPTION: {"stdout", "stderr", "exit_code"}}`` for each of ``PROBE_OPTIONS``."""
    with ThreadPoolExecutor(max_workers=len(PROBE_OPTIONS)) as pool:
        results = pool.map(lambda option: capture_one(path, option), PROBE_OPTIONS)
        return {
            option: result
            for option, result in zip(PROBE_OPTIONS, results, strict=True)
            if result is not None
        }
