"""A proxy on the network path that rewrites or replays the coordinator's answers.

Real coordinator, worker and drop-in processes; the proxy is a small HTTP relay of the
test's own that passes requests through unchanged and tampers with chosen answers. A
worker never runs an assignment it cannot verify; a drop-in refuses changed output, a
changed exit code and an answer recorded earlier (exit 206, one ``dffmpeg:`` line).
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import process_env, write_yaml
from tests.lifecycle_cluster import Coordinator, coordinator

pytestmark = pytest.mark.timeout(180)

# (method, path, status, headers, body) -> (status, body), or None to pass it unchanged.
Tamper = Callable[[str, str, int, dict[str, str], bytes], tuple[int, bytes] | None]


class Relay(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, tamper: Tamper) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.tamper = tamper
        self.tampered = 0
        super().__init__(("127.0.0.1", 0), RelayHandler)


class RelayHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Relay

    def log_message(self, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
        conn.request(self.command, self.path, body=body, headers=headers)
        reply = conn.getresponse()
        data = reply.read()
        status = reply.status
        answer_headers = {k: v for k, v in reply.getheaders()}
        conn.close()
        changed = self.server.tamper(self.command, self.path, status, answer_headers, data)
        if changed is not None:
            self.server.tampered += 1
            status, data = changed
        self.send_response(status)
        for name, value in answer_headers.items():
            if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _relay


@contextmanager
def relay(upstream: str, tamper: Tamper) -> Iterator[Relay]:
    server = Relay(upstream, tamper)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url_of(server: Relay) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    root = tmp_path_factory.mktemp("tamper")
    media = root / "media"
    media.mkdir()
    with coordinator(root, assign_timeout_seconds=3) as c:
        yield c


def dropin_run(
    coord: Coordinator, name: str, url: str, *args: str
) -> subprocess.CompletedProcess[bytes]:
    key = coord.user(name, "client")
    config = write_yaml(
        coord.root / f"{name}.yaml",
        {
            "client_id": name,
            "hmac_key": key,
            "coordinator_url": url,
            "paths": {"Media": str(coord.root / "media")},
        },
    )
    bin_dir = coord.root / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "ffmpeg").symlink_to(Path(sys.executable).parent / "dffmpeg-proxy")
    return subprocess.run(
        [str(bin_dir / "ffmpeg"), *args],
        env=process_env(DFFMPEG_CLIENT_CONFIG=str(config)),
        capture_output=True,
        timeout=120,
    )


FRAMES = "application/x-dffmpeg-frames"


def submission_changed(
    method: str, path: str, body: bytes, change: Callable[[bytes], bytes | None]
) -> bytes | None:
    """A submission's answer with ``change`` applied to the frames of the output it
    carries (``wait_output``: a short job's output and end come with it); None when it
    is no submission or ``change`` changed nothing."""
    if method != "POST" or path.split("?", 1)[0] != "/api/v1/jobs":
        return None
    data = json.loads(body)
    changed = change(base64.b64decode(data.get("output") or ""))
    if changed is None:
        return None
    data["output"] = base64.b64encode(changed).decode()
    return json.dumps(data).encode()


# A job whose stdout is known: 4 frames of a 16x16 gray picture, raw.
RAW = ["-v", "error", "-f", "lavfi", "-i", "color=gray:s=16x16:d=0.16:r=25",
       "-f", "rawvideo", "-pix_fmt", "gray", "-"]  # fmt: skip


def test_a_worker_never_runs_an_assignment_it_cannot_verify(coord: Coordinator) -> None:
    injected = coord.root / "media" / "injected.txt"

    def rewrite(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
        if "/workers/poll" in path and b'"args"' in body:
            # Any job becomes one that writes a file of the attacker's choosing.
            return status, body.replace(
                b'"-version"',
                b'"-f", "lavfi", "-i", "nullsrc=d=0.1", "-f", "data", "-y", "$Media/injected.txt"',
            )
        return None

    media = {"Media": str(coord.root / "media")}
    with (
        relay(coord.url, rewrite) as proxy,
        coord.worker("proxied", ["tamper"], coordinator_url=url_of(proxy), paths=media),
    ):
        api, _ = coord.client("victim")
        job = api.call(
            "POST", "/jobs",
            json_body={"binary": "ffmpeg", "args": ["-version"],
                       "required_labels": ["tamper"], "mode": "background"},
        )["job"]  # fmt: skip
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and proxy.tampered < 2:
            time.sleep(0.1)
        time.sleep(1)
        assert proxy.tampered >= 1
        assert not injected.exists()
        assert coord.job(job["job_id"])["state"] in ("pending", "assigned")
    log = (coord.root / "proxied.log").read_text()
    assert "answer refused" in log


@pytest.fixture(scope="module")
def worker(coord: Coordinator) -> Iterator[None]:
    with coord.worker("honest", [], paths={"Media": str(coord.root / "media")}):
        yield


def test_the_drop_in_refuses_changed_output(coord: Coordinator, worker: None) -> None:
    local = subprocess.run([shutil.which("ffmpeg") or "ffmpeg", *RAW], capture_output=True)
    assert len(local.stdout) == 4 * 256

    def flipped(raw: bytes) -> bytes | None:
        return raw.replace(b"\x80", b"\x81", 1) if b"\x80" in raw else None

    def flip(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
        if "/output" in path and headers.get("Content-Type", "").startswith(FRAMES):
            changed = flipped(body)
        else:
            changed = submission_changed(method, path, body, flipped)
        return None if changed is None else (status, changed)

    with relay(coord.url, flip) as proxy:
        result = dropin_run(coord, "reader-1", url_of(proxy), *RAW)
    assert proxy.tampered >= 1
    assert result.returncode == 206, result.stderr
    line = result.stderr.decode().strip()
    assert line.startswith("dffmpeg: coordinator answer refused") and "\n" not in line
    assert b"\x81" not in result.stdout  # nothing of the changed answer reached stdout


def test_the_drop_in_refuses_a_changed_exit_code(coord: Coordinator, worker: None) -> None:
    def zeroed(raw: bytes) -> bytes | None:
        for needle in (b'"exit_code": 1', b'"exit_code":1'):
            if needle in raw:
                return raw.replace(needle, needle.replace(b"1", b"0"))
        return None

    def code(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
        changed = submission_changed(method, path, body, zeroed) or zeroed(body)
        return None if changed is None else (status, changed)

    missing = str(coord.root / "media" / "nonexistent.mkv")
    failing = ["-v", "error", "-i", missing, "-f", "null", "-"]
    with relay(coord.url, code) as proxy:
        result = dropin_run(coord, "reader-2", url_of(proxy), *failing)
    assert proxy.tampered >= 1
    assert result.returncode == 206, result.stderr
    assert b"answer refused" in result.stderr


def test_the_drop_in_refuses_an_answer_recorded_earlier(coord: Coordinator, worker: None) -> None:
    recorded: dict[str, tuple[int, bytes, dict[str, str]]] = {}

    def replay(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
        base = path.split("?", 1)[0]
        if "/output" not in base:
            return None
        if base not in recorded:
            recorded[base] = (status, body, headers)
            return None
        # Later reads get the first answer again, signature and all.
        old_status, old_body, old_headers = recorded[base]
        headers.clear()
        headers.update(old_headers)
        return old_status, old_body

    slow = ["-v", "error", "-re", "-f", "lavfi", "-i", "color=gray:s=16x16:d=1:r=25",
            "-f", "rawvideo", "-pix_fmt", "gray", "-"]  # fmt: skip
    with relay(coord.url, replay) as proxy:
        result = dropin_run(coord, "reader-3", url_of(proxy), *slow)
    assert proxy.tampered >= 1
    assert result.returncode == 206, result.stderr
    assert b"answer refused" in result.stderr
    assert len(result.stdout) < 25 * 256  # the replay never passed as more output
