"""YAML configuration: where it is found and what each part reads from it.

Search order for component C (coordinator, worker, client, console): the ``--config``
flag, env ``DFFMPEG_<C>_CONFIG``, ``./dffmpeg-<c>.yaml``, ``~/.config/dffmpeg/<c>.yaml``,
``/etc/dffmpeg/<c>.yaml``. The first that exists wins; nothing is merged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dffmpeg.config_check import (
    PATH_KEY,
    ConfigError,
    check_block,
    check_config,
    known_keys,
    yaml_keys,
)
from dffmpeg.paths import PathMappingError, validate_paths

# Every key of a config file is a field of one of the dataclasses below (see
# dffmpeg/config_check.py): an unknown key is an error naming the closest known one,
# and a plain value of the wrong type is an error naming key, value and type. To add a
# setting, add a field (with ``metadata=yaml_keys(...)`` if its YAML key is not its
# name) and read it in ``from_dict``.


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
    data = _read_client_config(path) if component == "client" else read_yaml(path)
    data.setdefault(PATH_KEY, str(path))
    return data


def _read_client_config(path: Path) -> dict[str, Any]:
    """The client config, from the parsed copy of it when the file has not changed:
    the drop-in then never imports PyYAML (dffmpeg/config_cache.py)."""
    from dffmpeg import config_cache

    directory = default_state_dir()
    cached = config_cache.load(directory, path)
    if cached is not None:
        return cached
    identity = config_cache.identity_of(path)  # before the read: a write meanwhile shows
    data = read_yaml(path)
    if identity is not None:
        config_cache.store(directory, path, identity, data)
    return data


def _parse(cls: Any, data: dict[str, Any]) -> Any:
    """``cls.from_dict(data)``, every failure one line that starts with the file's name."""
    where = f"{data[PATH_KEY]}: " if data.get(PATH_KEY) else ""
    try:
        return cls.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None
    except (TypeError, ValueError) as exc:
        # A parser that converted a value it should have checked: still one line.
        raise ConfigError(f"{where}invalid value: {exc}") from None


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


@dataclass
class PathRoot:
    """The long form of a ``paths`` value: ``Variable: {path: /root, writable: false}``.

    Its fields are the keys such a mapping may have.
    """

    path: str
    writable: bool = True


def _path_entries(data: Mapping[str, Any]) -> dict[str, tuple[str, bool]]:
    """``paths`` as ``{Variable: (root, writable)}``.

    A value is a root (writable) or ``{path: /root, writable: false}`` for a library the
    jobs may read but never change.
    """
    raw = data.get("paths") or {}
    if not isinstance(raw, dict):
        raise ConfigError("paths must be a mapping of Variable: /local/root")
    roots: dict[str, Any] = {}
    writable: dict[str, bool] = {}
    for name, value in raw.items():
        writable[name] = True
        if isinstance(value, dict):
            entry = check_block(f"paths.{name}", PathRoot, value)
            if "path" not in entry:
                raise ConfigError(f"paths.{name}: path is required")
            writable[name] = entry.get("writable", True)
            value = entry["path"]
        roots[name] = value
    try:
        valid = validate_paths(roots)
    except PathMappingError as exc:
        raise ConfigError(f"paths: {exc}") from exc
    return {name: (root, writable[name]) for name, root in valid.items()}


def _paths(data: Mapping[str, Any]) -> dict[str, str]:
    return {name: root for name, (root, _) in _path_entries(data).items()}


def _file(data: Mapping[str, Any], key: str, base: Path | None) -> str | None:
    """A file named by ``key``, relative to the config file's directory; it must exist."""
    value = data.get(key)
    if not value:
        return None
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise ConfigError(f"{key}: {path} does not exist")
    return str(path)


def _key_file(data: Mapping[str, Any], base: Path | None) -> str | None:
    """The absolute path of ``hmac_key_file``, if the key comes from a file."""
    key_file = data.get("hmac_key_file")
    if not key_file:
        return None
    path = Path(str(key_file)).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path.absolute())


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
        # The ``mqtt:`` block's keys are the fields named ``mqtt_*``, the ``rabbitmq:``
        # block's those named ``rabbitmq_*``.
        mqtt = check_block("mqtt", cls, data.get("mqtt") or {}, strip="mqtt_")
        rabbit = check_block("rabbitmq", cls, data.get("rabbitmq") or {}, strip="rabbitmq_")
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


# A coordinator restart usually takes a few seconds: a drop-in started meanwhile waits
# this long for it before it gives up (or runs the local binary).
DEFAULT_CONNECT_RETRY_SECONDS = 10.0
# How often a lost job may run again (``retry_on_worker_loss``), at most.
MAX_RETRIES_ON_LOSS = 10


