"""What the console reads and changes through the admin API, on every database:
job filters with negation, failed and search; file names; the per-minute samples;
load from heartbeats; live slots and labels; worker details without the probe text."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Flask

from coordinator import samples
from coordinator.db import db, now_utc
from coordinator.models import ClusterSample, Job
from tests.conftest import Identities
from tests.test_admin_api import WORKER, run_on_worker


def jobs(api: Identities, *pairs: tuple[str, str], who: Any = None) -> list[str]:
    query = urlencode([("limit", "500"), *pairs])
    reply = (who or api.admin).get(f"/api/v1/jobs?{query}")
    assert reply.status_code == 200, reply.get_json()
    return [j["input_name"] for j in reply.get_json()["jobs"]]


def add(api: Identities, name: str, binary: str = "ffmpeg", who: Any = None) -> str:
    args = ["-i", f"$Media/{name}", "-f", "mp4", f"$Media/out/{name}.mp4"]
    if binary == "ffprobe":
        args = ["-show_streams", f"$Media/{name}"]
    reply = (who or api.client).post(
        "/api/v1/jobs", json_body={"binary": binary, "args": args, "wait_for_worker": True}
    )
    assert reply.status_code == 201, reply.get_json()
    job: dict[str, Any] = reply.get_json()["job"]
    return str(job["job_id"])


def take_all(api: Identities) -> list[str]:
    """Register w1 with room for everything pending, claim and accept it all."""
    body = {**WORKER, "slots": 8}
    assert api.worker.post("/api/v1/workers/register", json_body=body).status_code == 200
    claimed = api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"]
    for job in claimed:
        assert api.worker.post(f"/api/v1/jobs/{job['job_id']}/accept").status_code == 200
    return [j["job_id"] for j in claimed]


def finish(api: Identities, job_id: str, **body: Any) -> None:
    assert api.worker.post(f"/api/v1/jobs/{job_id}/finish", json_body=body).status_code == 200


def test_filters_negation_failed_and_search(api: Identities) -> None:
    ok, exit1, started_badly = (add(api, f"{n}.mkv") for n in ("ok", "exit1", "broken"))
    running = add(api, "Big Buck Bunny (2008).mkv")
    assert set(take_all(api)) == {ok, exit1, started_badly, running}
    finish(api, ok, exit_code=0)
    finish(api, exit1, exit_code=1)
    finish(api, started_badly, error="no such file")
    add(api, "waiting_100%.mkv")  # pending: w1 does not poll again
    add(api, "probe.mkv", binary="ffprobe", who=api.other_client)

    def names(*pairs: tuple[str, str]) -> set[str]:
        return {n.removeprefix("$Media/") for n in jobs(api, *pairs)}

    every = names()
    assert len(every) == 6
    assert names(("failed", "true")) == {"exit1.mkv", "broken.mkv"}
    assert names(("failed", "false")) == every - {"exit1.mkv", "broken.mkv"}
    assert names(("binary", "ffprobe")) == {"probe.mkv"}
    assert names(("not_binary", "ffprobe")) == every - {"probe.mkv"}
    assert names(("not_state", "completed,failed")) == {
        "Big Buck Bunny (2008).mkv",
        "waiting_100%.mkv",
        "probe.mkv",
    }
    # A job without a worker is "not on w1".
    assert names(("not_worker", "w1")) == {"waiting_100%.mkv", "probe.mkv"}
    assert names(("not_requester", "alice")) == {"probe.mkv"}
    # Search: case-insensitive, a phrase, on file names, requester, worker; LIKE's
    # wildcards are plain characters.
    assert names(("search", "big buck")) == {"Big Buck Bunny (2008).mkv"}
    assert names(("search", "BUNNY"), ("search", "2008")) == {"Big Buck Bunny (2008).mkv"}
    assert names(("search", "100%")) == {"waiting_100%.mkv"}
    assert names(("search", "_1")) == {"waiting_100%.mkv"}
    assert names(("search", "bob")) == {"probe.mkv"}
    # ffprobe's output name is NULL: negated searches must still find it.
    assert names(("not_search", "mkv.mp4")) == {"probe.mkv"}
    # A client sees only its own jobs, whatever it asks for.
    assert len(jobs(api, ("not_requester", "alice"), who=api.client)) == 5
    # Refused: unknown states, not a boolean, too many or too long words.
    for pairs in (
        [("not_state", "runing")],
        [("failed", "maybe")],
        [("search", "x" * 256)],
        [("search", str(n)) for n in range(17)],
    ):
        reply = api.admin.get(f"/api/v1/jobs?{urlencode(pairs)}")
        assert reply.status_code == 400, pairs


def test_file_names_from_the_arguments(api: Identities) -> None:
    cases = {
        ("ffmpeg", ("-y", "-i", "pipe:0", "-f", "null", "-")): ("pipe:0", "-"),
        ("ffmpeg", ("-i", "a.mkv", "-hls_segment_filename", "/c/s%d.ts", "/c/main.m3u8")): (
            "a.mkv",
            "/c/main.m3u8",
        ),
        ("ffprobe", ("-v", "quiet", "-print_format", "json", "-show_streams", "/m/x.mkv")): (
            "/m/x.mkv",
            None,
        ),
        ("ffmpeg", ("-version",)): (None, None),
    }
    for (binary, args), (source, target) in cases.items():
        reply = api.client.post(
            "/api/v1/jobs",
            json_body={"binary": binary, "args": list(args), "wait_for_worker": True},
        )
        job = reply.get_json()["job"]
        assert (job["input_name"], job["output_name"]) == (source, target), args
    long = "/m/" + "d" * 300 + "/film.mkv"
    reply = api.client.post(
        "/api/v1/jobs", json_body={"binary": "ffmpeg", "args": ["-i", long, "-f", "null", "-"]}
    )
    shown = reply.get_json()["job"]["input_name"]
    assert len(shown) == 255 and shown.endswith("/film.mkv") and shown.startswith("…")


def test_samples_each_minute_once_and_the_live_minute(app: Flask, api: Identities) -> None:
    done = add(api, "a.mkv")
    add(api, "b.mkv")
    run_on_worker(api)
    finish(api, done, exit_code=1)
    with app.app_context():
        now = now_utc()
        # The minute that just ended is written once, by whichever process gets there.
        assert samples.record(now + timedelta(minutes=1)) == samples.minute_of(now)
        assert samples.record(now + timedelta(minutes=1)) is None
        row = db.session.get(ClusterSample, samples.minute_of(now))
        assert row is not None and (row.finished, row.failed, row.running) == (1, 1, 1)
        db.session.commit()
        # A minute without a sample is a gap; the live minute is read at once.
        recent = samples.recent(now)
        assert recent["series"]["finished"][-1] == 1 and len(recent["series"]["finished"]) == 60
        assert recent["series"]["finished"][:-1] == [None] * 59
        later = samples.recent(now + timedelta(minutes=1))
        assert later["series"]["finished"][-2:] == [1, 0]
        assert later["last_day"] == {"finished": 1, "failed": 1, "sampled_minutes": 1}
        # Rows older than two days go when a new one is written.
        old = samples.minute_of(now) - timedelta(days=3)
        db.session.add(ClusterSample(minute=old, pending=0, running=0, finished=9, failed=9))
        db.session.commit()
        samples.record(now + timedelta(minutes=2))
        assert db.session.get(ClusterSample, old) is None
        db.session.commit()
    summary = api.admin.get("/api/v1/cluster").get_json()
    assert summary["last_day"]["failed"] >= 1 and len(summary["series"]["pending"]) == 60


def test_heartbeat_load_is_kept_clean(api: Identities) -> None:
    assert api.worker.post("/api/v1/workers/register", json_body=WORKER).status_code == 200
    load = {
        "cpu_percent": 37.5,
        "memory_percent": 61.2,
        "cpus": 8,
        "load_1m": "high",  # not a number: dropped
        "junk": "x" * 10_000,
        "gpus": [{"vendor": "nvidia", "name": "n" * 500, "encoder_sessions": 2}] * 20,
    }
    # NaN is no number a body may carry (coordinator/api/parse.py): refused whole.
    nan = api.worker.post("/api/v1/workers/heartbeat", json_body={"load": {"cpus": float("nan")}})
    assert nan.status_code == 400
    reply = api.worker.post("/api/v1/workers/heartbeat", json_body={"load": load})
    assert reply.status_code == 200
    shown = api.admin.get("/api/v1/workers").get_json()["workers"][0]["load"]
    assert shown["cpu_percent"] == 37.5 and shown["cpus"] == 8
    assert "load_1m" not in shown and "junk" not in shown
    assert len(shown["gpus"]) == 16 and len(shown["gpus"][0]["name"]) == 64
    assert shown["at"]
    # A heartbeat without a body still renews the lease and keeps the last load.
    assert api.worker.post("/api/v1/workers/heartbeat").status_code == 200
    assert api.admin.get("/api/v1/workers").get_json()["workers"][0]["load"]["cpus"] == 8


def test_slots_and_labels_changed_live_and_kept_across_restarts(api: Identities) -> None:
    assert api.worker.post("/api/v1/workers/register", json_body=WORKER).status_code == 200
    first, second, third = (add(api, f"{n}.mkv") for n in range(3))

    def change(body: dict[str, Any]) -> Any:
        return api.admin.open("PATCH", "/api/v1/workers/w1", json_body=body)

    reply = change({"slots": 3, "labels": ["gpu", "night"]})
    assert reply.status_code == 200, reply.get_json()
    worker = reply.get_json()["worker"]
    assert (worker["slots"], worker["labels"]) == (3, ["gpu", "night"])
    assert worker["overrides"] == {"slots": 3, "labels": ["gpu", "night"]}
    assert worker["configured"] == {"slots": 2, "labels": ["gpu"]}
    # The scheduler uses it at once: three jobs on a worker whose config says two.
    claimed = api.worker.get("/api/v1/workers/poll?wait=0").get_json()["jobs"]
    assert {j["job_id"] for j in claimed} == {first, second, third}
    # A restart (registration) keeps the admin's values ...
    api.worker.post("/api/v1/workers/register", json_body=WORKER)
    shown = api.admin.get("/api/v1/workers/w1").get_json()["worker"]
    assert (shown["slots"], shown["labels"]) == (3, ["gpu", "night"])
    # ... until cleared: back to the worker's own config.
    reply = change({"slots": None, "labels": None})
    assert (reply.get_json()["worker"]["slots"], reply.get_json()["worker"]["labels"]) == (
        2,
        ["gpu"],
    )
    for bad in ({"slots": 0}, {"slots": True}, {"labels": "gpu"}, {"labels": [""]}, {}, {"x": 1}):
        assert change(bad).status_code == 400, bad
    assert api.client.open("PATCH", "/api/v1/workers/w1", json_body={"slots": 9}).status_code == 403
    missing = api.admin.open("PATCH", "/api/v1/workers/nobody", json_body={"slots": 1})
    assert missing.status_code == 404


def test_worker_listing_is_small_and_details_have_the_checks(api: Identities) -> None:
    probes = {"-encoders": {"stdout": "A" * 200_000, "stderr": "", "exit_code": 0}}
    body = {
        **WORKER,
        "binaries": {
            "ffmpeg": {
                "path": "/usr/bin/ffmpeg",
                "version": "ffmpeg version 5.1.8",
                "probes": probes,
                "capabilities": {"encoders": ["libx264"], "hwaccels": []},
                "hardware": {"cuda": "no cuda device: Cannot load libcuda.so.1"},
            }
        },
        "mounts": {"Media": "/mnt/media", "Cache": {"path": "/cache", "writable": False}},
        "os": "Linux 6.1 x86_64",
        "hostname": "node1.lan",
    }
    assert api.worker.post("/api/v1/workers/register", json_body=body).status_code == 200
    listing = api.admin.get("/api/v1/workers")
    assert len(listing.data) < 4000  # the 200 KB probe text stays in the details
    worker = listing.get_json()["workers"][0]
    assert worker["binary_versions"] == {
        "ffmpeg": {"path": "/usr/bin/ffmpeg", "version": "ffmpeg version 5.1.8"}
    }
    assert worker["mounts"] == {"Media": "/mnt/media", "Cache": "/cache"}
    assert worker["hostname"] == "node1.lan" and worker["os"] == "Linux 6.1 x86_64"
    details = api.admin.get("/api/v1/workers/w1").get_json()["worker"]
    assert details["hardware"] == {"ffmpeg": {"cuda": "no cuda device: Cannot load libcuda.so.1"}}
    assert details["capabilities"]["ffmpeg"]["encoders"] == ["libx264"]


def test_names_filled_in_for_jobs_stored_before(app: Flask, api: Identities) -> None:
    """The migration's fill-in, run on rows whose names are missing."""
    job_id = add(api, "old.mkv")
    with app.app_context():
        db.session.execute(
            db.update(Job).values(input_name=None, output_name=None).where(Job.id == job_id)
        )
        db.session.commit()
        from importlib import import_module

        migration = import_module("coordinator.migrations.versions.0007_console_details")
        from alembic.migration import MigrationContext
        from alembic.operations import Operations

        with db.engine.begin() as conn:
            context = MigrationContext.configure(conn)
            with Operations.context(context):
                migration._fill_names()
        job = db.session.get(Job, job_id)
        assert job is not None and (job.input_name, job.output_name) == (
            "$Media/old.mkv",
            "$Media/out/old.mkv.mp4",
        )
        db.session.commit()
