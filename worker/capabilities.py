"""What the worker's binaries can do, probed once at start-up."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from worker.probes import capture_probes

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 20.0


def probe_binaries(binaries: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``{name: {"path": ..., "version": ...}}`` for each binary that runs."""
    found: dict[str, dict[str, Any]] = {}
    for name, configured in binaries.items():
        path = shutil.which(configured)
        if path is None:
            log.warning("binary %s (%s) not found; not offering it", name, configured)
            continue
        try:
            result = subprocess.run(
                [path, "-hide_banner", "-version"],
                capture_output=True,
                timeout=PROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("binary %s (%s) does not run: %s", name, path, exc)
            continue
        first = result.stdout.split(b"\n", 1)[0].decode(errors="replace").strip()
        found[name] = {"path": path, "version": first, "probes": capture_probes(path)}
    return found