@dataclass
class ClientConfig:
    """What the client, the drop-in and the console read (``client`` keys)."""

    client_id: str
    hmac_key: str = field(metadata=yaml_keys("hmac_key", "hmac_key_file"))
    # The first coordinator address (the one log lines and the transports name).
    coordinator_url: str = field(metadata=yaml_keys())
    # Every address, in failover order (``coordinator_url``: one URL or a list).
    coordinator_urls: list[str] = field(default_factory=list, metadata=yaml_keys("coordinator_url"))
    paths: dict[str, str] = field(default_factory=dict)
    transports: list[str] = field(default_factory=lambda: ["http"])
    brokers: BrokerSettings = field(
        default_factory=BrokerSettings, metadata=yaml_keys("mqtt", "rabbitmq")
    )
    source: str | None = field(default=None, metadata=yaml_keys())
    # Where ``hmac_key_file`` lies (the worker hides it from its jobs); not a key itself.
    key_file: str | None = field(default=None, metadata=yaml_keys())
    # TLS to an https:// coordinator: the CA to trust instead of the system's, and our
    # certificate where the coordinator's proxy asks for one (docs/security-model.md#tls).
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
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
    # How long a submission waits for an unreachable coordinator before the drop-in
    # falls back to ``local_fallback`` or exits 200 (docs/operations.md).
    connect_retry_seconds: float = DEFAULT_CONNECT_RETRY_SECONDS
    # How many times a job whose worker was lost before any of its output reached us
    # may be run again elsewhere (0: never; docs/lifecycle.md).
    retry_on_worker_loss: int = 0
    # Whether the drop-in's native launcher may start a local helper that serves the
    # calls after it from one long-lived process (client/helper.py, docs/dropin.md).
    local_helper: bool = True

    def __post_init__(self) -> None:
        if not self.coordinator_urls:
            self.coordinator_urls = [self.coordinator_url]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClientConfig:
        check_config(cls, data)
        source = data.get(PATH_KEY)
        base = Path(source).parent if source else None
        for key in ("client_id", "coordinator_url"):
            if not data.get(key):
                raise ConfigError(f"{key} is required")
        urls = _coordinator_urls(data)
        return cls(
            client_id=str(data["client_id"]),
            hmac_key=_hmac_key(data, base),
            coordinator_url=urls[0],
            coordinator_urls=urls,
            paths=_paths(data),
            transports=_str_list(data, "transports", ["http"]),
            brokers=BrokerSettings.from_dict(data),
            source=source,
            key_file=_key_file(data, base),
            ca_file=_file(data, "ca_file", base),
            client_cert_file=_file(data, "client_cert_file", base),
            client_key_file=_file(data, "client_key_file", base),
            require_labels=_str_list(data, "require_labels", []),
            prefer_labels=_str_list(data, "prefer_labels", []),
            priority=int(data.get("priority", 0)),
            queue_timeout=_positive_or_none(data, "queue_timeout"),
            wait_for_worker=bool(data.get("wait_for_worker", False)),
            forward_env=_str_list(data, "forward_env", DEFAULT_FORWARD_ENV),
            local_fallback=_local_fallback(data),
            state_dir=_absolute_or_none(data, "state_dir", base),
            connect_retry_seconds=_seconds(
                data, "connect_retry_seconds", DEFAULT_CONNECT_RETRY_SECONDS
            ),
            retry_on_worker_loss=_count(data, "retry_on_worker_loss", MAX_RETRIES_ON_LOSS),
            local_helper=bool(data.get("local_helper", True)),
        )


def _coordinator_urls(data: Mapping[str, Any]) -> list[str]:
    """``coordinator_url``: one URL, or a list of them in failover order."""
    raw = data["coordinator_url"]
    urls = [raw] if isinstance(raw, str) else list(raw)
    if not urls or not all(isinstance(u, str) and u.strip() for u in urls):
        raise ConfigError("coordinator_url must be a URL or a list of URLs")
    cleaned = [u.strip().rstrip("/") for u in urls]
    if len(set(cleaned)) != len(cleaned):
        raise ConfigError("coordinator_url names the same coordinator twice")
    return cleaned


def _seconds(data: Mapping[str, Any], key: str, default: float) -> float:
    """A duration that may be 0 (no waiting at all)."""
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1e9:
        raise ConfigError(f"{key} must be a number of seconds, 0 or more")
    return float(value)


