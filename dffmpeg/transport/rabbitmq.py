"""RabbitMQ transport (pika): one topic exchange, a durable queue per worker, a queue per job.

Routing keys are the addresses joined with dots: ``to.IDENTITY.worker``,
``to.IDENTITY.output.JOB``, ``to.IDENTITY.input.JOB``, ``to.IDENTITY.ping``, ``jobs``,
``all``. A worker consumes from its durable queue ``EXCHANGE.worker.IDENTITY`` (which
keeps notifications while the worker is away and redelivers unacknowledged ones); a
client consumes from ``EXCHANGE.client.IDENTITY.JOB``, an auto-deleted queue for the
job it follows. Queue names and routing keys start with the identity, so RabbitMQ's
resource and topic permissions can confine each user (docs/transports.md).

pika's ``BlockingConnection`` is not thread-safe: each connection is owned by one thread
of ours, and other threads hand it work with ``add_callback_threadsafe``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions

from dffmpeg.transport.base import (
    ALL,
    JOBS,
    Address,
    Endpoint,
    Publisher,
    Transport,
    TransportError,
    addresses_for,
    message,
    reconnect_backoff,
    segment,
    to,
)

log = logging.getLogger(__name__)
# pika reports every connection step at INFO; only problems matter in our logs.
logging.getLogger("pika").setLevel(logging.WARNING)

# Notifications are hints; a backlog beyond this is useless (one HTTP read catches up).
QUEUE_ARGUMENTS = {"x-max-length": 1000, "x-overflow": "drop-head"}
CONNECTION_ERRORS = (pika.exceptions.AMQPError, OSError)


def connection_parameters(
    url: str | None, ca_file: str | None, name: str = "dffmpeg"
) -> pika.URLParameters:
    if not url:
        raise TransportError("the rabbitmq transport needs rabbitmq: {url: amqp://user:pass@host}")
    if not url.startswith(("amqp://", "amqps://")):
        raise TransportError(f"rabbitmq url must be amqp[s]://user:pass@host[:port]/vhost: {url}")
    params = pika.URLParameters(url)
    if url.startswith("amqps://"):
        context = ssl.create_default_context(cafile=ca_file)
        params.ssl_options = pika.SSLOptions(context, params.host)
    params.heartbeat = 30
    params.blocked_connection_timeout = 30
    params.connection_attempts = 1
    params.socket_timeout = 5
    # Shown by the management UI and rabbitmqctl: which party a connection belongs to.
    params.client_properties = {"connection_name": name}
    return params


def routing_key(address: Address) -> str:
    return ".".join(address)


class RabbitTransport(Transport):
    name = "rabbitmq"

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint)
        self.params = connection_parameters(
            endpoint.brokers.rabbitmq_url,
            endpoint.brokers.rabbitmq_ca_file,
            f"dffmpeg {endpoint.role} {endpoint.identity}",
        )
        self.exchange = endpoint.brokers.rabbitmq_exchange
        self._stopped = threading.Event()
        self._paused = threading.Event()
        self._connected = threading.Event()
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._queues: dict[str, str] = {}  # key -> queue name (clients: one per job)
        self._thread: threading.Thread | None = None

    @property
    def is_worker(self) -> bool:
        return self.endpoint.role == "worker"

    def worker_queue(self) -> str:
        return f"{self.exchange}.worker.{segment(self.endpoint.identity)}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="transport-rabbitmq", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._call(lambda: None)  # wakes the connection thread
        if self._thread is not None:
            self._thread.join(5)

    def healthy(self) -> bool:
        return self._connected.is_set()

    def watch(self, key: str, timeout: float = 5.0) -> None:
        super().watch(key)
        done = threading.Event()

        def bind() -> None:
            self._bind_key(key)
            done.set()

        if self._call(bind):
            done.wait(timeout)

    def unwatch(self, key: str) -> None:
        super().unwatch(key)
        self._call(lambda: self._unbind_key(key))

    def pause(self) -> None:
        self._paused.set()
        self._call(lambda: None)  # wakes the connection thread, which then disconnects
        for _ in range(500):
            if not self._connected.is_set():
                break
            time.sleep(0.01)

    def resume(self) -> None:
        self._paused.clear()

    def _call(self, fn: Callable[[], None]) -> bool:
        conn = self._conn
        if conn is None or not self._connected.is_set():
            return False
        try:
            conn.add_callback_threadsafe(fn)
            return True
        except CONNECTION_ERRORS:
            return False

    # -- on the connection thread ----------------------------------------------------

    def _run(self) -> None:
        backoff = reconnect_backoff()
        while not self._stopped.is_set():
            if self._paused.is_set():
                self._stopped.wait(0.05)
                continue
            try:
                self._conn = pika.BlockingConnection(self.params)
                self._setup()
                self._connected.set()
                backoff.reset()
                self.signals.fire_all()
                while not self._stopped.is_set() and self._conn.is_open:
                    self._conn.process_data_events(time_limit=1)
                    if self._paused.is_set():
                        break
            except CONNECTION_ERRORS as exc:
                if not self._stopped.is_set():
                    log.warning("rabbitmq transport disconnected: %s", exc)
            finally:
                self._connected.clear()
                conn, self._conn, self._channel = self._conn, None, None
                self._queues.clear()
                if conn is not None and conn.is_open:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        conn.close()
            if not self._stopped.is_set():
                self._stopped.wait(backoff.next_delay())

    def _setup(self) -> None:
        assert self._conn is not None
        channel = self._conn.channel()
        channel.basic_qos(prefetch_count=100)
        channel.exchange_declare(self.exchange, "topic", durable=True)
        self._channel = channel
        if self.is_worker:
            name = self.worker_queue()
            channel.queue_declare(name, durable=True, arguments=QUEUE_ARGUMENTS)
            for address in (ALL, JOBS, to(self.endpoint.identity, "ping")):
                channel.queue_bind(name, self.exchange, routing_key(address))
            channel.basic_consume(name, self._on_message)
            self._queues["*"] = name
        for key in self.watched():
            self._bind_key(key)

    def _queue_for(self, key: str) -> str:
        if self.is_worker:
            return self._queues["*"]
        name = self._queues.get(key)
        if name is None:
            suffix = segment(key.partition(":")[2] or key)
            name = f"{self.exchange}.client.{segment(self.endpoint.identity)}.{suffix}"
            self._channel.queue_declare(
                name, auto_delete=True, exclusive=True, arguments=QUEUE_ARGUMENTS
            )
            self._channel.queue_bind(name, self.exchange, routing_key(ALL))
            self._channel.basic_consume(name, self._on_message)
            self._queues[key] = name
        return name

    def _bind_key(self, key: str) -> None:
        if self._channel is None:
            return
        name = self._queue_for(key)
        for address in addresses_for(self.endpoint.identity, self.endpoint.role, key):
            self._channel.queue_bind(name, self.exchange, routing_key(address))

    def _unbind_key(self, key: str) -> None:
        if self._channel is None:
            return
        if self.is_worker:
            name = self._queues["*"]
            for address in addresses_for(self.endpoint.identity, self.endpoint.role, key):
                if address not in (JOBS, ALL):
                    self._channel.queue_unbind(name, self.exchange, routing_key(address))
        elif key in self._queues:
            self._channel.queue_delete(self._queues.pop(key))

    def _on_message(self, channel: Any, method: Any, _props: Any, body: bytes) -> None:
        self.deliver(tuple(method.routing_key.split(".")), body)
        channel.basic_ack(method.delivery_tag)


class RabbitPublisher(Publisher):
    """Publishes from one thread that owns the connection; ``publish`` only enqueues."""

    name = "rabbitmq"

    def __init__(self, settings: Any, identity: str = "coordinator") -> None:
        self.params = connection_parameters(
            settings.rabbitmq_url, settings.rabbitmq_ca_file, f"dffmpeg {identity}"
        )
        self.exchange = settings.rabbitmq_exchange
        self._queue: queue.SimpleQueue[tuple[Address, bytes] | None] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="publish-rabbitmq", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stopped.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(5)

    def healthy(self) -> bool:
        return self._connected.is_set()

    def publish(self, address: Address, payload: bytes) -> None:
        if self._connected.is_set():
            self._queue.put((address, payload))

    def _run(self) -> None:
        backoff = reconnect_backoff()
        while not self._stopped.is_set():
            conn = None
            try:
                conn = pika.BlockingConnection(self.params)
                channel = conn.channel()
                channel.exchange_declare(self.exchange, "topic", durable=True)
                self._connected.set()
                backoff.reset()
                channel.basic_publish(self.exchange, routing_key(ALL), message(resync=True))
                self._pump(conn, channel)
            except CONNECTION_ERRORS as exc:
                if not self._stopped.is_set():
                    log.warning("rabbitmq publisher disconnected: %s", exc)
            finally:
                self._connected.clear()
                if conn is not None and conn.is_open:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        conn.close()
            if not self._stopped.is_set():
                self._stopped.wait(backoff.next_delay())

    def _pump(self, conn: pika.BlockingConnection, channel: Any) -> None:
        while not self._stopped.is_set():
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                conn.process_data_events(0)  # heartbeats
                continue
            if item is None:
                return
            address, payload = item
            channel.basic_publish(self.exchange, routing_key(address), payload)
