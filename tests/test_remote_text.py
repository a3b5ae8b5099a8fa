"""Remote text is shown, never obeyed: escape sequences that a worker or a client put
into labels, versions, host names, error texts, job arguments and working directories
reach an operator's terminal as visible text (``\\x1b``), never as control bytes; the
``--json`` output carries them exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.api import Api
from dffmpeg.text import printable
from tests.helpers import process_env, write_yaml
from tests.lifecycle_cluster import Coordinator, coordinator

TITLE = "\x1b]0;owned\x07"  # sets the window title
CLEAR = "\x1b[2J\x1b[H"  # clears the screen
CSI = "\x9b31m"  # the one-character (C1) form of ESC [
LABEL = f"gpu{TITLE}"
VERSION = f"9.9{CLEAR}"
BINARY_VERSION = f"ffmpeg version 6.0{TITLE}"
HOSTNAME = f"host{CSI}"
ARG = f"/media/{CLEAR}movie.mkv"
CWD = f"/media/{TITLE}"
ERROR = f"could not start: {CLEAR}{CSI}bye"
# Bytes that must never reach a terminal from remote text: ESC, BEL, CSI (as UTF-8).
CONTROL = (b"\x1b", b"\x07", "\x9b".encode())


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, Path, str]]:
    """A coordinator where a worker and a client filled every field with escapes.

    Yields it, an operator's config and the id of the job (failed by the worker with
    an escape-laden error).
    """
    with coordinator(tmp_path_factory.mktemp("evil")) as coord:
        ops_key = coord.user("ops", "admin")
        ops = write_yaml(
            coord.root / "ops.yaml",
            {"client_id": "ops", "hmac_key": ops_key, "coordinator_url": coord.url},
        )
        worker = Api(coord.url, "evil-worker", coord.user("evil-worker", "worker"))
        client, _config = coord.client("evil-client")
        try:
            worker.call(
                "POST",
                "/workers/register",
                json_body={
                    "slots": 1,
                    "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "version": BINARY_VERSION}},
                    "labels": [LABEL],
                    "version": VERSION,
                    "hostname": HOSTNAME,
                },
            )
            job = {
                "binary": "ffmpeg",
                "args": ["-i", ARG, "-f", "null", "-"],
                "cwd": CWD,
                "mode": "background",
                "required_labels": [LABEL],
                "wait_for_worker": True,
            }
            job_id = client.call("POST", "/jobs", json_body=job)["job"]["job_id"]
            assigned = worker.call("GET", "/workers/poll", params={"wait": 10})["jobs"]
            assert [j["job_id"] for j in assigned] == [job_id]
            worker.call("POST", f"/jobs/{job_id}/accept")
            worker.call("POST", f"/jobs/{job_id}/finish", json_body={"error": ERROR})
            yield coord, ops, job_id
        finally:
            worker.close()


def run(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(command, capture_output=True, timeout=60, env=process_env())
    assert result.returncode == 0, result.stderr
    return result


def client(config: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run([sys.executable, "-m", "client.cli", "--config", str(config), *args])


def admin(coord: Coordinator, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run(
        [sys.executable, "-m", "coordinator.admin_cli", "--config", str(coord.config), *args]
    )


def assert_shown_not_obeyed(out: bytes, *texts: str) -> None:
    for control in CONTROL:
        assert control not in out, (control, out)
    shown = out.decode()
    for text in texts:
        assert printable(text) in shown, (printable(text), shown)


@pytest.mark.timeout(120)  # CLI starts, and the module's coordinator
def test_status_all_shows_labels_versions_literally(evil: tuple[Coordinator, Path, str]) -> None:
    _coord, ops, _job_id = evil
    out = client(ops, "status", "--all").stdout
    assert_shown_not_obeyed(out, LABEL, VERSION, "6.0" + TITLE)
    assert "gpu\\x1b]0;owned\\x07" in out.decode()  # what the operator reads


@pytest.mark.timeout(120)  # CLI starts, and the module's coordinator
def test_job_show_and_list_show_args_cwd_and_error_literally(
    evil: tuple[Coordinator, Path, str],
) -> None:
    _coord, ops, job_id = evil
    shown = client(ops, "job", "show", job_id[:12]).stdout
    assert_shown_not_obeyed(shown, ARG, CWD, ERROR, LABEL)
    assert_shown_not_obeyed(client(ops, "job", "list").stdout)
    assert_shown_not_obeyed(client(ops, "status").stdout)


@pytest.mark.timeout(120)  # CLI starts, and the module's coordinator
def test_dffmpeg_admin_text_output_is_safe(evil: tuple[Coordinator, Path, str]) -> None:
    coord, _ops, job_id = evil
    assert_shown_not_obeyed(admin(coord, "job", "show", job_id[:12]).stdout, ARG, CWD, ERROR)
    assert_shown_not_obeyed(admin(coord, "job", "list").stdout)
    assert_shown_not_obeyed(admin(coord, "worker", "list").stdout, LABEL, VERSION)
    assert_shown_not_obeyed(admin(coord, "worker", "show", "evil-worker").stdout, HOSTNAME)


@pytest.mark.timeout(120)  # CLI starts, and the module's coordinator
def test_the_failure_line_of_attach_is_safe(evil: tuple[Coordinator, Path, str]) -> None:
    _coord, ops, job_id = evil
    result = subprocess.run(
        [sys.executable, "-m", "client.cli", "--config", str(ops), "job", "attach", job_id],
        capture_output=True,
        timeout=60,
        env=process_env(),
    )
    assert result.returncode == 202  # start_failed
    assert_shown_not_obeyed(result.stderr, ERROR)
    assert result.stderr.startswith(b"dffmpeg: job failed: ")


@pytest.mark.timeout(120)  # CLI starts, and the module's coordinator
def test_json_output_carries_the_text_exactly(evil: tuple[Coordinator, Path, str]) -> None:
    coord, ops, job_id = evil
    data: dict[str, Any] = json.loads(client(ops, "status", "--all", "--json").stdout)
    (worker,) = [w for w in data["workers"] if w["worker_id"] == "evil-worker"]
    assert worker["labels"] == [LABEL]
    assert worker["version"] == VERSION
    assert worker["hostname"] == HOSTNAME
    job = json.loads(client(ops, "job", "show", job_id, "--json").stdout)
    assert (job["args"][1], job["cwd"], job["reason"]) == (ARG, CWD, ERROR)
    admin_job = json.loads(admin(coord, "job", "show", job_id, "--json").stdout)
    assert (admin_job["args"][1], admin_job["cwd"], admin_job["reason"]) == (ARG, CWD, ERROR)
    # JSON escapes control characters itself: the raw output is safe for a terminal too.
    assert b"\x1b" not in client(ops, "status", "--all", "--json").stdout
