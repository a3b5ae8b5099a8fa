"""A worker stopped before it ever reached its coordinator exits at once."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import free_port, process_env, wait_until, write_yaml


def test_sigterm_before_the_coordinator_answers_ends_the_worker(tmp_path: Path) -> None:
    config = write_yaml(
        tmp_path / "worker.yaml",
        {
            "client_id": "w",
            "hmac_key": "k" * 43,
            "coordinator_url": f"http://127.0.0.1:{free_port()}",  # nobody listens
            "binaries": {"ffmpeg": shutil.which("ffmpeg") or "ffmpeg"},
            "sandbox": False,
        },
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=process_env(),
        )
    try:
        wait_until(lambda: b"cannot" in log.read_bytes(), timeout=30)
        worker.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        assert worker.wait(timeout=10) == 0
        assert time.monotonic() - sent < 5
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
