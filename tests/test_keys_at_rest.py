"""Identity keys at rest: encrypted with the coordinator's secret, files private, the
secret rotated without locking anybody out. Real dffmpeg-admin and coordinator processes."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from client.api import Api, AuthError
from tests.helpers import free_port, health, process_env, running, wait_until, write_yaml

pytestmark = pytest.mark.timeout(120)


def admin_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.admin_cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=process_env(),
        timeout=60,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    config = write_yaml(
        tmp_path / "coordinator.yaml",
        {"host": "127.0.0.1", "port": port, "database_url": f"sqlite:///{tmp_path / 'c.db'}"},
    )
    upgrade = admin_cli(config, "db", "upgrade", "--json")
    assert upgrade.returncode == 0, upgrade.stderr
    return config, port


@contextmanager
def coordinator(config: Path, port: int) -> Iterator[str]:
    url = f"http://127.0.0.1:{port}"
    with running(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        config.parent / "coordinator.log",
        env=process_env(),
    ):
        wait_until(lambda: health(url) == 200, timeout=20)
        yield url


def works(url: str, client_id: str, key: str) -> bool:
    api = Api(url, client_id, key, timeout=10)
    try:
        return api.call("GET", "/doctor/identity")["client_id"] == client_id
    except AuthError:
        return False
    finally:
        api.close()


def test_the_database_holds_no_usable_key(setup: tuple[Path, int]) -> None:
    config, port = setup
    secret = config.parent / "dffmpeg-secret.key"
    database = config.parent / "c.db"
    key = admin_cli(config, "user", "add", "jellyfin", "--role", "client", "--key-only")
    key_text = key.stdout.strip()
    assert key.returncode == 0 and len(key_text) == 43
    # Created private: the secret, the database and its write-ahead log.
    assert mode(secret) == 0o600
    for path in config.parent.glob("c.db*"):
        assert mode(path) == 0o600, path
    # Not in the file, not in the log, not in the table: only a token.
    for path in config.parent.glob("c.db*"):
        assert key_text.encode() not in path.read_bytes()
    with sqlite3.connect(database) as conn:
        (stored,) = conn.execute("SELECT hmac_key FROM users").fetchone()
    assert stored.startswith("f1:") and key_text not in stored
    with coordinator(config, port) as url:
        assert works(url, "jellyfin", key_text)
    # A copy of the database with no secret: the coordinator refuses to start, in one line.
    copy_dir = config.parent / "copy"
    copy_dir.mkdir()
    (copy_dir / "c.db").write_bytes(database.read_bytes())
    copy = write_yaml(
        copy_dir / "coordinator.yaml",
        {"port": free_port(), "database_url": f"sqlite:///{copy_dir / 'c.db'}"},
    )
    started = subprocess.run(
        [sys.executable, "-m", "coordinator.serve", "--config", str(copy)],
        capture_output=True,
        text=True,
        env=process_env(),
        timeout=60,
    )
    assert started.returncode == 3
    ours = [line for line in started.stderr.splitlines() if line.startswith("dffmpeg")]
    assert len(ours) == 1 and ours[0].startswith("dffmpeg-coordinator: secret_key_file")
    assert "encrypted" in ours[0]
    assert not (copy_dir / "dffmpeg-secret.key").exists()
    # ... and a secret of its own opens nothing.
    assert admin_cli(copy, "secret", "create").returncode == 0
    refused = subprocess.run(
        [sys.executable, "-m", "coordinator.serve", "--config", str(copy)],
        capture_output=True,
        text=True,
        env=process_env(),
        timeout=60,
    )
    assert refused.returncode == 3 and "does not open" in refused.stderr


def test_rotating_the_secret_keeps_every_identity_working(setup: tuple[Path, int]) -> None:
    config, port = setup
    keys = {
        name: admin_cli(config, "user", "add", name, "--role", role, "--key-only").stdout.strip()
        for name, role in (("jellyfin", "client"), ("w1", "worker"), ("ops", "admin"))
    }
    secret = config.parent / "dffmpeg-secret.key"
    first = secret.read_text().split()
    rotated = admin_cli(config, "secret", "rotate", "--json")
    assert rotated.returncode == 0, rotated.stderr
    assert secret.read_text().split()[1:] == first and mode(secret) == 0o600
    with coordinator(config, port) as url:  # old tokens open with the old key, still there
        assert all(works(url, name, key) for name, key in keys.items())
    reencrypted = admin_cli(config, "secret", "reencrypt", "--retire", "--json")
    assert reencrypted.returncode == 0, reencrypted.stderr
    assert '"keys_reencrypted": 3' in reencrypted.stdout
    assert secret.read_text().split() == [secret.read_text().split()[0]]
    assert secret.read_text().split()[0] not in first
    with coordinator(config, port) as url:
        assert all(works(url, name, key) for name, key in keys.items())
        assert not works(url, "jellyfin", keys["w1"])


def test_keys_stored_before_encryption_are_encrypted_by_db_upgrade(
    setup: tuple[Path, int],
) -> None:
    config, port = setup
    database = config.parent / "c.db"
    plain = "an-old-plain-key-stored-before-encryption-x"
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO users (client_id, role, hmac_key, created_at, allowed_networks) "
            "VALUES ('old', 'client', ?, '2026-01-01 00:00:00.000000', '[]')",
            (plain,),
        )
    upgrade = admin_cli(config, "db", "upgrade", "--json")
    assert upgrade.returncode == 0 and '"keys_encrypted": 1' in upgrade.stdout
    with sqlite3.connect(database) as conn:
        (stored,) = conn.execute("SELECT hmac_key FROM users WHERE client_id = 'old'").fetchone()
    assert stored.startswith("f1:")
    with coordinator(config, port) as url:
        assert works(url, "old", plain)
