"""Drop-in runs recorded on the client's machine and reported at the next contact.

Against a real coordinator process: many drop-ins recording at once while reporters
run lose nothing and count nothing twice; a report whose answer was lost is sent again
and counted once; an unreachable coordinator keeps the record; a batch the coordinator
can never accept does not cost every later call a request; ``status --all`` warns.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import incidents, reporting
from client.api import Api
from client.proxy import reports_waiting
from dffmpeg.config import ClientConfig
from tests.helpers import BIN, free_port, process_env, write_yaml
from tests.lifecycle_cluster import Coordinator, coordinator

RECORD = """
import sys
from pathlib import Path
from client import incidents
for i in range(int(sys.argv[2])):
    incidents.record(Path(sys.argv[1]), "cluster_exit", 200 + i % 3, "ffprobe")
"""
REPORT_LOOP = """
import sys, time
from pathlib import Path
from client import reporting
from client.api import Api
api = Api(sys.argv[1], sys.argv[2], sys.argv[3])
stop = Path(sys.argv[5])
while not stop.exists():
    reporting.report(api, Path(sys.argv[4]))
    time.sleep(0.01)
"""


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with coordinator(tmp_path_factory.mktemp("incidents")) as live:
        yield live


def reported(coord: Coordinator, client_id: str) -> dict[tuple[str, int], int]:
    summary = coord.admin_api.call("GET", "/cluster")["dropin_last_day"]
    return {
        (g["kind"], g["code"]): g["count"]
        for g in summary["by_client"]
        if g["client_id"] == client_id
    }


@pytest.mark.timeout(120)
def test_concurrent_drop_ins_lose_nothing_and_count_nothing_twice(
    coord: Coordinator, tmp_path: Path
) -> None:
    key = coord.user("many", "client")
    api = Api(coord.url, "many", key)
    state = tmp_path / "state"
    stop = tmp_path / "stop"
    env = process_env()
    reporters = [
        subprocess.Popen(
            [sys.executable, "-c", REPORT_LOOP, coord.url, "many", key, str(state), str(stop)],
            env=env,
        )
        for _ in range(2)
    ]
    writers = [
        subprocess.Popen([sys.executable, "-c", RECORD, str(state), "60"], env=env)
        for _ in range(8)
    ]
    try:
        assert all(w.wait(timeout=60) == 0 for w in writers)
    finally:
        stop.touch()
        for r in reporters:
            r.wait(timeout=30)
    assert reporting.report(api, state)
    api.close()
    assert not incidents.pending(state)
    assert reported(coord, "many") == {
        ("cluster_exit", 200): 160,
        ("cluster_exit", 201): 160,
        ("cluster_exit", 202): 160,
    }


def test_a_report_whose_answer_was_lost_counts_once(coord: Coordinator, tmp_path: Path) -> None:
    api, _ = coord.client("lost")
    state = tmp_path / "state"
    for _ in range(3):
        incidents.record(state, incidents.LOCAL_FALLBACK, 200, "ffmpeg")
    batch = reporting._new_batch(state)
    assert batch is not None
    # The coordinator stores it, but the drop-in dies before it hears so.
    reporting._send(api, batch, timeout=5)
    assert (state / "sending.json").exists()
    incidents.record(state, incidents.CLUSTER_EXIT, 204, "ffmpeg")  # a later run
    assert reporting.report(api, state)
    assert reported(coord, "lost") == {("local_fallback", 200): 3, ("cluster_exit", 204): 1}
    assert not incidents.pending(state)


def test_an_unreachable_coordinator_keeps_the_record(coord: Coordinator, tmp_path: Path) -> None:
    key = coord.user("away", "client")
    state = tmp_path / "state"
    incidents.record(state, incidents.CLUSTER_EXIT, 200, "ffprobe")
    gone = Api(f"http://127.0.0.1:{free_port()}", "away", key)
    assert not reporting.report(gone, state)
    gone.close()
    assert incidents.pending(state)
    back = Api(coord.url, "away", key)
    assert reporting.report(back, state)
    back.close()
    assert reported(coord, "away") == {("cluster_exit", 200): 1}


def test_a_batch_the_coordinator_refuses_is_dropped(coord: Coordinator, tmp_path: Path) -> None:
    api, _ = coord.client("skewed")
    state = tmp_path / "state"
    state.mkdir()
    far = time.time() - 90 * 86400  # the coordinator believes no time this far off
    entry = {"kind": "cluster_exit", "code": 200, "binary": "ffmpeg", "count": 1}
    (state / "sending.json").write_text(
        json.dumps({"batch": "b", "entries": [{**entry, "first_at": far, "last_at": far}]})
    )
    assert reporting.report(api, state)
    assert not incidents.pending(state)  # not sent again on every later call
    assert reported(coord, "skewed") == {}


def test_what_the_drop_in_checks_on_its_fast_path(tmp_path: Path) -> None:
    config = ClientConfig("c", "k", "http://127.0.0.1:1", state_dir=str(tmp_path / "s"))
    state = tmp_path / "s"
    assert reports_waiting(config) is None and not incidents.pending(state)
    incidents.record(state, incidents.CLUSTER_EXIT, 200, "ffprobe")
    assert reports_waiting(config) == str(state) and incidents.pending(state)
    (state / "incidents.jsonl").write_bytes(b"")
    assert reports_waiting(config) is None and not incidents.pending(state)
    (state / "sending.json").write_text("{}")
    assert reports_waiting(config) == str(state) and incidents.pending(state)


def test_the_file_stops_growing_at_its_cap(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    (state / "incidents.jsonl").write_bytes(b"x" * incidents.MAX_BYTES)
    incidents.record(state, incidents.CLUSTER_EXIT, 200, "ffprobe")
    assert (state / "incidents.jsonl").stat().st_size == incidents.MAX_BYTES


def _dropin(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / "dffmpeg-proxy"), "ffprobe", *args],
        env={**env, "DFFMPEG_CLIENT_CONFIG": str(config)},
        capture_output=True,
        timeout=60,
    )


def test_drop_in_failures_are_reported_at_the_next_contact(
    coord: Coordinator, tmp_path: Path
) -> None:
    key = coord.user("media", "client")
    state = tmp_path / "state"
    base: dict[str, Any] = {"client_id": "media", "hmac_key": key, "state_dir": str(state)}
    away = write_yaml(
        tmp_path / "away.yaml", {**base, "coordinator_url": f"http://127.0.0.1:{free_port()}"}
    )
    env = process_env(XDG_STATE_HOME=str(tmp_path / "xdg"))
    out = _dropin(away, env, "-v", "error", "/nothing.mp4")
    assert out.returncode == 200 and out.stdout == b""
    # No usable config at all: recorded where a config would put it by default.
    out = _dropin(tmp_path / "missing.yaml", env, "-version")
    assert out.returncode == 207 and out.stdout == b""
    default = tmp_path / "xdg" / "dffmpeg" / "incidents.jsonl"
    assert json.loads(default.read_text())["code"] == 207
    lines = (state / "incidents.jsonl").read_text().splitlines()
    assert [json.loads(line)["code"] for line in lines] == [200]

    # dffmpeg-client reaching the coordinator reports it before doing its work.
    good = write_yaml(tmp_path / "good.yaml", {**base, "coordinator_url": coord.url})
    cli = [sys.executable, "-m", "client.cli", "--config", str(good), "job", "list", "--json"]
    subprocess.run(cli, env=env, check=True, capture_output=True, timeout=60)
    assert not incidents.pending(state)
    assert reported(coord, "media") == {("cluster_exit", 200): 1}

    # An operator's status --all warns, and --json carries the counts.
    ops_key = coord.user("ops", "admin")
    ops_config = write_yaml(
        tmp_path / "ops.yaml",
        {"client_id": "ops", "hmac_key": ops_key, "coordinator_url": coord.url},
    )
    status = [sys.executable, "-m", "client.cli", "--config", str(ops_config), "status", "--all"]
    text = subprocess.run(status, env=env, check=True, capture_output=True, timeout=60).stdout
    assert b"WARNING: in the last day" in text
    assert b"media 1x 200" in text
    data = json.loads(
        subprocess.run(
            [*status, "--json"], env=env, check=True, capture_output=True, timeout=60
        ).stdout
    )
    assert data["dropin_last_day"]["cluster_exits"] >= 1
    assert any("media 1x 200" in w for w in data["warnings"])
