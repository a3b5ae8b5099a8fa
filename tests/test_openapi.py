"""The OpenAPI document against a live coordinator: schemathesis, signed requests.

For every operation of ``GET /api/v1/openapi.json`` schemathesis generates requests
(positive and negative data, a bounded number of examples each); a requests ``AuthBase``
signs each one as it is finally sent (method, path with query, body), as a worker for
the worker routes and as an admin for the others. Every answer must be no 5xx and must
conform to the document (status code, content type, headers, body schema).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings

from client.api import Api
from dffmpeg import signing
from tests.lifecycle_cluster import Coordinator, coordinator

pytestmark = pytest.mark.timeout(240)

EXAMPLES = 25  # per operation and mode: about 40 operations, well under two minutes
WORKER_ROUTES = ("/workers/register", "/workers/heartbeat", "/workers/paths", "/workers/poll")


def test_the_document_is_served_without_a_signature(
    live: tuple[Coordinator, dict[str, str]], tmp_path: Path
) -> None:
    coord, _ = live
    with urllib.request.urlopen(coord.url + "/api/v1/openapi.json", timeout=5) as reply:
        document = json.loads(reply.read())
    assert document["openapi"].startswith("3.1")
    served = {(path, method) for path, ops in document["paths"].items() for method in ops}
    # Every route of the app is described (and nothing that does not exist).
    from coordinator import create_app

    app = create_app(
        {"database_url": f"sqlite:///{tmp_path / 'routes.db'}"},
        start_janitor=False,
        start_transports=False,
    )
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = rule.rule.removeprefix("/api/v1").replace("<", "{").replace(">", "}")
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((path, method.lower()))
    documented = {(p, m) for p, m in served if m in ("get", "post", "put", "patch", "delete")}
    assert documented == routes


class Signer(requests.auth.AuthBase):
    """Signs the request exactly as it goes on the wire; long-poll waits kept short."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = keys

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        parts = urlsplit(str(request.url))
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(k == "wait" for k, _ in query):
            # A valid wait is held up to 30 s: keep the run short (the value's range and
            # type are still what the generator made, only large ones shrink).
            query = [(k, "0.1" if k == "wait" and _big(v) else v) for k, v in query]
            request.url = urlunsplit(parts._replace(query=urlencode(query)))
            parts = urlsplit(request.url)
        path = parts.path + ("?" + parts.query if parts.query else "")
        api_path = parts.path.removeprefix("/api/v1")
        who = "w" if _worker_route(api_path, str(request.method)) else "st-admin"
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        if b'"wait_output"' in body:
            body = _short_wait_output(body)
            request.body = body
            request.headers["Content-Length"] = str(len(body))
        request.headers.update(
            signing.sign_headers(who, self.keys[who], str(request.method), path, body)
        )
        return request


def _short_wait_output(body: bytes) -> bytes:
    """A submission's ``wait_output``, like a long-poll's wait, shrunk when large."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    wait = data.get("wait_output") if isinstance(data, dict) else None
    if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 0.2:
        data["wait_output"] = 0.1
        return json.dumps(data).encode()
    return body


def _big(value: str) -> bool:
    try:
        return float(value) > 0.2
    except ValueError:
        return False


def _worker_route(path: str, method: str) -> bool:
    if path in WORKER_ROUTES or path in ("/workers/drain", "/workers/deregister"):
        return True
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "jobs":
        action = parts[3]
        return (
            action in ("accept", "finish")
            or (action == "output" and method == "POST")
            or (action == "input" and method == "GET")
        )
    return False


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, dict[str, str]]]:
    root = tmp_path_factory.mktemp("openapi")
    with coordinator(root, transports=["http", "stream"], stream_max_seconds=1) as coord:
        keys = {"st-admin": coord.user("st-admin", "admin"), "w": coord.user("w", "worker")}
        # A registered worker, so that its routes answer more than 409.
        worker = Api(coord.url, "w", keys["w"])
        binaries = {"ffprobe": {"path": "/usr/bin/ffprobe"}}
        worker.call("POST", "/workers/register", json_body={"slots": 1, "binaries": binaries})
        worker.close()
        yield coord, keys


def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(
    live: tuple[Coordinator, dict[str, str]],
) -> None:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    @schemathesis.serializer("application/x-dffmpeg-frames")
    def frames(_ctx: Any, value: Any) -> bytes:
        # Generated binary strings, sent as they are: most are not valid frames (400).
        return value if isinstance(value, bytes) else str(value).encode()

    coord, keys = live
    schema = schemathesis.openapi.from_url(coord.url + "/api/v1/openapi.json")
    schema.config.base_url = coord.url + "/api/v1"
    session = requests.Session()
    session.auth = Signer(keys)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    failures: list[str] = []
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 35

    def runner(operation: Any) -> Any:
        strategy = operation.as_strategy() | operation.as_strategy(
            generation_mode=schemathesis.GenerationMode.NEGATIVE
        )

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def run(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(session=session, timeout=15)
            try:
                case.validate_response(response, checks=checks)
            except BaseException as exc:  # collected: one report for the whole run
                failures.append(f"{operation.label}: {exc}"[:2000])

        return run

    for operation in operations:
        runner(operation)()
    session.close()
    assert calls > len(operations) * 3
    assert not failures, "\n\n".join(failures[:10])
    log = (coord.root / "coordinator.log").read_text()
    assert "Traceback" not in log
