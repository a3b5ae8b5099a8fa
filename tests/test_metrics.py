"""GET /metrics and /health/ready against the real app, on every database kind.

The multiprocess, several-process side is in tests/test_metrics_cluster.py; here the
values themselves: cluster gauges from the database, job timings and outcomes,
refusals by reason, held long-polls, drop-in reports, transport fallbacks, access.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

from tests.conftest import Identities
from tests.helpers import SignedClient, wait_until
from tests.prom import Scrape, promtool_check_metrics
from tests.test_scheduling import poll, register, run_to_end, submit, worker_client


def scrape(app: Flask, address: str = "127.0.0.1") -> Scrape:
    reply = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": address})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.content_type.startswith("text/plain; version=0.0.4")
    return Scrape(reply.get_data(as_text=True))


def test_a_mix_of_jobs_is_counted_as_it_happened(app: Flask, api: Identities) -> None:
    register(api.worker, slots=6, paths=["Media"])
    done = [submit(api.client) for _ in range(3)]
    nonzero = submit(api.client)
    canceled = submit(api.client)
    submit(api.client, wait_for_worker=True, required_labels=["gpu"])  # stays pending
    assert sorted(poll(api.worker)) == sorted([*done, nonzero, canceled])
    for job_id in done:
        output = api.worker.post(
            f"/api/v1/jobs/{job_id}/accept",
        )
        assert output.status_code == 200
    for job_id in done:
        api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body={"exit_code": 0})
    run_to_end(api.worker, nonzero, exit_code=1)
    assert api.client.post(f"/api/v1/jobs/{canceled}/cancel").status_code == 200
    # Nobody has the label: it fails at once as no_capable_worker.
    impossible = submit(api.client, required_labels=["nobody-has-this"])
    assert api.client.get(f"/api/v1/jobs/{impossible}").get_json()["job"]["state"] == "failed"
    probe = submit(api.client, binary="ffprobe", args=["-i", "in.mp4"])  # no ffprobe worker
    assert api.client.get(f"/api/v1/jobs/{probe}").get_json()["job"]["failure"] == (
        "no_capable_worker"
    )

    got = scrape(app)
    promtool_check_metrics(got.text)
    # Cluster gauges, from the database.
    assert got.value("dffmpeg_jobs", state="completed", binary="ffmpeg") == 4
    assert got.value("dffmpeg_jobs", state="canceled", binary="ffmpeg") == 1
    assert got.value("dffmpeg_jobs", state="failed", binary="ffmpeg") == 1
    assert got.value("dffmpeg_jobs", state="failed", binary="ffprobe") == 1
    assert got.value("dffmpeg_jobs", state="pending", binary="ffmpeg") == 1
    assert got.value("dffmpeg_jobs", state="running") == 0
    assert got.value("dffmpeg_queue_oldest_pending_seconds") > 0
    assert got.value("dffmpeg_workers", state="online", sandboxed="false", drained="false") == 1
    assert got.value("dffmpeg_workers", state="offline") == 0
    assert got.value("dffmpeg_worker_slots", worker="w1") == 6
    assert got.value("dffmpeg_worker_slots_used", worker="w1") == 0
    assert got.value("dffmpeg_database_up") == 1
    # Process-local counters and histograms.
    assert got.value("dffmpeg_jobs_submitted_total", binary="ffmpeg") == 7
    assert got.value("dffmpeg_jobs_finished_total", binary="ffmpeg", state="completed") == 4
    assert got.value("dffmpeg_jobs_finished_total", binary="ffmpeg", state="canceled") == 1
    assert got.value("dffmpeg_jobs_finished_total", binary="ffmpeg", state="failed") == 1
    assert got.value("dffmpeg_job_failures_total", failure="no_capable_worker") == 2
    assert got.value("dffmpeg_job_failures_total", failure="canceled") == 1
    assert got.value("dffmpeg_job_failures_total", failure="worker_lost") == 0
    assert got.value("dffmpeg_job_queue_wait_seconds_count", binary="ffmpeg") == 4
    assert got.value("dffmpeg_job_run_seconds_count", binary="ffmpeg") == 4
    # Every finished job has a total time, including the two that never ran.
    assert got.value("dffmpeg_job_total_seconds_count", binary="ffmpeg") == 6
    assert got.value("dffmpeg_job_total_seconds_count", binary="ffprobe") == 1
    routes = {labels.get("route") for name, labels, _ in got.samples if "http_requests" in name}
    assert "/api/v1/jobs/<job_id>/finish" in routes
    assert (
        got.value("dffmpeg_http_requests_total", route="/api/v1/jobs", method="POST", status="201")
        == 8
    )


def test_the_first_output_is_timed_once(app: Flask, api: Identities) -> None:
    from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, encode_frames

    register(api.worker)
    job_id = submit(api.client)
    assert poll(api.worker) == [job_id]
    assert api.worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200

    def send(frames: list[Frame]) -> None:
        reply = api.worker.post(
            f"/api/v1/jobs/{job_id}/output",
            data=encode_frames(frames),
            content_type=CONTENT_TYPE_FRAMES,
        )
        assert reply.status_code == 200

    first = [Frame(FrameKind.STDERR, 1, b"a"), Frame(FrameKind.STDOUT, 2, b"b")]
    send(first)
    send(first)  # a retry of the same request adds nothing
    send([Frame(FrameKind.STDERR, 3, b"c")])
    assert scrape(app).value("dffmpeg_job_first_output_seconds_count", binary="ffmpeg") == 1


def test_refusals_are_counted_by_reason_behind_one_answer(app: Flask, api: Identities) -> None:
    flask = api.client.flask
    assert flask.get("/api/v1/jobs").status_code == 401
    assert SignedClient(flask, "alice", "not-her-key").get("/api/v1/jobs").status_code == 401
    assert SignedClient(flask, "nobody", "some-key").get("/api/v1/jobs").status_code == 401
    from dffmpeg import signing

    headers = signing.sign_headers("alice", api.keys["alice"], "GET", "/api/v1/jobs", b"")
    assert flask.get("/api/v1/jobs", headers=headers).status_code == 200
    assert flask.get("/api/v1/jobs", headers=headers).status_code == 401  # replayed
    old = signing.sign_headers(
        "alice", api.keys["alice"], "GET", "/api/v1/jobs", b"", now=time.time() - 120
    )
    assert flask.get("/api/v1/jobs", headers=old).status_code == 401
    assert api.worker.get("/api/v1/jobs").status_code == 403  # a worker may not list jobs

    got = scrape(app)
    for reason in ("missing_headers", "bad_signature", "unknown_identity", "replayed_nonce"):
        assert got.value("dffmpeg_auth_refusals_total", reason=reason) == 1, reason
    assert got.value("dffmpeg_auth_refusals_total", reason="stale_timestamp") == 1
    assert got.value("dffmpeg_auth_refusals_total", reason="role") == 1
    assert got.value("dffmpeg_auth_refusals_total", reason="network") == 0


def test_metrics_only_for_allowed_networks(app: Flask) -> None:
    client = app.test_client()
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        reply = client.get("/metrics", environ_base={"REMOTE_ADDR": address})
        assert reply.status_code == 200, address
    for address in ("10.1.2.3", "192.168.0.5", "2001:db8::1"):
        reply = client.get("/metrics", environ_base={"REMOTE_ADDR": address})
        assert reply.status_code == 403, address
        assert reply.get_json()["error"] == "forbidden"
        assert b"dffmpeg_" not in reply.get_data()  # no metric leaks into the refusal
    settings = app.config["DFFMPEG"]
    settings.metrics_allowed_networks = ["10.0.0.0/8"]
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403
    settings.metrics_allowed_networks = []  # nobody
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 403


def test_held_long_polls_are_a_gauge(app: Flask, api: Identities) -> None:
    register(api.worker)
    answers: list[Any] = []
    poller = threading.Thread(
        target=lambda: answers.append(api.worker.get("/api/v1/workers/poll?wait=10")),
        daemon=True,
    )
    poller.start()
    wait_until(lambda: scrape(app).value("dffmpeg_long_polls_held", kind="worker") == 1)
    # A submission wakes the poll with a job: one delivery over HTTP long-poll.
    other = SignedClient(app.test_client(), "alice", api.keys["alice"])
    submit(other)
    poller.join(timeout=10)
    assert answers and answers[0].status_code == 200 and answers[0].get_json()["jobs"]
    got = scrape(app)
    assert got.value("dffmpeg_long_polls_held", kind="worker") == 0
    assert got.value("dffmpeg_transport_deliveries_total", transport="http") == 1


def test_database_errors_are_counted(app: Flask) -> None:
    from coordinator.db import db

    with app.app_context():
        try:
            db.session.execute(text("SELECT * FROM no_such_table"))
        except Exception:
            db.session.rollback()
    got = scrape(app)
    errors = sum(v for n, _, v in got.samples if n == "dffmpeg_database_errors_total")
    assert errors == 1


def test_party_reported_fallbacks_are_counted(app: Flask, api: Identities) -> None:
    app.config["DFFMPEG"].transports = ["mqtt", "http"]
    reply = api.worker.post(
        "/api/v1/transport/fallback", json_body={"transport": "mqtt", "reason": "down"}
    )
    assert reply.status_code == 200
    for body in (
        {"transport": "http", "reason": "down"},
        {"transport": "rabbitmq", "reason": "down"},  # not one of this coordinator's
        {"transport": "mqtt", "reason": "bored"},
    ):
        assert api.worker.post("/api/v1/transport/fallback", json_body=body).status_code == 400
    # The broker both sides want is down here (no publisher at all): negotiation falls
    # back to HTTP, and that is counted too.
    reply = api.worker.post("/api/v1/transport/negotiate", json_body={"offered": ["mqtt"]})
    assert reply.get_json()["transport"] == "http"
    got = scrape(app)
    assert got.value("dffmpeg_transport_fallbacks_total", transport="mqtt", reason="down") == 1
    assert (
        got.value(
            "dffmpeg_transport_fallbacks_total", transport="mqtt", reason="coordinator_unavailable"
        )
        == 1
    )


def test_readiness(app: Flask) -> None:
    client = app.test_client()
    reply = client.get("/health/ready")
    assert reply.status_code == 200
    assert reply.get_json()["status"] == "ready"
    from coordinator.db import db

    with app.app_context():
        db.session.execute(text("UPDATE alembic_version SET version_num = 'older'"))
        db.session.commit()
    reply = client.get("/health/ready")
    assert reply.status_code == 503
    assert "revision older" in reply.get_json()["reason"]
    assert client.get("/health").status_code == 200  # liveness is not readiness
    app.extensions["dffmpeg.draining"].set()
    reply = client.get("/health/ready")
    assert reply.status_code == 503
    assert reply.get_json()["status"] == "draining"
    app.extensions["dffmpeg.draining"].clear()


def test_pinned_doctor_jobs_go_to_their_worker_only(app: Flask, api: Identities) -> None:
    w2 = worker_client(app, api, "w2")
    register(api.worker, slots=2, paths=["Media"])
    register(w2, slots=2, paths=["Media"])
    body = {
        "worker_id": "w2",
        "variable": "Media",
        "direction": "write",
        "name": ".dffmpeg-doctor-0123456789abcdef.txt",
        "token": "feedfacefeedface",
    }
    reply = api.client.post("/api/v1/doctor/probe", json_body=body)
    assert reply.status_code == 201, reply.get_json()
    job = reply.get_json()["job"]
    assert job["pinned_worker"] == "w2"
    # The command is the coordinator's, not the caller's.
    assert job["args"][-1] == "$Media/.dffmpeg-doctor-0123456789abcdef.txt"
    assert "dffmpeg_token=feedfacefeedface" in job["args"]
    assert poll(api.worker) == []
    assert poll(w2) == [job["job_id"]]
    for bad in (
        {**body, "name": "../../etc/passwd"},
        {**body, "token": "x; rm -rf /"},
        {**body, "direction": "other"},
        {**body, "variable": "$Media"},
    ):
        assert api.client.post("/api/v1/doctor/probe", json_body=bad).status_code == 400
    missing = {**body, "variable": "Transcodes"}
    assert api.client.post("/api/v1/doctor/probe", json_body=missing).status_code == 409
    assert api.worker.post("/api/v1/doctor/probe", json_body=body).status_code == 403
    # A plain submit cannot pin: the field is not read.
    plain = submit(api.client, pinned_worker="w2")
    assert api.client.get(f"/api/v1/jobs/{plain}").get_json()["job"]["pinned_worker"] is None


def test_doctor_sees_identity_and_serving_workers(api: Identities) -> None:
    register(api.worker, paths=["Media"])
    identity = api.worker.get("/api/v1/doctor/identity").get_json()
    assert identity["client_id"] == "w1" and identity["role"] == "worker"
    assert api.client.get("/api/v1/doctor/identity").get_json()["role"] == "client"
    workers = api.client.get("/api/v1/doctor/workers").get_json()["workers"]
    assert [w["worker_id"] for w in workers] == ["w1"]
    assert workers[0]["path_variables"] == ["Media"]
    assert len(workers[0]["binaries"]["ffmpeg"]["capabilities"]) == 16


def report(client: SignedClient, batch: str, *entries: dict[str, Any]) -> Any:
    return client.post("/api/v1/reports/dropin", json_body={"batch": batch, "entries": entries})


def entry(kind: str, code: int, count: int, age: float = 60.0) -> dict[str, Any]:
    at = time.time() - age
    return {"kind": kind, "code": code, "binary": "ffprobe", "count": count,
            "first_at": at - 10, "last_at": at}  # fmt: skip


def test_dropin_reports_are_counted_once(app: Flask, api: Identities) -> None:
    reply = report(
        api.client,
        "b1:0",
        entry("local_fallback", 200, 3),
        entry("cluster_exit", 203, 2),
        entry("cluster_exit", 200, 1, age=3 * 86400),  # older than a day
    )
    assert reply.get_json() == {"stored": True, "duplicate": False}
    # The same batch again (its answer was lost): stored and counted once.
    again = report(api.client, "b1:0", entry("local_fallback", 200, 3))
    assert again.get_json() == {"stored": False, "duplicate": True}
    assert report(api.other_client, "b1:0", entry("cluster_exit", 201, 1)).status_code == 200
    for bad in (
        entry("other", 200, 1),
        entry("cluster_exit", 1, 1),
        entry("cluster_exit", 200, 0),
        {**entry("cluster_exit", 200, 1), "last_at": 1e300},
        {**entry("cluster_exit", 200, 1), "binary": "../x"},
    ):
        assert report(api.client, "b2", bad).status_code == 400, bad
    assert api.worker.post("/api/v1/reports/dropin", json_body={}).status_code == 403

    got = scrape(app)
    assert (
        got.value("dffmpeg_local_fallbacks_total", client="alice", kind="coordinator_unreachable")
        == 3
    )
    assert got.value("dffmpeg_cluster_exit_codes_total", code="203") == 2
    assert got.value("dffmpeg_cluster_exit_codes_total", code="200") == 1
    assert got.value("dffmpeg_cluster_exit_codes_total", code="201") == 1
    summary = api.admin.get("/api/v1/cluster").get_json()["dropin_last_day"]
    assert summary["local_fallbacks"] == 3
    assert summary["cluster_exits"] == 3  # 2 of alice's, 1 of bob's; the 3-day-old one not
    assert {(g["client_id"], g["kind"], g["code"], g["count"]) for g in summary["by_client"]} == {
        ("alice", "local_fallback", 200, 3),
        ("alice", "cluster_exit", 203, 2),
        ("bob", "cluster_exit", 201, 1),
    }
    from client.status import summary_text, warnings

    full = api.admin.get("/api/v1/cluster").get_json()
    lines = warnings(full)
    assert len(lines) == 2
    assert lines[0].startswith("WARNING: in the last day 3 drop-in run(s) ran the local binary")
    assert "alice 3x 200" in lines[0]
    assert "24h: fallbacks 3  cluster exits 3" in summary_text(full, 0)


def test_reports_go_with_the_job_retention(app: Flask, api: Identities) -> None:
    from datetime import timedelta

    from coordinator import retention
    from coordinator.db import db, now_utc
    from coordinator.models import DropinReport

    report(api.client, "old", entry("cluster_exit", 200, 1, age=10 * 86400))
    report(api.client, "new", entry("cluster_exit", 200, 1))
    with app.app_context():
        retention.purge(timedelta(days=1), timedelta(days=7), now=now_utc())
        left = [r.batch for r in db.session.execute(db.select(DropinReport)).scalars()]
    assert left == ["new"]


def test_the_gunicorn_master_does_not_load_prometheus_client() -> None:
    """prometheus-client picks its storage when first imported: the master must not
    import it before it made the multiprocess directory (coordinator/metrics_dir.py)."""
    import subprocess
    import sys

    from tests.helpers import process_env

    code = "import sys, coordinator.serve; sys.exit('prometheus_client' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], env=process_env(), timeout=60).returncode == 0
    )


def test_a_too_early_import_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The directory set after prometheus-client was loaded in-process: say so, do not
    serve a fraction of the counts."""
    from coordinator.instruments import multiprocess_dir

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="imported before"):
        multiprocess_dir()
