"""The admin API: users and their networks, workers, paged jobs, stderr tail, progress."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from coordinator import progress
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, encode_frames
from tests.conftest import Identities
from tests.helpers import SignedClient, port_open, require

WORKER = {
    "slots": 2,
    "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "version": "ffmpeg version 5.1.8"}},
    "labels": ["gpu"],
    "path_variables": ["Media"],
    "version": "0.1.0",
}


def submit(api: Identities, who: str = "client", args: list[str] | None = None) -> str:
    caller = api.client if who == "client" else api.other_client
    reply = caller.post(
        "/api/v1/jobs",
        json_body={"binary": "ffmpeg", "args": args or ["-h"], "wait_for_worker": True},
    )
    assert reply.status_code == 201, reply.get_json()
    job_id: str = reply.get_json()["job"]["job_id"]
    return job_id


def run_on_worker(api: Identities) -> list[str]:
    """Register w1, let it claim what it can, accept every claimed job."""
    assert api.worker.post("/api/v1/workers/register", json_body=WORKER).status_code == 200
    claimed = api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"]
    for job in claimed:
        assert api.worker.post(f"/api/v1/jobs/{job['job_id']}/accept").status_code == 200
    return [j["job_id"] for j in claimed]


def write_stderr(api: Identities, job_id: str, chunks: list[bytes], first_seq: int = 1) -> None:
    frames = [Frame(FrameKind.STDERR, first_seq + i, c) for i, c in enumerate(chunks)]
    reply = api.worker.post(
        f"/api/v1/jobs/{job_id}/output",
        data=encode_frames(frames),
        content_type=CONTENT_TYPE_FRAMES,
    )
    assert reply.status_code == 200, reply.get_json()


# -- roles ---------------------------------------------------------------------------


def test_admin_routes_refuse_other_roles(api: Identities) -> None:
    for caller in (api.client, api.worker):
        for method, path in (
            ("GET", "/api/v1/cluster"),
            ("GET", "/api/v1/users"),
            ("GET", "/api/v1/workers"),
            ("POST", "/api/v1/workers/w1/drain"),
            ("PUT", "/api/v1/users/alice/networks"),
            ("DELETE", "/api/v1/users/bob"),
        ):
            reply = caller.open(method, path, json_body={"allowed_networks": []})
            assert reply.status_code == 403, (caller.client_id, method, path)


# -- users ---------------------------------------------------------------------------


def test_add_user_shows_key_once_and_key_works(app: Flask, api: Identities) -> None:
    reply = api.admin.post(
        "/api/v1/users",
        json_body={"client_id": "jellyfin", "role": "client", "allowed_networks": ["127.0.0.1"]},
    )
    assert reply.status_code == 201
    user = reply.get_json()["user"]
    assert user["allowed_networks"] == ["127.0.0.1/32"]
    assert len(user["hmac_key"]) >= 32
    listed = api.admin.get("/api/v1/users").get_json()["users"]
    assert "hmac_key" not in next(u for u in listed if u["client_id"] == "jellyfin")
    jellyfin = SignedClient(app.test_client(), "jellyfin", user["hmac_key"])
    assert jellyfin.get("/api/v1/jobs").status_code == 200


def test_rotate_key_invalidates_old_key(app: Flask, api: Identities) -> None:
    old = SignedClient(app.test_client(), "alice", api.keys["alice"])
    assert old.get("/api/v1/jobs").status_code == 200
    new_key = api.admin.post("/api/v1/users/alice/rotate-key").get_json()["user"]["hmac_key"]
    assert new_key != api.keys["alice"]
    assert old.get("/api/v1/jobs").status_code == 401
    assert SignedClient(app.test_client(), "alice", new_key).get("/api/v1/jobs").status_code == 200


def test_allowed_networks_are_enforced_on_remote_address(api: Identities) -> None:
    # The test client connects from 127.0.0.1.
    reply = api.admin.open(
        "PUT", "/api/v1/users/alice/networks", json_body={"allowed_networks": ["10.0.0.0/8"]}
    )
    assert reply.status_code == 200
    assert reply.get_json()["user"]["allowed_networks"] == ["10.0.0.0/8"]
    refused = api.client.get("/api/v1/jobs")
    assert refused.status_code == 403
    assert "network" in refused.get_json()["message"]
    api.admin.open(
        "PUT",
        "/api/v1/users/alice/networks",
        json_body={"allowed_networks": ["10.0.0.0/8", "127.0.0.0/8"]},
    )
    assert api.client.get("/api/v1/jobs").status_code == 200
    api.admin.open("PUT", "/api/v1/users/alice/networks", json_body={"allowed_networks": []})
    assert api.client.get("/api/v1/jobs").status_code == 200


def test_bad_network_is_refused_in_plain_words(api: Identities) -> None:
    reply = api.admin.open(
        "PUT", "/api/v1/users/alice/networks", json_body={"allowed_networks": ["10.0.0.300/8"]}
    )
    assert reply.status_code == 400
    assert "is not an IP network" in reply.get_json()["message"]
    assert api.client.get("/api/v1/jobs").status_code == 200


def test_address_allowed_handles_mapped_ipv4_and_garbage() -> None:
    from coordinator.users import address_allowed

    assert address_allowed("::ffff:10.1.2.3", ["10.0.0.0/8"])
    assert not address_allowed("192.168.0.1", ["10.0.0.0/8"])
    assert not address_allowed(None, ["10.0.0.0/8"])
    assert address_allowed(None, [])
    assert address_allowed("fd00::5", ["fd00::/8"])


def test_delete_user_and_not_oneself(api: Identities) -> None:
    assert api.admin.delete("/api/v1/users/bob").status_code == 200
    assert api.admin.get("/api/v1/users/bob").status_code == 404
    assert api.other_client.get("/api/v1/jobs").status_code == 401
    reply = api.admin.delete("/api/v1/users/root")
    assert reply.status_code == 409
    assert "signed in as" in reply.get_json()["message"]


# -- workers -------------------------------------------------------------------------


def test_drain_stops_new_jobs_and_resume_restarts_them(api: Identities) -> None:
    assert api.worker.post("/api/v1/workers/register", json_body=WORKER).status_code == 200
    drained = api.admin.post("/api/v1/workers/w1/drain").get_json()["worker"]
    assert drained["drained"] is True
    job_id = submit(api)
    assert api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"] == []
    # A restart does not undo the operator's drain.
    api.worker.post("/api/v1/workers/register", json_body=WORKER)
    assert api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"] == []
    summary = api.admin.get("/api/v1/cluster").get_json()
    assert summary["slots"]["accepting_workers"] == 0
    api.admin.post("/api/v1/workers/w1/resume")
    claimed = api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"]
    assert [j["job_id"] for j in claimed] == [job_id]


def test_worker_listing_shows_load_and_versions(api: Identities) -> None:
    submit(api)
    run_on_worker(api)
    workers = api.admin.get("/api/v1/workers").get_json()["workers"]
    assert workers[0]["slots_used"] == 1
    assert workers[0]["slots"] == 2
    assert workers[0]["binary_versions"]["ffmpeg"]["version"] == "ffmpeg version 5.1.8"
    shown = api.admin.get("/api/v1/workers/w1").get_json()["worker"]
    assert shown["slots_used"] == 1
    assert api.admin.get("/api/v1/workers/nope").status_code == 404


def test_remove_refuses_a_busy_worker_then_forgets_an_idle_one(api: Identities) -> None:
    job_id = submit(api)
    run_on_worker(api)
    busy = api.admin.delete("/api/v1/workers/w1")
    assert busy.status_code == 409
    assert "drain it first" in busy.get_json()["message"]
    api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
    assert api.admin.delete("/api/v1/workers/w1").status_code == 200
    assert api.admin.get("/api/v1/workers").get_json()["workers"] == []


# -- jobs ----------------------------------------------------------------------------


def test_job_list_filters_pages_and_totals(api: Identities) -> None:
    alice = [submit(api, "client") for _ in range(5)]
    bob = [submit(api, "other") for _ in range(3)]
    page = api.admin.get("/api/v1/jobs?limit=3").get_json()
    assert page["total"] == 8
    assert len(page["jobs"]) == 3
    second = api.admin.get("/api/v1/jobs?limit=3&offset=3").get_json()
    third = api.admin.get("/api/v1/jobs?limit=3&offset=6").get_json()
    seen = [j["job_id"] for p in (page, second, third) for j in p["jobs"]]
    assert sorted(seen) == sorted(alice + bob)  # every job once, no gaps or repeats
    by_bob = api.admin.get("/api/v1/jobs?requester=bob").get_json()
    assert by_bob["total"] == 3
    assert {j["requester"] for j in by_bob["jobs"]} == {"bob"}
    run_on_worker(api)  # claims two (slots=2)
    running = api.admin.get("/api/v1/jobs?state=running,assigned&worker=w1").get_json()
    assert running["total"] == 2
    assert api.admin.get("/api/v1/jobs?state=bogus").status_code == 400
    # A client sees only its own jobs whatever it asks for.
    mine = api.other_client.get("/api/v1/jobs?requester=alice").get_json()
    assert mine["total"] == 3


def test_admin_cancels_any_job(api: Identities) -> None:
    job_id = submit(api)
    reply = api.admin.post(f"/api/v1/jobs/{job_id}/cancel")
    assert reply.get_json()["job"]["state"] == "canceled"
    events = api.admin.get(f"/api/v1/jobs/{job_id}").get_json()["job"]["events"]
    assert events[-1]["reason"] == "canceled by root"


def test_progress_is_parsed_from_stderr_and_stored(api: Identities) -> None:
    job_id = submit(api)
    run_on_worker(api)
    write_stderr(
        api,
        job_id,
        [
            b"Input #0, lavfi\n  Duration: 00:00:10.00, start: 0.000000, bitrate: N/A\n",
            b"frame=   50 fps= 25 q=28.0 size=     256kB time=00:00:02.00 bitrate=1048.6kbits/s"
            b" speed=1.5x    \r",
        ],
    )
    job = api.admin.get(f"/api/v1/jobs/{job_id}").get_json()["job"]
    assert job["progress"] == {
        "duration": 10.0,
        "time": 2.0,
        "speed": 1.5,
        "frame": 50,
        "fps": 25.0,
        "percent": 20.0,
    }
    write_stderr(api, job_id, [b"frame=  200 fps=30 time=00:00:08.00 bitrate=1k speed=2x\r"], 3)
    job = api.admin.get("/api/v1/jobs").get_json()["jobs"][0]
    assert job["progress"]["percent"] == 80.0
    assert job["progress"]["speed"] == 2.0


def test_progress_parser_ignores_noise_and_keeps_duration() -> None:
    assert progress.parse(b"[libx264 @ 0x55] using cpu capabilities\n") is None
    result = progress.parse(b"size=N/A time=00:00:03.00 bitrate=N/A speed=N/A\r", {"duration": 6.0})
    assert result == {"duration": 6.0, "time": 3.0, "percent": 50.0}
    negative = progress.parse(b"frame=0 fps=0.0 time=-00:00:00.04 bitrate=N/A speed=N/A\r")
    assert negative == {"time": 0.0, "frame": 0, "fps": 0.0}


def test_stderr_tail_returns_the_last_kilobytes(api: Identities) -> None:
    job_id = submit(api)
    run_on_worker(api)
    chunks = [(f"line {i:04d} ".encode() * 60) + b"\n" for i in range(40)]  # ~26 KiB
    write_stderr(api, job_id, chunks)
    tail: dict[str, Any] = api.admin.get(f"/api/v1/jobs/{job_id}/stderr?kb=4").get_json()
    assert tail["bytes"] == 4096
    assert tail["truncated"] is True
    assert tail["stderr"].endswith("line 0039 \n")
    whole = api.admin.get(f"/api/v1/jobs/{job_id}/stderr?kb=64").get_json()
    assert whole["truncated"] is False
    assert whole["stderr"] == b"".join(chunks).decode()
    assert api.other_client.get(f"/api/v1/jobs/{job_id}/stderr").status_code == 404


def test_cluster_summary_counts(api: Identities) -> None:
    submit(api)
    submit(api)
    run_on_worker(api)
    submit(api)
    summary = api.admin.get("/api/v1/cluster").get_json()
    assert summary["jobs_by_state"] == {"running": 2, "pending": 1}
    assert summary["workers_by_state"] == {"online": 1}
    assert summary["slots"] == {"total": 2, "used": 2, "accepting_workers": 1}
    assert summary["users_by_role"] == {"admin": 1, "client": 2, "worker": 1}


# -- the same queries on MariaDB and PostgreSQL ----------------------------------------

SERVER_DATABASES = {
    "mariadb": ("127.0.0.1", 3306, "mysql+pymysql://root@127.0.0.1:3306/dffmpeg_console_test"),
    "postgres": (
        "127.0.0.1",
        5432,
        "postgresql+psycopg://postgres@127.0.0.1:5432/dffmpeg_console_test",
    ),
}


def _fresh_database(url: str) -> None:
    """Create this module's own database if needed and empty it (never a shared one)."""
    from sqlalchemy import MetaData, create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin_db = "postgres" if target.get_backend_name() == "postgresql" else "mysql"
    server = create_engine(target.set(database=admin_db), isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        if target.get_backend_name() == "postgresql":
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
            ).first()
            if not exists:
                conn.execute(text(f"CREATE DATABASE {target.database}"))
        else:
            conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {target.database}"))
    server.dispose()
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    meta.drop_all(engine)
    engine.dispose()


