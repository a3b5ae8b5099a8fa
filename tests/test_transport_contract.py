"""One contract for every transport: http, stream, mqtt and rabbitmq.

Each run starts a real coordinator process with the transport enabled (and real
Mosquitto / RabbitMQ), then drives it with the real worker agent and the real client
job session, running real ffmpeg. What every transport must give: ordered, complete
output per recipient; no loss across a broker outage mid-job; a broker's redelivery
after a reconnect; fallback to HTTP while the transport is down, and return after it.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from client.api import Api
from client.downlink import open_downlink
from client.job import JobSession, Outcome
from client.submit import JobRequest, submit
from dffmpeg.config import ClientConfig, WorkerConfig
from dffmpeg.transport import create_transport
from dffmpeg.transport.base import Endpoint
from dffmpeg.transport.session import Downlink
from tests.brokers import (
    OwnMosquitto,
    RabbitUser,
    mosquitto_available,
    rabbitmq_available,
)
from tests.helpers import (
    free_port,
    health,
    process_env,
    require,
    running,
    wait_until,
    write_yaml,
)
from worker.agent import WorkerAgent

# The worker agent runs in this process here; its executor leaves a finished ffmpeg's
# stdin pipe to the garbage collector, which pytest would report from a later test.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

TRANSPORTS = ["http", "stream", "mqtt", "rabbitmq"]
BROKERS = ("mqtt", "rabbitmq")
IDENTITIES = {"w1": "worker", "w2": "worker", "c1": "client", "c2": "client"}


@dataclass
class Deployment:
    """A running coordinator with one transport enabled, and how to break its broker."""

    name: str
    url: str
    keys: dict[str, str]
    blocks: dict[str, Any] = field(default_factory=dict)  # mqtt:/rabbitmq: config blocks
    outage_start: Callable[[], None] | None = None
    outage_end: Callable[[], None] | None = None

    def _base(self, identity: str) -> dict[str, Any]:
        return {
            "client_id": identity,
            "hmac_key": self.keys[identity],
            "coordinator_url": self.url,
            "transports": [self.name, "http"],
            **self.blocks,
        }

    def worker_config(self, identity: str = "w1") -> WorkerConfig:
        ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
        data = {
            **self._base(identity),
            "binaries": {"ffmpeg": ffmpeg},
            "slots": 2,
            "heartbeat_seconds": 1,
            # An agent inside the test process: confining its jobs would move the test
            # run into the sandbox's mount namespace (tests/test_sandbox*.py cover it).
            "sandbox": False,
        }
        return WorkerConfig.from_dict(data)

    def client_config(self, identity: str = "c1") -> ClientConfig:
        return ClientConfig.from_dict(self._base(identity))


def _broker_blocks(name: str, root: Path, stack: list[Callable[[], None]]) -> Deployment:
    deployment = Deployment(name, "", {})
    if name == "mqtt":
        require(mosquitto_available(), "mosquitto")
        broker = OwnMosquitto(root)
        broker.start()
        stack.append(broker.stop)
        deployment.blocks = {"mqtt": {"url": broker.url, "prefix": f"t{os.getpid()}"}}
        deployment.outage_start, deployment.outage_end = broker.stop, broker.start
    elif name == "rabbitmq":
        require(rabbitmq_available(), "RabbitMQ on 127.0.0.1:5672 with rabbitmqctl")
        user = RabbitUser()
        user.create()
        stack.append(user.cleanup)
        deployment.blocks = {"rabbitmq": {"url": user.url, "exchange": user.exchange}}
        deployment.outage_start, deployment.outage_end = user.delete, user.create
    return deployment


def add_users(database_url: str) -> dict[str, str]:
    """Create the schema and our identities in-process (faster than the admin CLI)."""
    from coordinator import create_app, users
    from coordinator.db import db

    app = create_app({"database_url": database_url}, start_janitor=False)
    with app.app_context():
        keys = {i: users.add_user(i, role)["hmac_key"] for i, role in IDENTITIES.items()}
        db.engine.dispose()
    return keys


@pytest.fixture(scope="module", params=TRANSPORTS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    name: str = request.param
    root = tmp_path_factory.mktemp(f"transport-{name}")
    cleanups: list[Callable[[], None]] = []
    try:
        deployment = _broker_blocks(name, root, cleanups)
        port = free_port()
        config = write_yaml(
            root / "coordinator.yaml",
            {
                "host": "127.0.0.1",
                "port": port,
                "database_url": f"sqlite:///{root / 'coordinator.db'}",
                "transports": [name, "http"],
                "gunicorn_threads": 64,
                **deployment.blocks,
            },
        )
        deployment.keys = add_users(f"sqlite:///{root / 'coordinator.db'}")
        deployment.url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "coordinator.serve", "--config", str(config)]
        with running(cmd, root / "coordinator.log", env=process_env()):
            wait_until(lambda: health(deployment.url) == 200, timeout=20)
            yield deployment
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


@pytest.fixture(scope="module")
def worker(deployment: Deployment) -> Iterator[WorkerAgent]:
    config = deployment.worker_config()
    agent = WorkerAgent(config, Api.from_config(config))
    agent.start()
    yield agent
    agent.wait_jobs(10)
    agent.stop()
    agent.join(5)
    agent.api.close()
    agent.jobs.clear()
    gc.collect()  # the executors' pipes, while this module's warning filters apply


def transport_of(downlink: Downlink | None) -> str:
    return "http" if downlink is None else downlink.name


def ffmpeg_raw(seconds: float, realtime: bool = False) -> list[str]:
    """A deterministic byte stream on stdout: raw video of a lavfi test pattern."""
    return [
        "-v",
        "error",
        *(["-re"] if realtime else []),
        "-f",
        "lavfi",
        "-i",
        f"testsrc=duration={seconds}:size=96x64:rate=25",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]


def local_digest(args: list[str]) -> str:
    out = subprocess.run(["ffmpeg", *args], capture_output=True, check=True, timeout=60)
    return hashlib.sha256(out.stdout).hexdigest()


@dataclass
class Followed:
    outcome: Outcome
    stdout: bytes
    downlink: Downlink | None
    fell_back: bool


def run_job(
    deployment: Deployment, tmp: Path, args: list[str], identity: str = "c1"
) -> tuple[threading.Thread, list[Followed], Downlink | None]:
    """Submit as ``identity`` and follow the job in a thread through the transport."""
    config = deployment.client_config(identity)
    api = Api.from_config(config)
    job_id = submit(api, JobRequest(binary="ffmpeg", args=args))
    downlink = open_downlink(api, config, "client", background=False)
    results: list[Followed] = []
    out_path = tmp / f"{job_id}.out"

    def follow() -> None:
        fell_back = False

        def watch_fallback() -> None:
            nonlocal fell_back
            while not results and downlink is not None:
                fell_back = fell_back or downlink.fallen_back
                time.sleep(0.05)

        threading.Thread(target=watch_fallback, daemon=True).start()
        with out_path.open("wb") as out, open(os.devnull, "wb") as err:
            session = JobSession(api, job_id, out.fileno(), err.fileno(), downlink=downlink)
            outcome = session.follow()
        api.close()
        results.append(Followed(outcome, out_path.read_bytes(), downlink, fell_back))

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    return thread, results, downlink


def test_negotiated_transport_is_used(deployment: Deployment, worker: WorkerAgent) -> None:
    assert transport_of(worker.downlink) == deployment.name
    config = deployment.client_config()
    api = Api.from_config(config)
    downlink = open_downlink(api, config, "client", background=False)
    # The drop-in's way: long-poll at once, the transport once it is connected.
    background = open_downlink(api, config, "client")
    try:
        assert transport_of(downlink) == deployment.name
        wait_until(lambda: transport_of(background) == deployment.name, timeout=10)
    finally:
        for each in (downlink, background):
            if each is not None:
                each.close()
        api.close()


def test_output_is_complete_and_in_order_per_recipient(
    deployment: Deployment, worker: WorkerAgent, tmp_path: Path
) -> None:
    """Two clients, two concurrent jobs: each gets exactly its own bytes, in order."""
    one, two = ffmpeg_raw(1), ffmpeg_raw(1.2)
    runs = [run_job(deployment, tmp_path, one, "c1"), run_job(deployment, tmp_path, two, "c2")]
    for thread, _, _ in runs:
        thread.join(45)
    (first,), (second,) = runs[0][1], runs[1][1]
    assert first.outcome.exit_code == 0 and second.outcome.exit_code == 0
    assert hashlib.sha256(first.stdout).hexdigest() == local_digest(one)
    assert hashlib.sha256(second.stdout).hexdigest() == local_digest(two)
    assert transport_of(first.downlink) == deployment.name


def test_no_loss_across_broker_restart_mid_job(
    deployment: Deployment, worker: WorkerAgent, tmp_path: Path
) -> None:
    if deployment.outage_start is None or deployment.outage_end is None:
        pytest.skip(f"{deployment.name} has no broker to restart")
    args = ffmpeg_raw(4, realtime=True)
    thread, results, downlink = run_job(deployment, tmp_path, args)
    time.sleep(1.0)
    deployment.outage_start()
    try:
        assert downlink is not None
        wait_until(lambda: downlink.fallen_back, timeout=10)
        time.sleep(1.0)
    finally:
        deployment.outage_end()
    thread.join(45)
    (followed,) = results
    assert followed.outcome.exit_code == 0
    assert hashlib.sha256(followed.stdout).hexdigest() == local_digest(ffmpeg_raw(4))
    assert followed.fell_back
    # The worker went back to its broker once it answered the handshake again.
    assert worker.downlink is not None
    wait_until(lambda: not worker.downlink.long_poll, timeout=20)  # type: ignore[union-attr]


def test_broker_redelivers_after_reconnect(deployment: Deployment) -> None:
    """What the broker held for a worker while it was away arrives after it is back."""
    if deployment.name not in BROKERS:
        pytest.skip(f"{deployment.name} has no broker queue; reconnects catch up over HTTP")
    config = deployment.worker_config("w2")
    api = Api.from_config(config)
    endpoint = Endpoint("w2", "worker", config.coordinator_url, config.hmac_key, config.brokers)
    transport = create_transport(deployment.name, endpoint)
    transport.start()
    try:
        assert transport.wait_connected(10)
        transport.pause()
        assert not transport.healthy()
        token = "redelivered-" + os.urandom(4).hex()
        api.call(
            "POST", "/transport/ping", json_body={"transport": deployment.name, "token": token}
        )
        time.sleep(0.3)
        assert not transport.signals.wait_token(token, 0.2)
        transport.resume()
        assert transport.signals.wait_token(token, 10)
    finally:
        transport.close()
        api.close()


def test_worker_falls_back_to_http_and_returns(
    deployment: Deployment, worker: WorkerAgent, tmp_path: Path
) -> None:
    if deployment.name == "http":
        pytest.skip("http is the fallback itself")
    downlink = worker.downlink
    assert downlink is not None and not downlink.long_poll
    downlink.transport.pause()
    try:
        wait_until(lambda: downlink.long_poll, timeout=5)
        # Jobs still reach the worker while its transport is down.
        started = time.monotonic()
        thread, results, _ = run_job(deployment, tmp_path, ffmpeg_raw(0.2))
        thread.join(30)
        assert results and results[0].outcome.exit_code == 0
        assert time.monotonic() - started < 10
    finally:
        downlink.transport.resume()
    wait_until(lambda: not downlink.long_poll, timeout=20)
    thread, results, _ = run_job(deployment, tmp_path, ffmpeg_raw(0.2))
    thread.join(30)
    assert results and results[0].outcome.exit_code == 0


def test_failed_handshake_means_http(deployment: Deployment) -> None:
    """Connected to a broker the coordinator does not publish on: not trusted, HTTP used."""
    if deployment.name not in BROKERS:
        pytest.skip("only brokers can be misconfigured this way")
    config = deployment.worker_config("w2")
    if deployment.name == "mqtt":
        config.brokers.mqtt_prefix = "elsewhere"
    else:
        config.brokers.rabbitmq_exchange = config.brokers.rabbitmq_exchange + "-elsewhere"
    api = Api.from_config(config)
    endpoint = Endpoint("w2", "worker", config.coordinator_url, config.hmac_key, config.brokers)

    def call(method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return api.call(method, path, json_body=body)

    downlink = Downlink(endpoint, [deployment.name, "http"], call, handshake_seconds=1.5)
    try:
        assert downlink.open() == "http"
        assert downlink.long_poll
    finally:
        downlink.close()
        api.close()
