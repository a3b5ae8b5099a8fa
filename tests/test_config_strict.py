"""Config files are read strictly by every component: an unknown key names the closest
known one, a wrong value names key, value and type, both in one line without a
traceback; and a missing config never creates a database as a side effect."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dffmpeg.config import ClientConfig, ConfigError, CoordinatorConfig, WorkerConfig
from dffmpeg.config_check import check_config, known_keys, yaml_keys
from tests.helpers import process_env, require, write_yaml

CLIENT = {"client_id": "c1", "hmac_key": "k" * 32, "coordinator_url": "http://127.0.0.1:9"}

# (component, how it is started, its exit code for a config error)
COMMANDS: dict[str, tuple[list[str], int]] = {
    "coordinator": ([sys.executable, "-m", "coordinator.serve", "--config"], 2),
    "admin": ([sys.executable, "-m", "coordinator.admin_cli", "--config"], 1),
    "worker": ([sys.executable, "-m", "worker.cli", "--config"], 2),
    "client": ([sys.executable, "-m", "client.cli", "--config"], 207),
    "console": ([sys.executable, "-m", "console.cli", "--config"], 207),
}
TAIL = {"admin": ["user", "list"], "client": ["status"]}
BASE: dict[str, dict[str, Any]] = {
    "coordinator": {},
    "admin": {},
    "worker": CLIENT,
    "client": CLIENT,
    "console": CLIENT,
}


def run(component: str, config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    command, _code = COMMANDS[component]
    return subprocess.run(
        [*command, str(config), *TAIL.get(component, [])],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=process_env(),
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a refused start (and nothing on stdout)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


CASES = [
    # (component, extra keys, what the one line must contain)
    ("coordinator", {"prot": 8000}, "unknown key 'prot' (did you mean 'port'?)"),
    ("coordinator", {"port": "abc"}, "port: expected an integer, got 'abc'"),
    ("coordinator", {"janitor_seconds": "soon"}, "janitor_seconds: expected a number"),
    (
        "coordinator",
        {"mqtt": {"url": "mqtt://127.0.0.1:1", "prefx": "x"}},
        "unknown key 'mqtt.prefx' (did you mean 'mqtt.prefix'?)",
    ),
    ("admin", {"databse_url": "sqlite:///x.db"}, "did you mean 'database_url'?"),
    ("admin", {"gunicorn_threads": [1]}, "gunicorn_threads: expected an integer, got [1]"),
    ("worker", {"lables": ["gpu"]}, "unknown key 'lables' (did you mean 'labels'?)"),
    ("worker", {"slots": "many"}, "slots: expected an integer, got 'many'"),
    ("worker", {"allow_unmapped_paths": "yes please"}, "expected true or false"),
    (
        "worker",
        {"paths": {"Media": {"path": "/srv/media", "writeable": False}}},
        "unknown key 'paths.Media.writeable' (did you mean 'paths.Media.writable'?)",
    ),
    (
        "worker",
        {"rabbitmq": {"url": "amqp://127.0.0.1:1/", "exchnage": "x"}},
        "did you mean 'rabbitmq.exchange'?",
    ),
    ("client", {"coordinator_ulr": "x"}, "unknown key 'coordinator_ulr'"),
    ("client", {"priority": "high"}, "priority: expected an integer, got 'high'"),
    ("client", {"queue_timeout": "1m"}, "queue_timeout: expected a number or nothing, got '1m'"),
    ("console", {"transport": ["http"]}, "did you mean 'transports'?"),
    ("console", {"mqtt": "mqtt://127.0.0.1"}, "mqtt: expected a mapping"),
]


@pytest.mark.parametrize(("component", "extra", "expected"), CASES)
def test_a_wrong_config_is_one_line_naming_the_key(
    tmp_path: Path, component: str, extra: dict[str, Any], expected: str
) -> None:
    config = write_yaml(tmp_path / f"{component}.yaml", {**BASE[component], **extra})
    result = run(component, config, tmp_path)
    assert result.returncode == COMMANDS[component][1], result.stderr
    line = one_line(result)
    assert expected in line
    assert str(config) in line  # which file to fix
    assert list(tmp_path.iterdir()) == [config]  # nothing created meanwhile


def test_the_drop_in_refuses_a_wrong_config_in_one_line(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "client.yaml", {**CLIENT, "local_fallbak": "/usr/bin"})
    result = subprocess.run(
        [sys.executable, "-m", "client.proxy", "ffprobe", "-version"],
        capture_output=True,
        text=True,
        timeout=30,
        env=process_env(DFFMPEG_CLIENT_CONFIG=str(config)),
    )
    assert result.returncode == 207
    line = one_line(result)
    assert line.startswith("dffmpeg: ")
    assert "unknown key 'local_fallbak' (did you mean 'local_fallback'?)" in line


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "coordinator.admin_cli", "user", "list"],
        [sys.executable, "-m", "coordinator.admin_cli", "db", "upgrade"],
        [sys.executable, "-m", "coordinator.serve"],
    ],
    ids=["admin-user-list", "admin-db-upgrade", "coordinator"],
)
def test_no_config_creates_no_database(tmp_path: Path, command: list[str]) -> None:
    require(not Path("/etc/dffmpeg/coordinator.yaml").exists(), "no /etc/dffmpeg config here")
    home = tmp_path / "home"
    home.mkdir()
    env = process_env(HOME=str(home))
    env.pop("DFFMPEG_COORDINATOR_CONFIG", None)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env
    )
    assert result.returncode != 0
    line = one_line(result)
    assert "no coordinator config found" in line
    for place in (
        "--config",
        "DFFMPEG_COORDINATOR_CONFIG",
        str(tmp_path / "dffmpeg-coordinator.yaml"),
        str(home / ".config/dffmpeg/coordinator.yaml"),
        "/etc/dffmpeg/coordinator.yaml",
    ):
        assert place in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no dffmpeg.db
    assert list(home.iterdir()) == []


def test_a_missing_database_directory_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "var" / "lib" / "dffmpeg"
    config = write_yaml(
        tmp_path / "coordinator.yaml", {"database_url": f"sqlite:///{missing}/dffmpeg.db"}
    )
    for component in ("admin", "coordinator"):
        command, _code = COMMANDS[component]
        tail = ["db", "upgrade"] if component == "admin" else []
        result = subprocess.run(
            [*command, str(config), *tail],
            capture_output=True,
            text=True,
            timeout=30,
            env=process_env(),
        )
        assert result.returncode != 0
        assert f"the database directory {missing} does not exist" in one_line(result)
        assert not (tmp_path / "var").exists()


def test_new_fields_are_known_keys_without_further_code() -> None:
    """The mechanism other settings rely on: a field is a key, typed by its annotation."""

    @dataclass
    class Extended(CoordinatorConfig):
        max_things: int = 3
        nicknames: list[str] = field(default_factory=list)
        secret: str | None = field(default=None, metadata=yaml_keys("secret_file"))

    keys = known_keys(Extended)
    assert {"max_things", "nicknames", "secret_file", "port", "mqtt"} <= set(keys)
    assert "secret" not in keys and "brokers" not in keys and "source" not in keys
    check_config(Extended, {"max_things": 5, "nicknames": ["a"], "secret_file": "/k"})
    with pytest.raises(ConfigError, match=r"max_things: expected an integer, got 'five'"):
        check_config(Extended, {"max_things": "five"})
    with pytest.raises(ConfigError, match=r"did you mean 'max_things'\?"):
        check_config(Extended, {"max_thing": 5})
    with pytest.raises(ConfigError, match=r"unknown key 'secret'"):
        check_config(Extended, {"secret": "x"})


def test_every_component_accepts_its_documented_keys() -> None:
    """No false alarms: each key of docs/configuration.md's examples is accepted."""
    ClientConfig.from_dict(
        {
            **CLIENT,
            "paths": {"Media": "/mnt/media", "Cache": {"path": "/cache"}},
            "transports": ["http"],
            "require_labels": [],
            "prefer_labels": ["gpu"],
            "priority": 0,
            "queue_timeout": 600,
            "wait_for_worker": False,
            "forward_env": ["LANG"],
            "local_fallback": "/usr/bin/ffmpeg",
            "connect_retry_seconds": 10,
            "retry_on_worker_loss": 1,
            "mqtt": {"url": "mqtt://u:p@b:1883", "prefix": "d", "ca_file": None},
            "rabbitmq": {"url": "amqp://u:p@b:5672/v", "exchange": "d", "ca_file": None},
        }
    )
    WorkerConfig.from_dict(
        {
            **CLIENT,
            "binaries": {"ffmpeg": "/usr/bin/ffmpeg"},
            "slots": 4,
            "labels": ["gpu"],
            "heartbeat_seconds": 5,
            "mount_check_seconds": 5,
            "allow_unmapped_paths": False,
            "sandbox": True,
            "allow_network": False,
            "allow_filters": ["ladspa"],
            "devices": ["/dev/dri"],
            "job_user": "nobody",
            "spool_dir": "/var/lib/dffmpeg/spool",
        }
    )
    CoordinatorConfig.from_dict(
        {
            "host": "0.0.0.0",
            "port": 8000,
            "database_url": "sqlite:////var/lib/dffmpeg/dffmpeg.db",
            "transports": ["http"],
            "allowed_binaries": ["ffmpeg", "ffprobe"],
            "auth_window_seconds": 30,
            "worker_lease_seconds": 15,
            "worker_idle_lease_seconds": 60,
            "client_lease_seconds": 15,
            "janitor_seconds": 2,
            "retention_seconds": 86400,
            "job_retention_seconds": 2592000,
            "assign_timeout_seconds": 30,
            "gunicorn_workers": 1,
            "gunicorn_threads": 32,
            "recheck_seconds": 10,
            "outage_grace_seconds": 300,
        }
    )
    long_form = {"M": {"path": "/m", "writable": False}, "T": "/t"}
    assert ClientConfig.from_dict({**CLIENT, "paths": long_form}).paths == {"M": "/m", "T": "/t"}


