"""Building blocks for tests: free ports, real processes, signed test requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from dffmpeg import signing

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def require(condition: bool, what: str) -> None:
    """Skip when something the test needs is missing; fail instead when CI is set."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required when CI is set")
    pytest.skip(f"{what} is not available")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def process_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def write_yaml(path: Path, data: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(data)))
    return path


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@contextmanager
def running(cmd: list[str], log: Path, **kwargs: Any) -> Iterator[subprocess.Popen[bytes]]:
    """A background process that is stopped (SIGTERM, then SIGKILL) when the block ends."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    try:
        yield proc
    finally:
        stop(proc)


def children_of(pid: int) -> list[int]:
    """The process's children (from /proc; empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def admin(config: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "coordinator.admin_cli", "--config", str(config), *args, "--json"],
        check=True,
        capture_output=True,
        env=process_env(),
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


class SignedClient:
    """Flask's test client plus request signing, for API tests without a server."""

    def __init__(self, flask_client: Any, client_id: str, key: str) -> None:
        self.flask = flask_client
        self.client_id = client_id
        self.key = key

    def open(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        body = (
            data
            if data is not None
            else (json.dumps(json_body).encode() if json_body is not None else b"")
        )
        signed = signing.sign_headers(self.client_id, self.key, method, path, body)
        all_headers = {**signed, **(headers or {})}
        ctype = content_type or ("application/json" if json_body is not None else None)
        return self.flask.open(
            path, method=method, data=body, headers=all_headers, content_type=ctype
        )

    def get(self, path: str, **kw: Any) -> Any:
        return self.open("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.open("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.open("DELETE", path, **kw)


def waiter(notifier: Any, key: str, flag: threading.Event) -> tuple[threading.Thread, list[float]]:
    """A started thread waiting on ``key`` (its check passes once ``flag`` is set), and
    the list it appends its wake-up time to."""
    woke: list[float] = []

    def wait() -> None:
        if notifier.wait_for([key], lambda: True if flag.is_set() else None, timeout=20):
            woke.append(time.monotonic())

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, woke
