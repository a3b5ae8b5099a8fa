"""Transports: how coordinator notifications reach workers and clients.

Backends are named in a registry of ``"module:Class"`` strings and imported only when
chosen, so paho-mqtt and pika are never loaded by a drop-in that uses HTTP. See
``base.py`` for the contract and docs/transports.md for the whole picture.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from dffmpeg.transport.base import Endpoint, Publisher, Transport, TransportError

# A library's warnings must never reach the drop-in's stderr through logging's last-resort
# handler (the caller reads that stream); parties that configure logging still get them.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Party side (worker, client) of each backend.
TRANSPORTS = {
    "http": "dffmpeg.transport.http:LongPoll",
    "stream": "dffmpeg.transport.http:Stream",
    "mqtt": "dffmpeg.transport.mqtt:MqttTransport",
    "rabbitmq": "dffmpeg.transport.rabbitmq:RabbitTransport",
}
# Coordinator side of the broker backends ("http" and "stream" are served in-process).
PUBLISHERS = {
    "mqtt": "dffmpeg.transport.mqtt:MqttPublisher",
    "rabbitmq": "dffmpeg.transport.rabbitmq:RabbitPublisher",
}
NAMES = tuple(TRANSPORTS)


def _load(registry: dict[str, str], name: str) -> Any:
    try:
        target = registry[name]
    except KeyError:
        raise TransportError(f"unknown transport {name!r} (known: {', '.join(NAMES)})") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def transport_class(name: str) -> type[Transport]:
    cls: type[Transport] = _load(TRANSPORTS, name)
    return cls


def create_transport(name: str, endpoint: Endpoint) -> Transport:
    return transport_class(name)(endpoint)


def create_publisher(name: str, settings: Any) -> Publisher:
    publisher: Publisher = _load(PUBLISHERS, name)(settings)
    return publisher


def choose(coordinator: list[str], party: list[str]) -> str:
    """The negotiation rule: the best combined rank, ties to the coordinator's order.

    A transport's score is its position in the coordinator's list plus its position in
    the party's list; the lowest score wins and a tie goes to the one the coordinator
    lists first. So both orders count, the coordinator breaks ties, and a transport only
    one side offers is never chosen. ``http`` is always possible and wins when nothing
    else is shared.
    """
    shared = [name for name in coordinator if name in party and name in TRANSPORTS]
    if not shared:
        return "http"
    return min(
        shared,
        key=lambda name: (coordinator.index(name) + party.index(name), coordinator.index(name)),
    )


__all__ = [
    "NAMES",
    "Endpoint",
    "Publisher",
    "Transport",
    "TransportError",
    "choose",
    "create_publisher",
    "create_transport",
    "transport_class",
]
