"""Fixtures: a real coordinator app per test, live clusters of real processes, media."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests import databases
from tests.helpers import (
    SignedClient,
    admin,
    free_port,
    health,
    process_env,
    require,
    running,
    wait_until,
    write_yaml,
)


@pytest.fixture(scope="session", autouse=True)
def private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Drop-ins started by tests keep their state (incidents to report, the config
    cache, the local helper) under the session's temporary directory, not in the home
    directory, where a later drop-in (the demo's) would report them as its own."""
    state = tmp_path_factory.mktemp("xdg-state")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_STATE_HOME", str(state))
        yield state


@pytest.fixture(scope="session")
def ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    require(path is not None and shutil.which("ffprobe") is not None, "ffmpeg and ffprobe")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory, ffmpeg: str) -> Path:
    """A directory with a 2 s H.264/AAC clip made from lavfi sources."""
    root = tmp_path_factory.mktemp("media")
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=320x240:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            str(root / "clip.mp4"),
        ],
        check=True,
        timeout=60,
    )
    return root


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--databases",
        default=None,
        help="comma-separated database kinds the database_url fixture covers "
        f"({', '.join(databases.KINDS)}; default: env {databases.ENV} or sqlite)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses a database runs once per selected database kind."""
    if "database_kind" in metafunc.fixturenames:
        kinds = databases.selected(metafunc.config.getoption("--databases"))
        metafunc.parametrize("database_kind", kinds)


@pytest.fixture
def database_url(database_kind: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the kind under test, dropped after the test."""
    with databases.fresh_database(database_kind, tmp_path) as url:
        yield url


@pytest.fixture
def app(database_url: str) -> Iterator[Flask]:
    from coordinator import create_app

    application = create_app({"database_url": database_url}, start_janitor=False)
    application.config["TESTING"] = True
    yield application
    from coordinator.db import db

    with application.app_context():
        db.engine.dispose()


@dataclass
class Identities:
    admin: SignedClient
    client: SignedClient
    other_client: SignedClient
    worker: SignedClient
    keys: dict[str, str] = field(default_factory=dict)


def signed_identities(app: Flask) -> Identities:
    """Creates one user of each role (and a second client) and signed test clients for them."""
    from coordinator import users

    keys: dict[str, str] = {}
    with app.app_context():
        for client_id, role in (
            ("root", "admin"),
            ("alice", "client"),
            ("bob", "client"),
            ("w1", "worker"),
        ):
            keys[client_id] = users.add_user(client_id, role)["hmac_key"]
    flask_client = app.test_client()
    return Identities(
        admin=SignedClient(flask_client, "root", keys["root"]),
        client=SignedClient(flask_client, "alice", keys["alice"]),
        other_client=SignedClient(flask_client, "bob", keys["bob"]),
        worker=SignedClient(flask_client, "w1", keys["w1"]),
        keys=keys,
    )


@pytest.fixture
def api(app: Flask) -> Identities:
    """Signed test clients for one user of each role (and a second client)."""
    return signed_identities(app)


def instances(database_url: str, **settings: Any) -> Iterator[tuple[Flask, Flask]]:
    """Two coordinator apps on one database, as two instances behind a load balancer."""
    from coordinator import create_app
    from coordinator.db import db

    config = {"database_url": database_url, **settings}
    apps = (
        create_app(config, start_janitor=False, start_wakeups=True),
        create_app(config, start_janitor=False, start_wakeups=True),
    )
    yield apps
    for application in apps:
        application.extensions["dffmpeg.wakeups"].stop()
        with application.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture
def two_instances(database_url: str) -> Iterator[tuple[Flask, Flask]]:
    yield from instances(database_url)


@dataclass
class Cluster:
    """A coordinator and one worker as real processes, plus a client config."""

    root: Path
    url: str
    coordinator_config: Path
    client_config: Path
    worker_config: Path
    client_media: Path  # the client's root for the media (a symlink)
    worker_media: Path  # the worker's root for the same media (another symlink)
    bin_dir: Path  # holds ffmpeg/ffprobe symlinks to the drop-in

    def env(self, **extra: str) -> dict[str, str]:
        return process_env(DFFMPEG_CLIENT_CONFIG=str(self.client_config), **extra)

    def dropin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def run(self, name: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run([self.dropin(name), *args], env=self.env(), **kwargs)


def start_cluster(
    tmp_path: Path,
    media_dir: Path,
    worker_extra: dict[str, Any] | None = None,
    coordinator_extra: dict[str, Any] | None = None,
    client_extra: dict[str, Any] | None = None,
    worker_key_file: bool = False,
) -> Iterator[Cluster]:
    """A coordinator and a worker as processes; ``worker_key_file`` keeps the worker's key
    in a file of its own (mode 0600) instead of in its config."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    coordinator_config = write_yaml(
        tmp_path / "coordinator.yaml",
        {
            "host": "127.0.0.1",
            "port": port,
            "database_url": f"sqlite:///{tmp_path / 'coordinator.db'}",
            "janitor_seconds": 0.5,
            **(coordinator_extra or {}),
        },
    )
    worker_user = admin(coordinator_config, "user", "add", "worker1", "--role", "worker")
    client_user = admin(coordinator_config, "user", "add", "client1", "--role", "client")
    client_media = tmp_path / "client-media"
    worker_media = tmp_path / "worker-media"
    client_media.symlink_to(media_dir)
    worker_media.symlink_to(media_dir)
    key: dict[str, str] = {"hmac_key": worker_user["hmac_key"]}
    if worker_key_file:
        key_path = tmp_path / "worker.key"
        key_path.write_text(worker_user["hmac_key"] + "\n")
        key_path.chmod(0o600)
        key = {"hmac_key_file": str(key_path)}
    worker_config = write_yaml(
        tmp_path / "worker.yaml",
        {
            "client_id": "worker1",
            **key,
            "coordinator_url": url,
            "paths": {"Media": str(worker_media)},
            "binaries": {"ffmpeg": shutil.which("ffmpeg"), "ffprobe": shutil.which("ffprobe")},
            "slots": 2,
            "heartbeat_seconds": 1,
            **(worker_extra or {}),
        },
    )
    client_config = write_yaml(
        tmp_path / "client.yaml",
        {
            "client_id": "client1",
            "hmac_key": client_user["hmac_key"],
            "coordinator_url": url,
            "paths": {"Media": str(client_media)},
            **(client_extra or {}),
        },
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    proxy = Path(sys.executable).parent / "dffmpeg-proxy"
    for name in ("ffmpeg", "ffprobe"):
        (bin_dir / name).symlink_to(proxy)
    env = process_env()
    with running(
        [sys.executable, "-m", "coordinator.serve", "--config", str(coordinator_config)],
        tmp_path / "coordinator.log",
        env=env,
    ):
        wait_until(lambda: health(url) == 200, timeout=20)
        with running(
            [sys.executable, "-m", "worker.cli", "--config", str(worker_config)],
            tmp_path / "worker.log",
            env=env,
        ):
            cluster = Cluster(
                tmp_path,
                url,
                coordinator_config,
                client_config,
                worker_config,
                client_media,
                worker_media,
                bin_dir,
            )
            wait_until(lambda: _worker_online(coordinator_config), timeout=20)
            yield cluster


def _worker_online(config: Path) -> bool:
    rows: Any = admin(config, "worker", "list")
    return any(w["state"] == "online" for w in rows)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, media_dir: Path) -> Iterator[Cluster]:
    """One cluster shared by the tests of a module (start-up costs about two seconds)."""
    yield from start_cluster(tmp_path_factory.mktemp("cluster"), media_dir)
