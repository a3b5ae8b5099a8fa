"""End to end over each transport: the drop-in runs real ffmpeg/ffprobe on a real cluster.

The coordinator, the worker and the client all list the transport first, so the
worker's jobs and the drop-in's output notifications travel over it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.brokers import OwnMosquitto, RabbitUser, mosquitto_available, rabbitmq_available
from tests.conftest import Cluster, start_cluster
from tests.helpers import require

TRANSPORTS = ["http", "stream", "mqtt", "rabbitmq"]


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> Iterator[tuple[str, Cluster]]:
    name: str = request.param
    root = tmp_path_factory.mktemp(f"e2e-{name}")
    blocks: dict[str, Any] = {}
    cleanups: list[Callable[[], None]] = []
    try:
        if name == "mqtt":
            require(mosquitto_available(), "mosquitto")
            broker = OwnMosquitto(root)
            broker.start()
            cleanups.append(broker.stop)
            blocks = {"mqtt": {"url": broker.url}}
        elif name == "rabbitmq":
            require(rabbitmq_available(), "RabbitMQ on 127.0.0.1:5672 with rabbitmqctl")
            user = RabbitUser()
            user.create()
            cleanups.append(user.cleanup)
            blocks = {"rabbitmq": {"url": user.url, "exchange": user.exchange}}
        party = {"transports": [name, "http"], **blocks}
        yield from (
            (name, cluster)
            for cluster in start_cluster(
                root, media_dir, worker_extra=party, coordinator_extra=party, client_extra=party
            )
        )
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def test_worker_uses_the_transport(transport_cluster: tuple[str, Cluster]) -> None:
    name, cluster = transport_cluster
    log = (cluster.root / "worker.log").read_text()
    if name == "http":
        assert "jobs arrive over" not in log
    else:
        assert f"jobs arrive over {name}" in log


def test_ffprobe_json_identical(transport_cluster: tuple[str, Cluster]) -> None:
    _, cluster = transport_cluster
    clip = cluster.client_media / "clip.mp4"
    args = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(clip)]
    remote = cluster.run("ffprobe", *args)
    local = subprocess.run(["ffprobe", *args], capture_output=True, timeout=60)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout


def test_transcode_and_exit_codes(transport_cluster: tuple[str, Cluster]) -> None:
    _, cluster = transport_cluster
    clip = cluster.client_media / "clip.mp4"
    out = cluster.client_media / f"transport-{transport_cluster[0]}.mkv"  # inside the root
    ok = cluster.run("ffmpeg", "-v", "error", "-y", "-i", str(clip), "-c:v", "mpeg4", str(out))
    assert ok.returncode == 0, ok.stderr
    assert out.stat().st_size > 0
    missing = str(cluster.client_media / "missing.mp4")
    remote = cluster.run("ffmpeg", "-v", "error", "-i", missing, "-f", "null", "-")
    local = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(Path(missing).resolve()), "-f", "null", "-"],
        capture_output=True,
        timeout=60,
    )
    assert remote.returncode == local.returncode == 1
