"""MQTT transport (paho-mqtt 2.x): per-recipient topics under a prefix, QoS 1.

Topics are ``PREFIX/to/IDENTITY/worker``, ``PREFIX/to/IDENTITY/output/JOB``,
``PREFIX/to/IDENTITY/input/JOB``, ``PREFIX/to/IDENTITY/ping`` plus the broadcasts
``PREFIX/jobs`` (workers) and ``PREFIX/all``. With the MQTT username equal to the
identity, one Mosquitto ACL pattern (``pattern read PREFIX/to/%u/#``) confines everyone
to their own topics (docs/transports.md).

Workers keep a persistent session (fixed client id, ``clean_session=False``) so the
broker queues QoS 1 notifications while the worker is briefly away; short-lived clients
use a clean session. paho's network thread reconnects with back-off by itself,
including when the broker is down at start-up.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from dffmpeg.transport.base import (
    ALL,
    Address,
    Endpoint,
    Publisher,
    Transport,
    TransportError,
    addresses_for,
    message,
)

log = logging.getLogger(__name__)

QOS = 1
KEEPALIVE_SECONDS = 15


@dataclass
class MqttTarget:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str | None) -> MqttTarget:
        if not url:
            raise TransportError("the mqtt transport needs mqtt: {url: mqtt://user:pass@host}")
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise TransportError(f"mqtt url must be mqtt[s]://[user:pass@]host[:port], not {url}")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


def new_client(target: MqttTarget, client_id: str, persistent: bool, ca_file: str | None) -> Any:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    if target.username:
        client.username_pw_set(target.username, target.password)
    if target.tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(min_delay=1, max_delay=15)
    return client


class MqttTransport(Transport):
    name = "mqtt"

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        brokers = endpoint.brokers
        self.target = MqttTarget.parse(brokers.mqtt_url)
        self.prefix = brokers.mqtt_prefix
        worker = endpoint.role == "worker"
        client_id = f"dffmpeg-{endpoint.role}-{endpoint.identity}"
        if not worker:
            client_id += "-" + secrets.token_hex(4)
        self.client = new_client(self.target, client_id[:120], worker, brokers.mqtt_ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._connected = threading.Event()
        self._acks: dict[int, threading.Event] = {}
        self._acks_lock = threading.Lock()

    def topic(self, address: Address) -> str:
        return "/".join((self.prefix, *address))

    def _topics(self, key: str) -> list[str]:
        return [
            self.topic(a) for a in addresses_for(self.endpoint.identity, self.endpoint.role, key)
        ]

    def start(self) -> None:
        self.client.connect_async(self.target.host, self.target.port, KEEPALIVE_SECONDS)
        self.client.loop_start()

    def close(self) -> None:
        self._connected.clear()  # first: the disconnect below is not an outage
        self.client.disconnect()
        self.client.loop_stop()

    def healthy(self) -> bool:
        return self._connected.is_set()

    def pause(self) -> None:
        self.close()  # a clean disconnect keeps a worker's persistent session

    def resume(self) -> None:
        self.client.reconnect_delay_set(min_delay=1, max_delay=15)
        self.client.connect_async(self.target.host, self.target.port, KEEPALIVE_SECONDS)
        self.client.loop_start()

    def watch(self, key: str, timeout: float = 5.0) -> None:
        super().watch(key)
        if self._connected.is_set():
            self._subscribe(self._topics(key), timeout)

    def unwatch(self, key: str) -> None:
        super().unwatch(key)
        for topic in self._topics(key):
            self.client.unsubscribe(topic)

    def _subscribe(self, topics: list[str], timeout: float) -> None:
        if not topics:
            return
        done = threading.Event()
        with self._acks_lock:
            result, mid = self.client.subscribe([(t, QOS) for t in topics])
            if result == mqtt.MQTT_ERR_SUCCESS and mid is not None:
                self._acks[mid] = done
        if timeout and result == mqtt.MQTT_ERR_SUCCESS:
            done.wait(timeout)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        with self._acks_lock:
            event = self._acks.pop(mid, None)
        if event is not None:
            event.set()

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt connect refused: %s", reason)
            return
        topics = [self.topic(ALL)]
        for key in ["ping", *self.watched()]:
            topics += self._topics(key)
        # Not waiting for SUBACK here: this runs on paho's network thread.
        self.client.subscribe([(t, QOS) for t in dict.fromkeys(topics)])
        self._connected.set()
        self.signals.fire_all()

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if self._connected.is_set():
            log.warning("mqtt disconnected (%s); reconnecting", reason)
        self._connected.clear()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        topic: str = msg.topic
        if not topic.startswith(self.prefix + "/"):
            return
        self.deliver(tuple(topic[len(self.prefix) + 1 :].split("/")), bytes(msg.payload))


class MqttPublisher(Publisher):
    name = "mqtt"

    def __init__(self, settings: Any, identity: str = "coordinator") -> None:
        self.target = MqttTarget.parse(settings.mqtt_url)
        self.prefix = settings.mqtt_prefix
        client_id = f"dffmpeg-coordinator-{identity}-{secrets.token_hex(4)}"
        self.client = new_client(self.target, client_id, False, settings.mqtt_ca_file)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._connected = threading.Event()
        # paho queues QoS 1 messages while disconnected; bound that so an outage costs
        # little memory (parties catch up over HTTP anyway).
        self.client.max_queued_messages_set(1000)

    def start(self) -> None:
        self.client.connect_async(self.target.host, self.target.port, KEEPALIVE_SECONDS)
        self.client.loop_start()

    def close(self) -> None:
        self._connected.clear()
        self.client.disconnect()
        self.client.loop_stop()

    def healthy(self) -> bool:
        return self._connected.is_set()

    def publish(self, address: Address, payload: bytes) -> None:
        if not self._connected.is_set():
            return
        try:
            self.client.publish("/".join((self.prefix, *address)), payload, qos=QOS)
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("mqtt publish failed: %s", exc)

    def _on_connect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt connect refused: %s", reason)
            return
        self._connected.set()
        # Whatever was published while we were away may be lost: everyone re-reads.
        self.client.publish("/".join((self.prefix, *ALL)), message(resync=True), qos=QOS)

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: Any, _p: Any) -> None:
        if self._connected.is_set():
            log.warning("mqtt publisher disconnected (%s); reconnecting", reason)
        self._connected.clear()