def _count(data: Mapping[str, Any], key: str, maximum: int) -> int:
    value = data.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ConfigError(f"{key} must be an integer from 0 to {maximum}")
    return value


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
    # Path variables whose roots jobs may read but not change (``writable: false``).
    read_only_paths: list[str] = field(default_factory=list, metadata=yaml_keys())
    # Confinement of every job (docs/security-model.md): on unless ``sandbox: off``.
    sandbox: bool | str = True  # on/off; parsed to a bool by from_dict
    allow_network: bool = False
    allow_filters: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    job_user: str | int | None = None
    # Where a job's output waits on disk while the coordinator cannot take it and the
    # memory share is used up; None: ``spool`` under the state directory.
    spool_dir: str | None = None

    @property
    def spool_directory(self) -> str:
        return self.spool_dir or os.path.join(self.state_dir or str(default_state_dir()), "spool")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerConfig:
        check_config(cls, data)
        client_keys = {*known_keys(ClientConfig), PATH_KEY}
        base = ClientConfig.from_dict({k: v for k, v in data.items() if k in client_keys})
        binaries = data.get("binaries") or {"ffmpeg": "ffmpeg", "ffprobe": "ffprobe"}
        if not isinstance(binaries, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in binaries.items()
        ):
            raise ConfigError("binaries must be a mapping of name: /path/to/binary")
        slots = data.get("slots")
        if slots is None:
            slots = os.cpu_count() or 1
        if slots < 1:
            raise ConfigError(f"slots: expected a positive integer, got {slots}")
        return cls(
            **vars(base),
            binaries=dict(binaries),
            slots=slots,
            labels=_str_list(data, "labels", []),
            heartbeat_seconds=float(data.get("heartbeat_seconds", 5.0)),
            mount_check_seconds=float(data.get("mount_check_seconds", 5.0)),
            allow_unmapped_paths=bool(data.get("allow_unmapped_paths", False)),
            read_only_paths=sorted(n for n, (_, w) in _path_entries(data).items() if not w),
            sandbox=_on_off(data, "sandbox", True),
            allow_network=_on_off(data, "allow_network", False),
            allow_filters=_str_list(data, "allow_filters", []),
            devices=_absolute_list(data, "devices"),
            job_user=_job_user(data),
            spool_dir=_absolute_or_none(
                data, "spool_dir", Path(data[PATH_KEY]).parent if data.get(PATH_KEY) else None
            ),
        )


def _on_off(data: Mapping[str, Any], key: str, default: bool) -> bool:
    """A switch: YAML's ``on``/``off`` (and ``true``/``false``) load as booleans; the words
    are accepted quoted too."""
    value = data.get(key, default)
    if isinstance(value, str):
        words = {"on": True, "true": True, "yes": True, "off": False, "false": False, "no": False}
        if value.lower() not in words:
            raise ConfigError(f"{key}: expected on or off, got {value!r}")
        return words[value.lower()]
    return bool(value)


def _absolute_list(data: Mapping[str, Any], key: str) -> list[str]:
    values = _str_list(data, key, [])
    for value in values:
        if not value.startswith("/"):
            raise ConfigError(f"{key}: {value!r} must be an absolute path")
    return [os.path.normpath(v) for v in values]


def _job_user(data: Mapping[str, Any]) -> str | None:
    value = data.get("job_user")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ConfigError("job_user must be a user name or a numeric uid")
    return str(value)


DEFAULT_ALLOWED_BINARIES = ["ffmpeg", "ffprobe"]
# What parties assume before a coordinator told them its ``outage_grace_seconds``.
DEFAULT_OUTAGE_GRACE_SECONDS = 300.0
# Loopback only: metrics name workers and clients, so other networks are opted in.
DEFAULT_METRICS_NETWORKS = ["127.0.0.0/8", "::1/128"]


