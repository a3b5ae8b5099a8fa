"""Worker identities believed only as far as granted; identities that end for good.

Through the API on every database: a rogue worker within its grant gets only the jobs
its grant allows and cannot change the probe answers other workers give their clients;
a deleted identity's jobs are never a new identity's of the same name.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Flask

from tests.conftest import Identities
from tests.helpers import SignedClient


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def registration(slots: int, labels: list[str], version_out: bytes) -> dict[str, Any]:
    probes = {"-version": {"stdout": _b64(version_out), "stderr": "", "exit_code": 0}}
    return {
        "slots": slots,
        "labels": labels,
        "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "version": "x", "probes": probes}},
        "path_variables": [],
    }


def new_identity(app: Flask, api: Identities, client_id: str, role: str) -> SignedClient:
    from coordinator import users

    with app.app_context():
        key = users.add_user(client_id, role)["hmac_key"]
    return SignedClient(api.admin.flask, client_id, key)


def submit(client: SignedClient, **extra: Any) -> str:
    reply = client.post(
        "/api/v1/jobs", json_body={"binary": "ffmpeg", "args": ["-version"], **extra}
    )
    assert reply.status_code == 201, reply.json
    job_id: str = reply.json["job"]["job_id"]
    return job_id


def poll(worker: SignedClient) -> list[str]:
    reply = worker.get("/api/v1/workers/poll?wait=0")
    assert reply.status_code == 200, reply.json
    return [job["job_id"] for job in reply.json["jobs"]]


def test_a_registration_is_cut_to_its_grant(app: Flask, api: Identities) -> None:
    grant = {"labels": ["gpu"], "max_slots": 2, "clients": ["alice"]}
    put = api.admin.open("PUT", "/api/v1/users/w1/grant", json_body=grant)
    assert put.status_code == 200, put.json
    reply = api.worker.post(
        "/api/v1/workers/register", json_body=registration(1000, ["gpu", "fast", "evil"], b"v\n")
    )
    assert reply.status_code == 200
    worker = reply.json["worker"]
    assert (worker["slots"], worker["labels"]) == (2, ["gpu"])
    assert worker["allowed_clients"] == ["alice"]
    # bob's job is never given to it; alice's is.
    bobs = submit(api.other_client, wait_for_worker=True)
    alices = submit(api.client)
    assert poll(api.worker) == [alices]
    assert poll(api.worker) == [alices]  # held until accepted; bob's never comes
    state = api.admin.get(f"/api/v1/jobs/{bobs}").json["job"]["state"]
    assert state == "pending"
    # A job only a worker outside the grant could run fails fast as having no worker.
    refused = api.other_client.post(
        "/api/v1/jobs", json_body={"binary": "ffmpeg", "args": ["-version"]}
    )
    assert refused.json["job"]["state"] == "failed", refused.json
    assert refused.json["job"]["failure"] == "no_capable_worker"
    assert "grant" in refused.json["job"]["reason"]


def test_a_rogue_worker_cannot_change_other_clients_probe_answers(
    app: Flask, api: Identities
) -> None:
    # "a-rogue" sorts before w1: without grants it would answer everybody's probes.
    rogue = new_identity(app, api, "a-rogue", "worker")
    for worker, clients in ((api.worker, ["alice"]), (rogue, ["bob"])):
        grant = {"clients": clients}
        put = api.admin.open("PUT", f"/api/v1/users/{worker.client_id}/grant", json_body=grant)
        assert put.status_code == 200, put.json
    assert (
        api.worker.post(
            "/api/v1/workers/register", json_body=registration(1, [], b"ffmpeg version 5.1\n")
        ).status_code
        == 200
    )
    assert (
        rogue.post(
            "/api/v1/workers/register", json_body=registration(1, [], b"ffmpeg version EVIL\n")
        ).status_code
        == 200
    )

    def version_for(client: SignedClient) -> bytes:
        reply = client.get("/api/v1/probes/ffmpeg/-version")
        assert reply.status_code == 200, reply.json
        return base64.b64decode(reply.json["stdout"])

    assert version_for(api.client) == b"ffmpeg version 5.1\n"  # alice: w1 only
    assert version_for(api.other_client) == b"ffmpeg version EVIL\n"  # bob: its own worker
    # An admin withdraws a worker's probe trust: it is never asked again.
    put = api.admin.open(
        "PUT", "/api/v1/users/a-rogue/grant", json_body={"clients": ["bob"], "trust_probes": False}
    )
    assert put.status_code == 200
    assert api.other_client.get("/api/v1/probes/ffmpeg/-version").status_code == 404


def test_grants_are_for_worker_identities_and_checked(api: Identities) -> None:
    assert api.admin.open("PUT", "/api/v1/users/alice/grant", json_body={}).status_code == 400
    for bad in ({"max_slots": 0}, {"labels": "gpu"}, {"clients": [""]}, {"evil": 1}):
        reply = api.admin.open("PUT", "/api/v1/users/w1/grant", json_body=bad)
        assert reply.status_code == 400, bad
    assert api.client.open("PUT", "/api/v1/users/w1/grant", json_body={}).status_code == 403
    shown = api.admin.get("/api/v1/users/w1/grant").json
    assert shown["grant"] == {
        "labels": None,
        "max_slots": None,
        "clients": None,
        "trust_probes": True,
    }


def test_a_deleted_identitys_jobs_never_reach_a_new_one_of_that_name(
    app: Flask, api: Identities
) -> None:
    carol = new_identity(app, api, "carol", "client")
    job_id = submit(carol)
    assert api.admin.delete("/api/v1/users/carol").status_code == 200
    again = new_identity(app, api, "carol", "client")
    assert again.get("/api/v1/jobs").json["jobs"] == []
    for path in (f"/api/v1/jobs/{job_id}", f"/api/v1/jobs/{job_id}/output?after=0&wait=0"):
        assert again.get(path).status_code == 404, path
    assert again.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
    # Admins still see it, under a name no identity can have.
    kept = api.admin.get(f"/api/v1/jobs/{job_id}").json["job"]
    assert kept["requester"].startswith("#") and kept["requester"].endswith(":carol")


def test_a_deleted_worker_identitys_jobs_are_lost_not_stuck(app: Flask, api: Identities) -> None:
    worker = new_identity(app, api, "w9", "worker")
    assert (
        worker.post("/api/v1/workers/register", json_body=registration(1, [], b"v\n")).status_code
        == 200
    )
    job_id = submit(api.client)
    assert poll(worker) == [job_id]
    assert worker.post(f"/api/v1/jobs/{job_id}/accept").status_code == 200
    assert api.admin.delete("/api/v1/users/w9").status_code == 200
    job = api.admin.get(f"/api/v1/jobs/{job_id}").json["job"]
    assert (job["state"], job["failure"]) == ("failed", "worker_lost")
    assert api.admin.get("/api/v1/workers/w9").status_code == 404
