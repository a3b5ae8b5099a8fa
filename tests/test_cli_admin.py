"""The command-line tools against a real coordinator (and real workers): job id
prefixes, distinct refusals, Ctrl-C while watching, the operator's commands with
``--json`` in ``dffmpeg-admin`` and in ``dffmpeg-client`` with an admin identity."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import process_env, write_yaml
from tests.lifecycle_cluster import Coordinator, coordinator, submit

# A minute of work at real-time speed: long enough to act on while it runs.
LONG_JOB = [
    "-hide_banner",
    "-re",
    "-f",
    "lavfi",
    "-i",
    "testsrc=duration=60:size=160x120:rate=10",
    "-f",
    "null",
    "-",
]
NOBODY = "no-worker-has-this-label"


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with coordinator(tmp_path_factory.mktemp("cli")) as c:
        yield c


@pytest.fixture(scope="module")
def ops(coord: Coordinator) -> Path:
    """A client-format config with an admin identity (what an operator holds)."""
    key = coord.user("ops", "admin")
    return write_yaml(
        coord.root / "ops.yaml", {"client_id": "ops", "hmac_key": key, "coordinator_url": coord.url}
    )


def client(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=process_env(),
    )


def admin(coord: Coordinator, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator.admin_cli", "--config", str(coord.config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=process_env(),
    )


def one_object(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The single JSON object a ``--json`` command prints."""
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def refused(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one stderr line of a refusal; it never calls a lookup a rejected job."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "job rejected" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def insert_jobs(coord: Coordinator, requester: str, ids: list[str]) -> None:
    """Pending jobs with ids chosen by the test (sharing prefixes), that no worker takes."""
    from coordinator import create_app
    from coordinator.db import db
    from coordinator.models import Job

    app = create_app(
        {"database_url": f"sqlite:///{coord.root / 'coordinator.db'}"},
        start_janitor=False,
        start_transports=False,
    )
    with app.app_context():
        for job_id in ids:
            db.session.add(
                Job(
                    id=job_id,
                    requester=requester,
                    binary="ffprobe",
                    args=["-version"],
                    required_labels=[NOBODY],
                    wait_for_worker=True,
                )
            )
        db.session.commit()
        db.engine.dispose()


@pytest.mark.timeout(120)  # a dozen CLI starts; slow on a loaded machine
def test_job_ids_by_prefix_and_distinct_refusals(coord: Coordinator) -> None:
    _api, config = coord.client("prefixer")
    first = ("0ee55e8392bc" + uuid.uuid4().hex)[:32]
    second = ("0ee55e91a0c2" + uuid.uuid4().hex)[:32]
    insert_jobs(coord, "prefixer", [first, second])

    for prefix in (first[:12], first[:7], first):
        shown = client(config, "job", "show", prefix)
        assert shown.returncode == 0, shown.stderr
        assert f"job_id: {first}" in shown.stdout
    assert one_object(client(config, "job", "show", first[:12], "--json"))["job_id"] == first

    line = refused(client(config, "job", "show", "0ee55e"), 202)
    assert line == (
        "dffmpeg: job id 0ee55e is ambiguous: it matches 2 jobs "
        "(0ee55e8392bc, 0ee55e91a0c2); give more characters"
    )
    assert refused(client(config, "job", "show", "0ee55f"), 202) == "dffmpeg: no job 0ee55f"
    assert refused(client(config, "job", "attach", "0ee55"), 202) == (
        "dffmpeg: job id '0ee55' is too short: give at least 6 characters"
    )
    assert refused(client(config, "job", "logs", "0ee55f00"), 202) == "dffmpeg: no job 0ee55f00"

    canceled = one_object(client(config, "job", "cancel", first[:12], "--json"))
    assert (canceled["job_id"], canceled["state"]) == (first, "canceled")
    # Idempotent: canceling a canceled job again answers like the first cancel.
    again = one_object(client(config, "job", "cancel", first[:12], "--json"))
    assert (again["job_id"], again["state"]) == (first, "canceled")

    # dffmpeg-admin resolves prefixes the same way, among every client's jobs.
    assert refused(admin(coord, "job", "show", "0ee55e"), 1).startswith(
        "dffmpeg-admin: job id 0ee55e is ambiguous"
    )
    assert refused(admin(coord, "job", "show", "0ee55f"), 1) == "dffmpeg-admin: no job 0ee55f"
    assert one_object(admin(coord, "job", "show", second[:7], "--json"))["job_id"] == second
    admin_cancel = one_object(admin(coord, "job", "cancel", second[:12], "--json"))
    assert (admin_cancel["job_id"], admin_cancel["state"]) == (second, "canceled")
    again = one_object(admin(coord, "job", "cancel", second[:12], "--json"))
    assert (again["job_id"], again["state"]) == (second, "canceled")


def wait_state(coord: Coordinator, job_id: str, states: set[str]) -> dict[str, Any]:
    return coord.wait_job(job_id, states, timeout=30)


@pytest.mark.timeout(120)  # a dozen CLI starts; slow on a loaded machine
def test_dffmpeg_admin_drains_resumes_cancels_and_removes(coord: Coordinator) -> None:
    api, _config = coord.client("adm-client")
    with coord.worker("w-adm", ["adm"]):
        drained = one_object(admin(coord, "worker", "drain", "w-adm", "--json"))
        assert (drained["worker_id"], drained["drained"]) == ("w-adm", True)
        assert coord.worker_row("w-adm")["drained"] is True
        # A drained worker takes nothing; resuming it starts the waiting job.
        job_id = submit(api, LONG_JOB, required_labels=["adm"])
        time.sleep(1.5)
        assert coord.job(job_id)["state"] == "pending"
        resumed = one_object(admin(coord, "worker", "resume", "w-adm", "--json"))
        assert resumed["drained"] is False
        wait_state(coord, job_id, {"running"})

        busy = refused(admin(coord, "worker", "remove", "w-adm", "--json"), 1)
        assert busy == "dffmpeg-admin: worker w-adm still holds 1 job(s); drain it first"

        canceled = one_object(admin(coord, "job", "cancel", job_id[:12], "--json"))
        assert canceled["job_id"] == job_id
        assert canceled["state"] in ("canceling", "canceled")
        # The running coordinator passed the cancel on: the worker stopped ffmpeg.
        assert wait_state(coord, job_id, {"canceled", "failed"})["state"] == "canceled"

        shown = one_object(admin(coord, "worker", "show", "w-adm", "--json"))
        assert shown["state"] == "online" and shown["slots_used"] == 0
    # The worker stopped (and deregistered): now it can be forgotten.
    removed = one_object(admin(coord, "worker", "remove", "w-adm", "--json"))
    assert removed == {"removed": "w-adm"}
    assert all(
        w["worker_id"] != "w-adm" for w in coord.admin_api.call("GET", "/workers")["workers"]
    )
    assert refused(admin(coord, "worker", "drain", "w-adm"), 1) == "dffmpeg-admin: no worker w-adm"


@pytest.mark.timeout(120)  # a dozen CLI starts; slow on a loaded machine
def test_dffmpeg_admin_sets_allowed_networks(coord: Coordinator) -> None:
    coord.user("net-user", "client")
    set_ = one_object(
        admin(coord, "user", "networks", "net-user", "10.0.0.0/8", "192.168.1.7", "--json")
    )
    assert set_["allowed_networks"] == ["10.0.0.0/8", "192.168.1.7/32"]
    shown = one_object(admin(coord, "user", "networks", "net-user", "--json"))
    assert shown["allowed_networks"] == ["10.0.0.0/8", "192.168.1.7/32"]
    text = admin(coord, "user", "networks", "net-user")
    assert text.stdout.strip() == "net-user may connect from 10.0.0.0/8, 192.168.1.7/32"
    bad = refused(admin(coord, "user", "networks", "net-user", "10.0.0.300/8"), 1)
    assert "'10.0.0.300/8' is not an IP network" in bad
    cleared = one_object(admin(coord, "user", "networks", "net-user", "--any", "--json"))
    assert cleared["allowed_networks"] == []
    user = coord.admin_api.call("GET", "/users/net-user")["user"]
    assert user["allowed_networks"] == []


@pytest.mark.timeout(120)  # a dozen CLI starts; slow on a loaded machine
def test_dffmpeg_client_with_an_admin_identity_does_the_same(coord: Coordinator, ops: Path) -> None:
    api, config = coord.client("ops-client")
    with coord.worker("w-ops", ["ops"]):
        drained = one_object(client(ops, "worker", "drain", "w-ops", "--json"))
        assert (drained["worker_id"], drained["drained"]) == ("w-ops", True)
        listed = client(ops, "worker", "list")
        assert listed.returncode == 0 and "online, drained" in listed.stdout
        assert one_object(client(ops, "worker", "resume", "w-ops", "--json"))["drained"] is False
        job_id = submit(api, LONG_JOB, required_labels=["ops"])
        wait_state(coord, job_id, {"running"})
        # Another client's job, canceled by the operator, by prefix.
        canceled = one_object(client(ops, "job", "cancel", job_id[:8], "--json"))
        assert canceled["job_id"] == job_id
        assert wait_state(coord, job_id, {"canceled", "failed"})["state"] == "canceled"
        # A client identity may do none of it.
        assert refused(client(config, "worker", "drain", "w-ops"), 201) == (
            "dffmpeg: coordinator refused us: this action needs the role admin"
        )
    assert one_object(client(ops, "worker", "remove", "w-ops", "--json")) == {"removed": "w-ops"}
    assert refused(client(ops, "worker", "show", "w-ops"), 202) == "dffmpeg: no worker w-ops"
    nets = one_object(client(ops, "user", "networks", "ops-client", "127.0.0.0/8", "--json"))
    assert nets["allowed_networks"] == ["127.0.0.0/8"]
    assert (
        one_object(client(ops, "user", "networks", "ops-client", "--any", "--json"))[
            "allowed_networks"
        ]
        == []
    )


def read_some(proc: subprocess.Popen[bytes], timeout: float = 30) -> bytes:
    """Wait until the watching process relayed some of the job's stderr."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], timeout)
    assert ready, "no output relayed"
    return os.read(proc.stderr.fileno(), 65536)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [["job", "attach"], ["job", "logs", "-f"]])
def test_ctrl_c_stops_watching_with_130_and_no_traceback(
    coord: Coordinator, command: list[str]
) -> None:
    label = "int-" + command[-1].strip("-")
    api, config = coord.client(f"watcher-{label}")
    with coord.worker(f"w-{label}", [label]):
        job_id = submit(api, LONG_JOB, required_labels=[label])
        wait_state(coord, job_id, {"running"})
        proc = subprocess.Popen(
            [sys.executable, "-m", "client.cli", "--config", str(config), *command, job_id[:12]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=process_env(),
        )
        try:
            first = read_some(proc)
            assert first  # ffmpeg's own stderr, relayed: the watcher is in its loop
            proc.send_signal(signal.SIGINT)
            _out, rest = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130
        assert b"Traceback" not in first + rest
        assert b"KeyboardInterrupt" not in first + rest
        # Watching stopped; the job did not.
        assert coord.job(job_id)["state"] == "running"
        api.call("POST", f"/jobs/{job_id}/cancel")
        wait_state(coord, job_id, {"canceled", "failed"})
