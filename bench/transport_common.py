"""A coordinator with one transport enabled, for the transport benchmarks.

MQTT runs on a mosquitto process of our own; RabbitMQ uses the broker on
127.0.0.1:5672 (guest) with an exchange of our own, removed afterwards.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.brokers import OwnMosquitto
from tests.helpers import free_port, health, process_env, running, wait_until, write_yaml

TRANSPORTS = ["http", "stream", "mqtt", "rabbitmq"]
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass
class Setup:
    name: str
    url: str
    root: Path
    keys: dict[str, str]
    blocks: dict[str, Any] = field(default_factory=dict)
    coordinator_pid: int = 0

    def party(self, identity: str) -> dict[str, Any]:
        return {
            "client_id": identity,
            "hmac_key": self.keys[identity],
            "coordinator_url": self.url,
            "transports": [self.name, "http"],
            **self.blocks,
        }


def add_users(database_url: str, identities: dict[str, str]) -> dict[str, str]:
    from coordinator import create_app, users
    from coordinator.db import db

    app = create_app({"database_url": database_url}, start_janitor=False)
    with app.app_context():
        keys = {i: users.add_user(i, role)["hmac_key"] for i, role in identities.items()}
        db.engine.dispose()
    return keys


def drop_rabbit_exchange(exchange: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(RABBIT_URL))
    channel: Any = conn.channel()
    out = subprocess.run(["rabbitmqctl", "list_queues", "-q", "name"], capture_output=True)
    for name in out.stdout.decode().split():
        if name.startswith(exchange + "."):
            channel.queue_delete(name)
    channel.exchange_delete(exchange)
    conn.close()


@contextmanager
def broker(transport: str, root: Path) -> Iterator[dict[str, Any]]:
    """The ``mqtt:``/``rabbitmq:`` settings block for coordinators and worker alike."""
    if transport == "mqtt":
        own = OwnMosquitto(root)
        own.start()
        try:
            yield {"mqtt": {"url": own.url}}
        finally:
            own.stop()
    elif transport == "rabbitmq":
        exchange = f"dffmpeg-bench-{secrets.token_hex(4)}"
        try:
            yield {"rabbitmq": {"url": RABBIT_URL, "exchange": exchange}}
        finally:
            drop_rabbit_exchange(exchange)
    else:
        yield {}


@contextmanager
def coordinator(
    name: str,
    identities: dict[str, str],
    threads: int = 64,
    workers: int = 1,
    extra: dict[str, Any] | None = None,
) -> Iterator[Setup]:
    with ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
        blocks = stack.enter_context(broker(name, root))
        port = free_port()
        database_url = f"sqlite:///{root / 'coordinator.db'}"
        config = write_yaml(
            root / "coordinator.yaml",
            {
                "port": port,
                "database_url": database_url,
                "transports": [name, "http"],
                "gunicorn_threads": threads,
                "gunicorn_workers": workers,
                **blocks,
                **(extra or {}),
            },
        )
        keys = add_users(database_url, identities)
        cmd = [sys.executable, "-m", "coordinator.serve", "--config", str(config)]
        proc = stack.enter_context(running(cmd, root / "coordinator.log", env=process_env()))
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: health(url) == 200, timeout=30)
        yield Setup(name, url, root, keys, blocks, proc.pid)
