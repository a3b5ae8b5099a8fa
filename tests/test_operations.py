"""docs/operations.md, "Upgrading and restarting": a coordinator restarted while a job
runs through the drop-in loses nothing (the job completes, its output arrives whole,
the exit code is ffmpeg's), and the schema step of an upgrade is idempotent."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.api import Api
from tests.helpers import (
    admin,
    free_port,
    health,
    process_env,
    running,
    stop,
    wait_until,
    write_yaml,
)


@pytest.mark.timeout(150)
def test_restarting_the_coordinator_mid_job_loses_nothing(tmp_path: Path, ffmpeg: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {"host": "127.0.0.1", "port": port, "database_url": f"sqlite:///{tmp_path / 'c.db'}"},
    )
    worker_key = admin(config, "user", "add", "w1", "--role", "worker")["hmac_key"]
    client_key = admin(config, "user", "add", "c1", "--role", "client")["hmac_key"]
    admin_key = admin(config, "user", "add", "ops", "--role", "admin")["hmac_key"]
    media = tmp_path / "media"
    media.mkdir()
    worker_config = write_yaml(
        tmp_path / "worker.yaml",
        {
            "client_id": "w1",
            "hmac_key": worker_key,
            "coordinator_url": url,
            "paths": {"Media": str(media)},
            "binaries": {"ffmpeg": ffmpeg, "ffprobe": shutil.which("ffprobe")},
            "slots": 1,
            "heartbeat_seconds": 1,
        },
    )
    client_config = write_yaml(
        tmp_path / "client.yaml",
        {
            "client_id": "c1",
            "hmac_key": client_key,
            "coordinator_url": url,
            "paths": {"Media": str(media)},
        },
    )
    serve = [sys.executable, "-m", "coordinator.serve", "--config", str(config)]
    log = (tmp_path / "coordinator.log").open("ab")
    coordinator = subprocess.Popen(serve, stdout=log, stderr=subprocess.STDOUT, env=process_env())
    try:
        wait_until(lambda: health(url) == 200, timeout=30)
        with running(
            [sys.executable, "-m", "worker.cli", "--config", str(worker_config)],
            tmp_path / "worker.log",
            env=process_env(),
        ):
            ops = Api(url, "ops", admin_key)
            wait_until(lambda: _online(ops), timeout=60, interval=0.2)
            ops.close()
            # Eight seconds of real-time work, written into the media root.
            job = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "dffmpeg-proxy"),
                    "ffmpeg",
                    "-hide_banner",
                    "-re",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc=duration=8:size=160x120:rate=10",
                    "-c:v",
                    "mpeg4",
                    "-y",
                    str(media / "out.avi"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=process_env(DFFMPEG_CLIENT_CONFIG=str(client_config)),
            )
            time.sleep(3)
            # systemctl restart: SIGTERM (the coordinator drains), then a new start on the
            # same database, as ExecStartPre's db upgrade and ExecStart do.
            stop(coordinator)
            assert coordinator.returncode == 0
            down_at = time.monotonic()
            upgraded = admin(config, "db", "upgrade")
            assert upgraded["from"] == upgraded["to"]  # nothing to do: idempotent
            coordinator = subprocess.Popen(
                serve, stdout=log, stderr=subprocess.STDOUT, env=process_env()
            )
            wait_until(lambda: health(url) == 200, timeout=30)
            downtime = time.monotonic() - down_at
            out, err = job.communicate(timeout=90)
            assert job.returncode == 0, err.decode(errors="replace")
            assert out == b""
            assert b"dffmpeg:" not in err  # no cluster failure was reported
            assert b"frame=   80" in err  # the whole of ffmpeg's progress arrived
            probe = subprocess.run(
                [
                    "ffprobe",
                    "-v",
                    "error",
                    "-count_frames",
                    "-select_streams",
                    "v:0",
                    "-show_entries",
                    "stream=nb_read_frames",
                    "-of",
                    "csv=p=0",
                    str(media / "out.avi"),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            assert probe.stdout.strip() == "80"
            ops = Api(url, "ops", admin_key)
            try:
                (row,) = ops.call("GET", "/jobs")["jobs"]
                worker = ops.call("GET", "/workers/w1")["worker"]
            finally:
                ops.close()
            assert (row["state"], row["exit_code"], row["worker_id"]) == ("completed", 0, "w1")
            assert worker["state"] == "online"
            assert downtime < 20
    finally:
        stop(coordinator)
        log.close()


def _online(api: Api) -> bool:
    workers = api.call("GET", "/workers")["workers"]
    return any(w["state"] == "online" for w in workers)