@pytest.mark.parametrize("backend", ["mariadb", "postgres"])
def test_admin_queries_on_server_databases(backend: str) -> None:
    """Summary, paged filtered listing, drain and progress use portable SQL."""
    host, port, url = SERVER_DATABASES[backend]
    require(port_open(host, port), f"{backend} on {host}:{port}")
    from coordinator import create_app, users

    _fresh_database(url)
    app = create_app({"database_url": url}, start_janitor=False)
    try:
        keys = {}
        with app.app_context():
            for client_id, role in (("root", "admin"), ("alice", "client"), ("w1", "worker")):
                keys[client_id] = users.add_user(client_id, role)["hmac_key"]
        flask_client = app.test_client()
        api = Identities(
            admin=SignedClient(flask_client, "root", keys["root"]),
            client=SignedClient(flask_client, "alice", keys["alice"]),
            other_client=SignedClient(flask_client, "alice", keys["alice"]),
            worker=SignedClient(flask_client, "w1", keys["w1"]),
            keys=keys,
        )
        jobs = [submit(api) for _ in range(3)]
        claimed = run_on_worker(api)
        assert len(claimed) == 2
        write_stderr(
            api,
            claimed[0],
            [b"Duration: 00:00:04.00\nframe=1 fps=1 time=00:00:01.00 bitrate=1k speed=2x\r"],
        )
        page = api.admin.get("/api/v1/jobs?limit=2&offset=1&state=running,pending").get_json()
        assert page["total"] == 3
        assert len(page["jobs"]) == 2
        assert {j["job_id"] for j in page["jobs"]} < set(jobs)
        job = api.admin.get(f"/api/v1/jobs/{claimed[0]}").get_json()["job"]
        assert job["progress"]["percent"] == 25.0
        assert api.admin.post("/api/v1/workers/w1/drain").status_code == 200
        summary = api.admin.get("/api/v1/cluster").get_json()
        assert summary["slots"] == {"total": 2, "used": 2, "accepting_workers": 0}
        assert summary["jobs_by_state"] == {"running": 2, "pending": 1}
        assert api.admin.get("/api/v1/workers").get_json()["workers"][0]["slots_used"] == 2
        tail = api.admin.get(f"/api/v1/jobs/{claimed[0]}/stderr?kb=1").get_json()
        assert tail["stderr"].startswith("Duration")
    finally:
        from coordinator.db import db

        with app.app_context():
            db.engine.dispose()
