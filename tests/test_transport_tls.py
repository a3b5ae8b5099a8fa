"""MQTT and RabbitMQ over TLS, against brokers with a certificate of the test's own.

The test makes a private CA and a server certificate for 127.0.0.1 (with ``openssl``),
runs a mosquitto that only speaks TLS and only to known users, and checks that a party
trusting that CA (``ca_file``) with the right password hears the coordinator, and that
one with a wrong password, speaking plain MQTT, or trusting another CA does not connect.
The same for RabbitMQ, on a node of the test's own with only a TLS listener.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dffmpeg.config import BrokerSettings
from dffmpeg.transport import create_publisher, create_transport
from dffmpeg.transport.base import Endpoint
from tests.brokers import mosquitto_available, mosquitto_with, password_file, sealed_ping
from tests.helpers import free_port, port_open, process_env, require, wait_until


def make_certificates(root: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server key and certificate for IP 127.0.0.1 signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=root)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=dffmpeg test CA", "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    (root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext",
            "-out", "server.pem")  # fmt: skip
    return root / "ca.pem", root / "server.pem", root / "server.key"


def check_delivery_and_refusals(publisher: Any, worker: Any, refused: list[Any]) -> None:
    """``worker`` connects and hears ``publisher``; none of ``refused`` connects."""
    parts = [publisher, worker, *refused]
    for part in parts:
        part.start()
    try:
        assert worker.wait_connected(15)
        wait_until(publisher.healthy, timeout=15)
        worker.watch("ping")
        publisher.publish(*sealed_ping("w1", "over-tls"))
        assert worker.signals.wait_token("over-tls", 5)
        time.sleep(1.0)  # ample for a local handshake to succeed, had it been allowed to
        assert [part.healthy() for part in refused] == [False] * len(refused)
    finally:
        for part in parts:
            part.close()


@pytest.fixture
def tls_mosquitto(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    require(mosquitto_available(), "mosquitto")
    require(shutil.which("openssl") is not None, "openssl")
    ca, cert, key = make_certificates(tmp_path)
    passwords = password_file(tmp_path / "passwords", {"coordinator": "c-pw", "w1": "w1-pw"})
    settings = (
        f"allow_anonymous false\npassword_file {passwords}\n"
        f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\npersistence false\n"
    )
    with mosquitto_with(tmp_path, settings) as port:
        yield port, ca


def test_mqtt_over_tls_with_a_password(tls_mosquitto: tuple[int, Path]) -> None:
    port, ca = tls_mosquitto

    def settings(
        user: str, password: str, ca_file: Path | None = ca, scheme: str = "mqtts"
    ) -> BrokerSettings:
        url = f"{scheme}://{user}:{password}@127.0.0.1:{port}"
        return BrokerSettings(mqtt_url=url, mqtt_ca_file=str(ca_file) if ca_file else None)

    publisher = create_publisher("mqtt", settings("coordinator", "c-pw"))
    worker = create_transport("mqtt", Endpoint("w1", "worker", brokers=settings("w1", "w1-pw")))
    refused = [
        create_transport("mqtt", Endpoint("w1", "worker", brokers=bad))
        for bad in (
            settings("w1", "wrong"),
            settings("w1", "w1-pw", scheme="mqtt"),  # plain MQTT to a TLS listener
        )
    ]
    check_delivery_and_refusals(publisher, worker, refused)


# In a process of its own: paho-mqtt leaves each failed handshake's socket to the garbage
# collector, and the ResourceWarning that follows would surface outside any one test.
UNTRUSTED = """
import sys
from dffmpeg.config import BrokerSettings
from dffmpeg.transport import create_transport
from dffmpeg.transport.base import Endpoint
brokers = BrokerSettings(mqtt_url=sys.argv[1], mqtt_ca_file=sys.argv[2] or None)
party = create_transport("mqtt", Endpoint("w1", "worker", brokers=brokers))
party.start()
print(party.wait_connected(3), flush=True)
party.close()
"""


def test_mqtt_refuses_a_broker_certificate_it_does_not_trust(
    tls_mosquitto: tuple[int, Path], tmp_path: Path
) -> None:
    port, ca = tls_mosquitto
    other = tmp_path / "other-ca"
    other.mkdir()
    stranger, _, _ = make_certificates(other)  # a CA that did not sign the broker's cert
    url = f"mqtts://w1:w1-pw@127.0.0.1:{port}"

    def connects(ca_file: str) -> bool:
        out = subprocess.run(
            [sys.executable, "-c", UNTRUSTED, url, ca_file],
            capture_output=True,
            timeout=30,
            env=process_env(),
        )
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout.decode().strip() == "True"

    assert connects(str(ca))  # the control: the same script with the right CA
    assert not connects(str(stranger))
    assert not connects("")  # the system's CAs do not know ours either


@pytest.fixture
def tls_rabbitmq() -> Iterator[tuple[int, Path]]:
    """A RabbitMQ node of the test's own that only speaks TLS (the shared node has no
    TLS listener, and must not be reconfigured)."""
    require(shutil.which("rabbitmq-server") is not None, "rabbitmq-server")
    require(shutil.which("openssl") is not None, "openssl")
    # Run as root, rabbitmq-server switches to its own user, who cannot enter pytest's
    # private temporary directories: a directory of its own under /tmp, open to it.
    with tempfile.TemporaryDirectory(prefix="dffmpeg-rabbit-tls-") as name:
        yield from _rabbit_node(Path(name))


def _rabbit_node(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    ca, cert, key = make_certificates(tmp_path)
    port = free_port()
    config = tmp_path / "rabbitmq.conf"
    config.write_text(
        f"listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\n"
        f"ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\n"
        f"ssl_options.keyfile = {key}\nssl_options.verify = verify_none\n"
        "ssl_options.fail_if_no_peer_cert = false\n"
    )
    plugins = tmp_path / "plugins"
    plugins.write_text("[].\n")
    for sub in ("mnesia", "log"):
        (tmp_path / sub).mkdir()
    for path in (tmp_path, *tmp_path.iterdir()):
        path.chmod(0o777 if path.is_dir() else 0o644)
    node = f"dffmpeg-tls-{os.getpid()}-{port}@localhost"
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_PORT": str(free_port()),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_CONFIG_FILE": str(config),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(plugins),
        "RABBITMQ_MNESIA_BASE": str(tmp_path / "mnesia"),
        "RABBITMQ_LOG_BASE": str(tmp_path / "log"),
        "RABBITMQ_PID_FILE": str(tmp_path / "rabbitmq.pid"),
    }
    with (tmp_path / "rabbitmq.out").open("wb") as out:
        proc = subprocess.Popen(
            ["rabbitmq-server"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=tmp_path,  # where a crash dump would go
            start_new_session=True,
        )
    try:
        wait_until(lambda: port_open("127.0.0.1", port) or proc.poll() is not None, timeout=45)
        assert proc.poll() is None, (tmp_path / "rabbitmq.out").read_text()[-2000:]
        yield port, ca
    finally:
        subprocess.run(["rabbitmqctl", "-n", node, "shutdown"], capture_output=True, timeout=60)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_rabbitmq_over_tls(tls_rabbitmq: tuple[int, Path], tmp_path: Path) -> None:
    port, ca = tls_rabbitmq
    other = tmp_path / "other-ca"
    other.mkdir()
    stranger, _, _ = make_certificates(other)

    def settings(ca_file: Path, scheme: str = "amqps") -> BrokerSettings:
        url = f"{scheme}://guest:guest@127.0.0.1:{port}/"
        return BrokerSettings(rabbitmq_url=url, rabbitmq_ca_file=str(ca_file))

    publisher = create_publisher("rabbitmq", settings(ca))
    worker = create_transport("rabbitmq", Endpoint("w1", "worker", brokers=settings(ca)))
    refused = [
        create_transport("rabbitmq", Endpoint("w2", "worker", brokers=bad))
        for bad in (settings(stranger), settings(ca, scheme="amqp"))
    ]
    check_delivery_and_refusals(publisher, worker, refused)