def _networks(data: Mapping[str, Any], key: str, default: list[str] | None = None) -> list[str]:
    """A list of CIDRs, normalised (``10.0.0.7`` is ``10.0.0.7/32``); an error names the
    entry that is not one."""
    result = []
    texts = _str_list(data, key, default or [])
    if texts:
        import ipaddress  # here: the drop-in reads this module at every start

    for text in texts:
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
    # A request must arrive whole (head and body) this long after its first byte.
    request_timeout_seconds: float = 30.0
    # Proxies whose X-Forwarded-For is believed (CIDRs; see docs/deployment.md).
    trusted_proxies: list[str] = field(default_factory=list)
    # A /transport/stream connection ends after this long; the party reconnects.
    stream_max_seconds: float = 300.0
    # Pool threads of one process that held requests (long-polls, streams) may use; the
    # rest stay free for short requests. None: three quarters of gunicorn_threads.
    held_request_threads: int | None = None
    # Limits for identities that have none of their own (see docs/api.md#limits).
    default_quotas: dict[str, int] = field(default_factory=dict)
    # Who may read GET /metrics without a key (CIDRs; see docs/monitoring.md).
    metrics_allowed_networks: list[str] = field(
        default_factory=lambda: list(DEFAULT_METRICS_NETWORKS)
    )
    # The secret identity keys are stored encrypted with (docs/security-model.md#keys-at-rest).
    # Default: beside the config file, else beside the SQLite database file.
    secret_key_file: str = ""
    # How long parties keep trying while this coordinator (or its database) is away:
    # workers keep running and spooling their jobs, drop-ins keep waiting, requests are
    # retried; beyond it they give up (docs/operations.md).
    outage_grace_seconds: float = DEFAULT_OUTAGE_GRACE_SECONDS
    brokers: BrokerSettings = field(
        default_factory=BrokerSettings, metadata=yaml_keys("mqtt", "rabbitmq")
    )
    source: str | None = field(default=None, metadata=yaml_keys())

    @property
    def held_threads(self) -> int:
        if self.held_request_threads is not None:
            return self.held_request_threads
        return max(1, self.gunicorn_threads * 3 // 4)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CoordinatorConfig:
        check_config(cls, data)
        source = data.get(PATH_KEY)
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
            request_timeout_seconds=_positive(data, "request_timeout_seconds", 30.0),
            trusted_proxies=_networks(data, "trusted_proxies"),
            stream_max_seconds=_positive(data, "stream_max_seconds", 300.0),
            held_request_threads=_held_threads(data),
            default_quotas=_int_mapping(data, "default_quotas"),
            metrics_allowed_networks=_networks(
                data, "metrics_allowed_networks", DEFAULT_METRICS_NETWORKS
            ),
            secret_key_file=_secret_file(data, source, url),
            outage_grace_seconds=_positive(
                data, "outage_grace_seconds", DEFAULT_OUTAGE_GRACE_SECONDS
            ),
            brokers=BrokerSettings.from_dict(data),
            source=source,
        )


def _positive(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise ConfigError(f"{key} must be a positive number of seconds")
    return float(value)


def _held_threads(data: Mapping[str, Any]) -> int | None:
    value = data.get("held_request_threads")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("held_request_threads must be a positive integer")
    return value


def _int_mapping(data: Mapping[str, Any], key: str) -> dict[str, int]:
    value = data.get(key) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ConfigError(f"{key} must be a mapping of limit names to integers")
    return dict(value)


SECRET_FILE_NAME = "dffmpeg-secret.key"


def _secret_file(data: Mapping[str, Any], source: str | None, database_url: str) -> str:
    """``secret_key_file``, or its default: beside the config file; without one, beside
    a SQLite database file; else in the working directory."""
    value = data.get("secret_key_file")
    if value:
        path = Path(str(value)).expanduser()
        if not path.is_absolute() and source:
            path = Path(source).parent / path
        return str(path.absolute())
    return default_secret_file(source, database_url)


def default_secret_file(source: str | None, database_url: str) -> str:
    """Where the secret is when ``secret_key_file`` is not set."""
    if source:
        return str((Path(source).parent / SECRET_FILE_NAME).resolve())
    if database_url.startswith("sqlite:///") and len(database_url) > len("sqlite:///"):
        database = Path(database_url.removeprefix("sqlite:///").split("?", 1)[0])
        return str(database.parent.absolute() / SECRET_FILE_NAME)
    # Settings given in code, not a file, for a database server (embedding, tests): one
    # secret per database, so every process given the same settings shares it.
    import tempfile  # here: the drop-in reads this module at every start

    digest = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / "dffmpeg-secrets" / f"{digest}.key")


def default_database_url(source: str | None) -> str:
    """A SQLite file beside the config file (or in the working directory)."""
    base = Path(source).parent if source else Path.cwd()
    return f"sqlite:///{(base / 'dffmpeg.db').resolve()}"


def load_client(explicit: str | None = None, component: str = "client") -> ClientConfig:
    config: ClientConfig = _parse(ClientConfig, load_raw(component, explicit))
    return config


def load_worker(explicit: str | None = None) -> WorkerConfig:
    config: WorkerConfig = _parse(WorkerConfig, load_raw("worker", explicit))
    return config


def load_coordinator(explicit: str | None = None) -> CoordinatorConfig:
    """The coordinator's settings. A config file is required: without one a command
    would quietly create a database in whatever directory it was started from."""
    config: CoordinatorConfig = _parse(CoordinatorConfig, load_raw("coordinator", explicit))
    return config