def test_coordinator_url_may_list_several_coordinators() -> None:
    many = {**CLIENT, "coordinator_url": ["http://a:8000/", "http://b:8000"]}
    config = ClientConfig.from_dict(many)
    assert config.coordinator_urls == ["http://a:8000", "http://b:8000"]
    assert config.coordinator_url == "http://a:8000"  # the first, for messages
    assert WorkerConfig.from_dict(many).coordinator_urls == config.coordinator_urls
    assert ClientConfig.from_dict(CLIENT).coordinator_urls == [CLIENT["coordinator_url"]]
    for bad, message in [
        ([], "coordinator_url is required"),
        (["http://a:1", "http://a:1/"], "names the same coordinator twice"),
        (["http://a:1", 5], "expected a list of strings"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ClientConfig.from_dict({**CLIENT, "coordinator_url": bad})


def test_outage_settings_are_checked() -> None:
    defaults = ClientConfig.from_dict(CLIENT)
    assert (defaults.connect_retry_seconds, defaults.retry_on_worker_loss) == (10.0, 0)
    assert ClientConfig.from_dict({**CLIENT, "connect_retry_seconds": 0}).connect_retry_seconds == 0
    assert CoordinatorConfig.from_dict({}).outage_grace_seconds == 300
    for key, value in [
        ("connect_retry_seconds", -1),
        ("retry_on_worker_loss", 11),
        ("retry_on_worker_loss", -1),
        ("retry_on_worker_loss", True),
    ]:
        with pytest.raises(ConfigError, match=key):
            ClientConfig.from_dict({**CLIENT, key: value})
    with pytest.raises(ConfigError, match="outage_grace_seconds"):
        CoordinatorConfig.from_dict({"outage_grace_seconds": 0})
    worker = WorkerConfig.from_dict({**CLIENT, "state_dir": "/var/lib/w"})
    assert worker.spool_directory == "/var/lib/w/spool"
