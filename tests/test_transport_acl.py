"""The access-control recipes of docs/transports.md, applied to real brokers.

Each identity receives what is addressed to it and cannot listen to another's topics.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dffmpeg.config import BrokerSettings
from dffmpeg.transport import create_publisher, create_transport
from dffmpeg.transport.base import Endpoint, message, to
from tests.brokers import (
    mosquitto_available,
    mosquitto_with,
    password_file,
    rabbitmq_available,
    rabbitmqctl,
    sealed_ping,
)
from tests.helpers import require, wait_until

MOSQUITTO_ACL = """\
user coordinator
topic write dffmpeg/#

pattern read dffmpeg/to/%u/#
pattern read dffmpeg/all
pattern read dffmpeg/jobs
"""


@pytest.fixture
def acl_mosquitto(tmp_path: Path) -> Iterator[str]:
    require(mosquitto_available(), "mosquitto")
    passwords = password_file(
        tmp_path / "passwords", {user: f"{user}-pw" for user in ("coordinator", "w1", "w2")}
    )
    acl = tmp_path / "acl"
    acl.write_text(MOSQUITTO_ACL)
    settings = f"allow_anonymous false\npassword_file {passwords}\nacl_file {acl}\n"
    with mosquitto_with(tmp_path, settings) as port:
        yield f"127.0.0.1:{port}"


def test_mosquitto_acl_confines_each_worker(acl_mosquitto: str) -> None:
    def settings(user: str) -> BrokerSettings:
        return BrokerSettings(mqtt_url=f"mqtt://{user}:{user}-pw@{acl_mosquitto}")

    publisher = create_publisher("mqtt", settings("coordinator"))
    w1 = create_transport("mqtt", Endpoint("w1", "worker", brokers=settings("w1")))
    # w2's account, subscribing to w1's subtree by hand: the broker must deliver nothing.
    spy = create_transport("mqtt", Endpoint("w2", "worker", brokers=settings("w2")))
    publisher.start()
    w1.start()
    spy.start()
    try:
        assert w1.wait_connected(10) and spy.wait_connected(10)
        wait_until(publisher.healthy, timeout=10)
        spy_client: Any = getattr(spy, "client")  # noqa: B009
        spy_client.subscribe("dffmpeg/to/w1/#", qos=1)
        time.sleep(0.3)
        # Not sealed with w1's key: dropped, like anything a broker could make up.
        publisher.publish(to("w1", "ping"), message(token="forged"))
        publisher.publish(*sealed_ping("w1", "for-w1"))
        assert w1.signals.wait_token("for-w1", 5)
        assert "forged" not in w1.signals.tokens and w1.rejected == 1
        time.sleep(0.5)
        assert "for-w1" not in spy.signals.tokens
    finally:
        for part in (spy, w1, publisher):
            part.close()


@pytest.fixture
def acl_rabbitmq() -> Iterator[dict[str, str]]:
    require(rabbitmq_available(), "RabbitMQ on 127.0.0.1:5672 with rabbitmqctl")
    tag = secrets.token_hex(3)
    vhost = f"dffmpeg-acl-{tag}"
    users = {"coordinator": f"coord-{tag}", "w1": f"w1x{tag}", "w2": f"w2x{tag}"}
    rabbitmqctl("add_vhost", vhost)
    try:
        for user in users.values():
            rabbitmqctl("add_user", user, "pw")
        c, w1, w2 = users["coordinator"], users["w1"], users["w2"]
        rabbitmqctl("set_permissions", "-p", vhost, c, "^dffmpeg$", "^dffmpeg$", "^$")
        for w in (w1, w2):
            own = rf"dffmpeg\.worker\.{w}"
            rabbitmqctl(
                "set_permissions", "-p", vhost, w, f"^(dffmpeg|{own})$", f"^{own}$",
                f"^(dffmpeg|{own})$",
            )  # fmt: skip
            rabbitmqctl(
                "set_topic_permissions", "-p", vhost, w, "dffmpeg", "^$",
                rf"^(jobs|all|to\.{w}\..*)$",
            )  # fmt: skip
        yield {"vhost": vhost, **users}
    finally:
        for user in users.values():
            subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True)
        rabbitmqctl("delete_vhost", vhost)


def test_rabbitmq_permissions_confine_each_worker(acl_rabbitmq: dict[str, str]) -> None:
    import pika
    import pika.exceptions

    vhost = acl_rabbitmq["vhost"]

    def settings(user: str) -> BrokerSettings:
        return BrokerSettings(rabbitmq_url=f"amqp://{user}:pw@127.0.0.1:5672/{vhost}")

    w1_name = acl_rabbitmq["w1"]
    publisher = create_publisher("rabbitmq", settings(acl_rabbitmq["coordinator"]))
    w1 = create_transport("rabbitmq", Endpoint(w1_name, "worker", brokers=settings(w1_name)))
    publisher.start()
    w1.start()
    try:
        assert w1.wait_connected(10)
        wait_until(publisher.healthy, timeout=10)
        publisher.publish(*sealed_ping(w1_name, "for-w1"))
        assert w1.signals.wait_token("for-w1", 5)
        # w2 may not bind its queue to w1's routing keys, nor read w1's queue.
        w2 = acl_rabbitmq["w2"]
        params = pika.URLParameters(f"amqp://{w2}:pw@127.0.0.1:5672/{vhost}")
        for attempt in ("bind", "consume"):
            conn = pika.BlockingConnection(params)
            channel: Any = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="ACCESS_REFUSED"):
                if attempt == "bind":
                    channel.queue_declare(f"dffmpeg.worker.{w2}")
                    channel.queue_bind(f"dffmpeg.worker.{w2}", "dffmpeg", f"to.{w1_name}.ping")
                else:
                    channel.basic_consume(f"dffmpeg.worker.{w1_name}", lambda *a: None)
            conn.close()
    finally:
        w1.close()
        publisher.close()
