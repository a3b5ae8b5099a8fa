"""``GET /api/v1/probes/BINARY/OPTION``: the workers' captured probe output."""

from __future__ import annotations

import base64

from tests.conftest import Identities


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _register(api: Identities, version_out: bytes) -> None:
    probes = {"-version": {"stdout": _b64(version_out), "stderr": "", "exit_code": 0}}
    reply = api.worker.post(
        "/api/v1/workers/register",
        json_body={
            "slots": 1,
            "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "version": "x", "probes": probes}},
        },
    )
    assert reply.status_code == 200, reply.json


def test_probe_is_served_from_an_online_worker(api: Identities) -> None:
    _register(api, b"ffmpeg version 9\n")
    reply = api.client.get("/api/v1/probes/ffmpeg/-version")
    assert reply.status_code == 200
    assert base64.b64decode(reply.json["stdout"]) == b"ffmpeg version 9\n"
    assert reply.json["exit_code"] == 0 and reply.json["worker_id"] == "w1"


def test_missing_probe_offline_worker_and_unknown_option_are_404(api: Identities) -> None:
    assert api.client.get("/api/v1/probes/ffmpeg/-version").status_code == 404  # no worker
    _register(api, b"v\n")
    assert api.client.get("/api/v1/probes/ffmpeg/-encoders").status_code == 404  # not captured
    assert api.client.get("/api/v1/probes/ffprobe/-version").status_code == 404
    assert api.client.get("/api/v1/probes/ffmpeg/-i").status_code == 404
    assert api.worker.post("/api/v1/workers/deregister").status_code == 200
    assert api.client.get("/api/v1/probes/ffmpeg/-version").status_code == 404  # offline


def test_probes_need_the_client_or_admin_role(api: Identities) -> None:
    _register(api, b"v\n")
    assert api.worker.get("/api/v1/probes/ffmpeg/-version").status_code == 403
    assert api.admin.get("/api/v1/probes/ffmpeg/-version").status_code == 200
