"""YAML configuration: where it is found and what each part reads from it.

Search order for component C (coordinator, worker, client, console): the ``--config``
flag, env ``DFFMPEG_<C>_CONFIG``, ``./dffmpeg-<c>.yaml``, ``~/.config/dffmpeg/<c>.yaml``,
``/etc/dffmpeg/<c>.yaml``. The first that exists wins; nothing is merged.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dffmpeg.paths import PathMappingError, validate_paths


class ConfigError(Exception):
    """The configuration is missing or wrong; the message says what to fix."""


def candidates(component: str) -> list[Path]:
    paths: list[Path] = []
    env = os.environ.get(f"DFFMPEG_{component.upper()}_CONFIG")
    if env:
        paths.append(Path(env))
    paths.append(Path.cwd() / f"dffmpeg-{component}.yaml")
    paths.append(Path.home() / ".config" / "dffmpeg" / f"{component}.yaml")
    paths.append(Path("/etc/dffmpeg") / f"{component}.yaml")
    return paths


def find_config(component: str, explicit: str | None = None) -> Path | None:
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {explicit} does not exist")
        return path
    for path in candidates(component):
        if path.is_file():
            return path
    return None


def read_yaml(path: Path) -> dict[str, Any]:
    # Imported here: PyYAML costs milliseconds the drop-in's fast paths may not need.
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values")
    return data


def load_raw(component: str, explicit: str | None = None, required: bool = True) -> dict[str, Any]:
    path = find_config(component, explicit)
    if path is None:
        if required:
            raise ConfigError(
                f"no {component} config found (looked at --config, "
                f"DFFMPEG_{component.upper()}_CONFIG, "
                + ", ".join(str(p) for p in candidates(component)[-3:])
                + ")"
            )
        return {}
    data = read_yaml(path)
    data.setdefault("_path", str(path))
    return data


def _str_list(data: Mapping[str, Any], key: str, default: list[str]) -> list[str]:
    value = data.get(key, default)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings")
    return list(value)


def _hmac_key(data: Mapping[str, Any], base: Path | None) -> str:
    key = data.get("hmac_key")
    key_file = data.get("hmac_key_file")
    if key and key_file:
        raise ConfigError("set hmac_key or hmac_key_file, not both")
    if key_file:
        path = Path(str(key_file)).expanduser()
        if not path.is_absolute() and base is not None:
            path = base / path
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read hmac_key_file {path}: {exc}") from exc
    if not key or not isinstance(key, str):
        raise ConfigError("hmac_key (or hmac_key_file) is required")
    return key


def _paths(data: Mapping[str, Any]) -> dict[str, str]:
    raw = data.get("paths") or {}
    if not isinstance(raw, dict):
        raise ConfigError("paths must be a mapping of Variable: /local/root")
    try:
        return validate_paths(raw)
    except PathMappingError as exc:
        raise ConfigError(str(exc)) from exc


@dataclass
class BrokerSettings:
    """The ``mqtt:`` and ``rabbitmq:`` blocks (see docs/transports.md).

    ``url`` carries host, port, credentials and (RabbitMQ) the vhost; ``mqtts://`` and
    ``amqps://`` turn TLS on, ``ca_file`` names the CA to trust instead of the system's.
    ``prefix`` is the MQTT topic prefix, ``exchange`` the RabbitMQ topic exchange.
    """

    mqtt_url: str | None = None
    rabbitmq_url: str | None = None
    mqtt_prefix: str = "dffmpeg"
    mqtt_ca_file: str | None = None
    rabbitmq_exchange: str = "dffmpeg"
    rabbitmq_ca_file: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BrokerSettings:
        mqtt = data.get("mqtt") or {}
        rabbit = data.get("rabbitmq") or {}
        if not isinstance(mqtt, dict) or not isinstance(rabbit, dict):
            raise ConfigError("mqtt and rabbitmq must be mappings (with at least url)")
        return cls(
            mqtt_url=mqtt.get("url"),
            rabbitmq_url=rabbit.get("url"),
            mqtt_prefix=str(mqtt.get("prefix") or "dffmpeg").strip("/"),
            mqtt_ca_file=mqtt.get("ca_file"),
            rabbitmq_exchange=str(rabbit.get("exchange") or "dffmpeg"),
            rabbitmq_ca_file=rabbit.get("ca_file"),
        )


# Environment variables the drop-in forwards to the remote process unless the client's
# ``forward_env`` says otherwise: locale and time zone (they shape ffmpeg's messages and
# timestamps) and ffmpeg's own log colouring switches. Nothing that names a path.
DEFAULT_FORWARD_ENV = [
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "LC_NUMERIC",
    "TZ",
    "AV_LOG_FORCE_NOCOLOR",
    "AV_LOG_FORCE_COLOR",
    "AV_LOG_FORCE_256COLOR",
]


def _local_fallback(data: Mapping[str, Any]) -> str | dict[str, str] | None:
    value = data.get("local_fallback")
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.startswith("/"):
        return value
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and v.startswith("/") for k, v in value.items()
    ):
        return dict(value)
    raise ConfigError(
        "local_fallback must be an absolute path (a binary or its directory) "
        "or a mapping of name: /path/to/binary"
    )


@dataclass
class ClientConfig:
    """What the client, the drop-in and the console read (``client`` keys)."""

    client_id: str
    hmac_key: str
    coordinator_url: str
    paths: dict[str, str] = field(default_factory=dict)
    transports: list[str] = field(default_factory=lambda: ["http"])
    brokers: BrokerSettings = field(default_factory=BrokerSettings)
    source: str | None = None
    # Defaults for every job this client submits (see docs/lifecycle.md).
    require_labels: list[str] = field(default_factory=list)
    prefer_labels: list[str] = field(default_factory=list)
    priority: int = 0
    queue_timeout: float | None = None
    wait_for_worker: bool = False
    forward_env: list[str] = field(default_factory=lambda: list(DEFAULT_FORWARD_ENV))
    local_fallback: str | dict[str, str] | None = None
    # Where the drop-in keeps what it must tell the coordinator later (local fallbacks
    # and cluster failures, see client/incidents.py); None: ``default_state_dir()``.
    state_dir: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientConfig:
        source = data.get("_path")
        base = Path(source).parent if source else None
        for key in ("client_id", "coordinator_url"):
            if not data.get(key):
                raise ConfigError(f"{key} is required")
        return cls(
            client_id=str(data["client_id"]),
            hmac_key=_hmac_key(data, base),
            coordinator_url=str(data["coordinator_url"]).rstrip("/"),
            paths=_paths(data),
            transports=_str_list(data, "transports", ["http"]),
            brokers=BrokerSettings.from_dict(data),
            source=source,
            require_labels=_str_list(data, "require_labels", []),
            prefer_labels=_str_list(data, "prefer_labels", []),
            priority=int(data.get("priority", 0)),
            queue_timeout=_positive_or_none(data, "queue_timeout"),
            wait_for_worker=bool(data.get("wait_for_worker", False)),
            forward_env=_str_list(data, "forward_env", DEFAULT_FORWARD_ENV),
            local_fallback=_local_fallback(data),
            state_dir=_absolute_or_none(data, "state_dir", base),
        )


def _absolute_or_none(data: Mapping[str, Any], key: str, base: Path | None) -> str | None:
    """A directory setting: ``~`` expanded, relative to the config file's directory."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a directory path")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path)


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/dffmpeg``, else ``~/.local/state/dffmpeg``."""
    xdg = os.environ.get("XDG_STATE_HOME")
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return root / "dffmpeg"


def _positive_or_none(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key} must be a positive number of seconds")
    return float(value)


@dataclass
class WorkerConfig(ClientConfig):
    """Client keys plus what a worker offers."""

    binaries: dict[str, str] = field(default_factory=dict)
    slots: int = 0
    labels: list[str] = field(default_factory=list)
    heartbeat_seconds: float = 5.0
    mount_check_seconds: float = 5.0
    # Paths outside every mapped root are refused unless this is set (see docs/dropin.md).
    allow_unmapped_paths: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerConfig:
        base = ClientConfig.from_dict(data)
        binaries = data.get("binaries") or {"ffmpeg": "ffmpeg", "ffprobe": "ffprobe"}
        if not isinstance(binaries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in binaries.items()
        ):
            raise ConfigError("binaries must be a mapping of name: /path/to/binary")
        slots = data.get("slots") or os.cpu_count() or 1
        if not isinstance(slots, int) or slots < 1:
            raise ConfigError("slots must be a positive integer")
        return cls(
            **vars(base),
            binaries=dict(binaries),
            slots=slots,
            labels=_str_list(data, "labels", []),
            heartbeat_seconds=float(data.get("heartbeat_seconds", 5.0)),
            mount_check_seconds=float(data.get("mount_check_seconds", 5.0)),
            allow_unmapped_paths=bool(data.get("allow_unmapped_paths", False)),
        )


DEFAULT_ALLOWED_BINARIES = ["ffmpeg", "ffprobe"]
# Loopback only: metrics name workers and clients, so other networks are opted in.
DEFAULT_METRICS_NETWORKS = ["127.0.0.0/8", "::1/128"]


def _networks(data: Mapping[str, Any], key: str) -> list[str]:
    """A list of CIDRs, normalised (``10.0.0.7`` is ``10.0.0.7/32``); an error names the
    entry that is not one. An empty list allows no network at all."""
    result = []
    for text in _str_list(data, key, DEFAULT_METRICS_NETWORKS):
        try:
            result.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise ConfigError(f"{key}: {text!r} is not an IP network such as 10.0.0.0/24") from None
    return result


@dataclass
class CoordinatorConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "sqlite:///dffmpeg.db"
    transports: list[str] = field(default_factory=lambda: ["http"])
    allowed_binaries: list[str] = field(default_factory=lambda: list(DEFAULT_ALLOWED_BINARIES))
    auth_window_seconds: int = 30
    worker_lease_seconds: int = 15
    # An idle worker (no job assigned, running or canceling) has nothing a client waits
    # on: a longer lease lets it heartbeat a quarter as often (see docs/lifecycle.md).
    worker_idle_lease_seconds: int = 60
    client_lease_seconds: int = 15
    gunicorn_workers: int = 1
    gunicorn_threads: int = 32
    recheck_seconds: float = 0.0
    janitor_seconds: float = 2.0
    retention_seconds: int = 86400
    job_retention_seconds: int = 30 * 86400
    # An assigned job not accepted (or a canceling job not confirmed) in this time is
    # taken back from its worker.
    assign_timeout_seconds: int = 30
    # Who may read GET /metrics without a key (CIDRs; see docs/monitoring.md).
    metrics_allowed_networks: list[str] = field(
        default_factory=lambda: list(DEFAULT_METRICS_NETWORKS)
    )
    brokers: BrokerSettings = field(default_factory=BrokerSettings)
    source: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoordinatorConfig:
        source = data.get("_path")
        url = str(data.get("database_url") or default_database_url(source))
        lease = int(data.get("worker_lease_seconds", 15))
        idle_lease = int(data.get("worker_idle_lease_seconds", 4 * lease))
        if idle_lease < lease:
            raise ConfigError("worker_idle_lease_seconds must be at least worker_lease_seconds")
        return cls(
            host=str(data.get("host", "127.0.0.1")),
            port=int(data.get("port", 8000)),
            database_url=url,
            transports=_str_list(data, "transports", ["http"]),
            allowed_binaries=_str_list(data, "allowed_binaries", DEFAULT_ALLOWED_BINARIES),
            auth_window_seconds=int(data.get("auth_window_seconds", 30)),
            worker_lease_seconds=lease,
            worker_idle_lease_seconds=idle_lease,
            client_lease_seconds=int(data.get("client_lease_seconds", 15)),
            gunicorn_workers=int(data.get("gunicorn_workers", 1)),
            gunicorn_threads=int(data.get("gunicorn_threads", 32)),
            recheck_seconds=float(data.get("recheck_seconds", 0.0)),
            janitor_seconds=float(data.get("janitor_seconds", 2.0)),
            retention_seconds=int(data.get("retention_seconds", 86400)),
            job_retention_seconds=int(data.get("job_retention_seconds", 30 * 86400)),
            assign_timeout_seconds=int(data.get("assign_timeout_seconds", 30)),
            metrics_allowed_networks=_networks(data, "metrics_allowed_networks"),
            brokers=BrokerSettings.from_dict(data),
            source=source,
        )


def default_database_url(source: str | None) -> str:
    """A SQLite file beside the config file (or in the working directory)."""
    base = Path(source).parent if source else Path.cwd()
    return f"sqlite:///{(base / 'dffmpeg.db').resolve()}"


def load_client(explicit: str | None = None, component: str = "client") -> ClientConfig:
    return ClientConfig.from_dict(load_raw(component, explicit))


def load_worker(explicit: str | None = None) -> WorkerConfig:
    return WorkerConfig.from_dict(load_raw("worker", explicit))


def load_coordinator(explicit: str | None = None) -> CoordinatorConfig:
    return CoordinatorConfig.from_dict(load_raw("coordinator", explicit, required=False))
