"""The drop-in's parsed client config: used while the file is unchanged, never after."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dffmpeg import config_cache
from dffmpeg.config import load_client
from tests.helpers import REPO

CONFIG = "client_id: c1\nhmac_key: k-one\ncoordinator_url: http://127.0.0.1:9\n"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "dffmpeg"


def test_a_second_load_reads_no_yaml(tmp_path: Path, state: Path) -> None:
    """In a fresh process, the second load of an unchanged config imports no PyYAML."""
    config = tmp_path / "client.yaml"
    config.write_text(CONFIG)
    time.sleep(config_cache.RACY_NS / 1e9)  # a file changed just now is parsed every time
    script = (
        "import sys\n"
        "from dffmpeg.config import load_client\n"
        f"c = load_client({str(config)!r})\n"
        "print(c.client_id, c.hmac_key, 'yaml' in sys.modules)\n"
    )
    env = {**os.environ, "XDG_STATE_HOME": str(state.parent), "PYTHONPATH": str(REPO)}
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs == [["c1", "k-one", "True"], ["c1", "k-one", "False"]]
    (entry,) = (state / "config-cache").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700


def test_any_change_to_the_file_is_seen(tmp_path: Path, state: Path) -> None:
    config = tmp_path / "client.yaml"
    config.write_text(CONFIG)
    time.sleep(config_cache.RACY_NS / 1e9)
    assert load_client(str(config)).hmac_key == "k-one"
    assert config_cache.load(state, config) is not None
    before = config.stat()
    # The same size, and the modification time set back: the change time still moves.
    config.write_text(CONFIG.replace("k-one", "k-two"))
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert config_cache.load(state, config) is None  # changed: the copy is not used
    assert load_client(str(config)).hmac_key == "k-two"
    # Replaced by another file (a new inode).
    other = tmp_path / "other.yaml"
    other.write_text(CONFIG.replace("k-one", "k-333"))
    other.replace(config)
    assert load_client(str(config)).hmac_key == "k-333"


def test_a_tampered_or_foreign_cache_is_not_used(tmp_path: Path, state: Path) -> None:
    config = tmp_path / "client.yaml"
    config.write_text(CONFIG)
    time.sleep(config_cache.RACY_NS / 1e9)
    load_client(str(config))
    (entry,) = (state / "config-cache").iterdir()
    record = json.loads(entry.read_text())
    record["path"] = "/somewhere/else.yaml"
    entry.write_text(json.dumps(record))
    assert config_cache.load(state, config) is None
    entry.write_text("not json")
    assert load_client(str(config)).hmac_key == "k-one"  # parsed again, and stored again
    assert config_cache.load(state, config) is not None


def test_what_json_cannot_hold_exactly_is_not_cached(tmp_path: Path, state: Path) -> None:
    config = tmp_path / "client.yaml"
    config.write_text(CONFIG + "paths:\n  1: /media\n")  # an int key would become "1"
    with pytest.raises(Exception):  # noqa: B017 - whatever the strict check says
        load_client(str(config))
    assert config_cache.load(state, config) is None


def test_a_copy_stored_right_after_a_change_is_not_used(tmp_path: Path, state: Path) -> None:
    """Changed again within the same clock tick, the file's times may not move: a copy
    stored so soon after a change is never trusted."""
    config = tmp_path / "client.yaml"
    config.write_text(CONFIG)
    assert load_client(str(config)).hmac_key == "k-one"
    assert config_cache.load(state, config) is None
