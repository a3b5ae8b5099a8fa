"""A broker that is down when a party starts is not an error: the party connects later."""

from __future__ import annotations

import time
from pathlib import Path

from dffmpeg.config import BrokerSettings
from dffmpeg.transport import create_publisher, create_transport
from dffmpeg.transport.base import Endpoint
from tests.brokers import (
    OwnMosquitto,
    RabbitUser,
    mosquitto_available,
    rabbitmq_available,
    sealed_ping,
)
from tests.helpers import require, wait_until


def test_mqtt_party_and_publisher_connect_once_the_broker_is_up(tmp_path: Path) -> None:
    require(mosquitto_available(), "mosquitto")
    broker = OwnMosquitto(tmp_path)  # not started yet
    settings = BrokerSettings(mqtt_url=broker.url)
    party = create_transport("mqtt", Endpoint("w1", "worker", brokers=settings))
    publisher = create_publisher("mqtt", settings)
    party.start()
    publisher.start()
    try:
        time.sleep(1.0)
        assert not party.healthy() and not publisher.healthy()
        broker.start()
        assert party.wait_connected(20)
        wait_until(publisher.healthy, timeout=20)
        time.sleep(0.2)
        publisher.publish(*sealed_ping("w1", "late"))
        assert party.signals.wait_token("late", 5)
    finally:
        party.close()
        publisher.close()
        broker.stop()


def test_rabbitmq_party_and_publisher_connect_once_the_broker_lets_them(tmp_path: Path) -> None:
    require(rabbitmq_available(), "RabbitMQ on 127.0.0.1:5672 with rabbitmqctl")
    user = RabbitUser()  # refused until the user exists: the broker is "down" for us
    settings = BrokerSettings(rabbitmq_url=user.url, rabbitmq_exchange=user.exchange)
    party = create_transport("rabbitmq", Endpoint("w1", "worker", brokers=settings))
    publisher = create_publisher("rabbitmq", settings)
    party.start()
    publisher.start()
    try:
        time.sleep(1.0)
        assert not party.healthy() and not publisher.healthy()
        user.create()
        assert party.wait_connected(30)
        wait_until(publisher.healthy, timeout=30)
        publisher.publish(*sealed_ping("w1", "late"))
        assert party.signals.wait_token("late", 5)
    finally:
        party.close()
        publisher.close()
        user.cleanup()
