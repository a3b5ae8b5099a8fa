"""Real brokers for transport tests: our own Mosquitto, a private RabbitMQ user.

Outages are real but confined to the test: the MQTT tests run their own ``mosquitto``
on a free port and stop/start it; the RabbitMQ tests connect every party of the test
as a user of its own and delete/re-create that user, which makes the shared broker
close exactly those connections and refuse them until the user is back (stopping the
shared node would disturb everything else using it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dffmpeg import signing
from dffmpeg.transport.base import Address, message, to
from tests.helpers import free_port, port_open, wait_until

RABBIT_HOST = "127.0.0.1"
RABBIT_PORT = 5672


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None


def rabbitmq_available() -> bool:
    if not port_open(RABBIT_HOST, RABBIT_PORT) or shutil.which("rabbitmqctl") is None:
        return False
    probe = subprocess.run(["rabbitmqctl", "list_vhosts"], capture_output=True, timeout=30)
    return probe.returncode == 0


class OwnMosquitto:
    """A mosquitto process of our own, so a test may stop and start it."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.config = root / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.log = root / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["mosquitto", "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        wait_until(lambda: port_open("127.0.0.1", self.port), timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def password_file(path: Path, passwords: dict[str, str]) -> Path:
    """A mosquitto password file with ``{user: password}``."""
    for i, (user, password) in enumerate(passwords.items()):
        flags = ["-b", "-c"] if i == 0 else ["-b"]
        subprocess.run(["mosquitto_passwd", *flags, str(path), user, password], check=True)
    return path


@contextmanager
def mosquitto_with(root: Path, settings: str) -> Iterator[int]:
    """A mosquitto of our own on a free port with ``settings`` (config lines); its port."""
    port = free_port()
    # Started as root, mosquitto would switch to its own user, who cannot read ``root``.
    stay = "user root\n" if os.geteuid() == 0 else ""
    config = root / "mosquitto.conf"
    config.write_text(f"{stay}listener {port} 127.0.0.1\n{settings}")
    with (root / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=log, stderr=log)
    try:
        wait_until(lambda: port_open("127.0.0.1", port), timeout=10)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)


class RabbitUser:
    """A RabbitMQ user of our own on vhost ``/``; deleting it is our outage."""

    def __init__(self) -> None:
        self.name = f"dffmpeg-test-{secrets.token_hex(4)}"
        self.password = secrets.token_hex(8)
        self.exchange = f"dffmpeg-test-{secrets.token_hex(4)}"

    @property
    def url(self) -> str:
        return f"amqp://{self.name}:{self.password}@{RABBIT_HOST}:{RABBIT_PORT}/%2F"

    def create(self) -> None:
        rabbitmqctl("add_user", self.name, self.password)
        rabbitmqctl("set_permissions", "-p", "/", self.name, ".*", ".*", ".*")

    def delete(self) -> None:
        rabbitmqctl("delete_user", self.name)

    def cleanup(self) -> None:
        """Remove what the test left on the shared broker: queues, exchange, user."""
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        channel: Any = conn.channel()
        for kind in ("queues", "exchanges"):
            out = subprocess.run(
                ["rabbitmqctl", f"list_{kind}", "-q", "name"], capture_output=True, timeout=60
            )
            for name in out.stdout.decode().split():
                if not name.startswith(self.exchange):
                    continue
                if kind == "queues":
                    channel.queue_delete(name)
                else:
                    channel.exchange_delete(name)
        conn.close()
        self.delete()


def sealed_ping(identity: str, token: str, key: str = "") -> tuple[Address, bytes]:
    """A handshake notification for ``identity``, sealed as the coordinator seals it."""
    address = to(identity, "ping")
    return address, signing.seal(key, address, message(key="ping", token=token))
