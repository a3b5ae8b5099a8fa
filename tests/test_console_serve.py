"""``dffmpeg-console --serve`` in Debian's headless Chromium, driven by Playwright.

A real coordinator, a real worker running a real ffmpeg on a real file, and the console
served by textual-serve: the browser sees the running job's file name and progress and
drains the worker with the keyboard. Before that, the ways in that must stay shut: the
page without the secret, the websocket without the cookie or from another origin. The
browser may only talk to 127.0.0.1: any other request is blocked and fails the test.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console_cluster import Coordinator, console_coordinator, labelled, real_worker
from tests.helpers import free_port, process_env, require, running, wait_until, write_yaml

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>]")
FILM = "Big Buck Bunny.mkv"

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Coordinator, Path]]:
    root = tmp_path_factory.mktemp("serve")
    media = root / "media"
    media.mkdir()
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-f", "lavfi"),
            *("-i", "testsrc=duration=60:size=160x120:rate=25"),
            *("-c:v", "libx264", "-preset", "ultrafast", str(media / FILM)),
        ],
        check=True,
        timeout=120,
    )
    with console_coordinator(root, workers=0) as coord:
        yield coord, media


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in task.read_text().split()]
    return found


def handshake(port: int, origin: str, cookie: str | None) -> int:
    """A websocket upgrade request; the status it got."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Origin": origin,
    }
    if cookie:
        headers["Cookie"] = cookie
    try:
        conn.request("GET", "/ws?width=80&height=24", headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


def test_the_console_in_a_browser(cluster: tuple[Coordinator, Path], tmp_path: Path) -> None:
    require(shutil.which("chromium") is not None, "Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    coord, media = cluster
    config = write_yaml(
        tmp_path / "console.yaml",
        {"client_id": "ops", "hmac_key": coord.keys["ops"], "coordinator_url": coord.url},
    )
    port = free_port()
    log = tmp_path / "serve.log"
    with (
        real_worker(coord, "web-w", {"Media": str(media)}),
        running(
            [
                sys.executable,
                "-m",
                "console.cli",
                "--config",
                str(config),
                "--serve",
                "--port",
                str(port),
            ],
            log,
            env=process_env(),
        ) as server,
    ):
        job_id = labelled(coord, "carol", "web-w", "-re", "-i", f"$Media/{FILM}", "-f", "null", "-")
        wait_until(
            lambda: coord.call("ops", "GET", f"/jobs/{job_id}")["job"]["state"] == "running",
            timeout=30,
        )
        address = wait_until(
            lambda: re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", log.read_text()), timeout=30
        ).group(0)
        token = address.split("token=", 1)[1]
        shut_out(port, server.pid, token)
        seen, blocked = browse(sync_api, address, tmp_path)
        assert not blocked, f"the page asked for something outside 127.0.0.1: {blocked}"
        assert FILM in seen
        assert re.search(r"\d+\.\d%", seen), "no progress in what the browser received"
        worker = coord.call("ops", "GET", "/workers/web-w")["worker"]
        assert worker["drained"] is True  # the admin action, typed in the browser
        coord.call("ops", "POST", "/workers/web-w/resume")
        coord.call("ops", "POST", f"/jobs/{job_id}/cancel")
        leftover = children(server.pid)
    # The sessions ended with the server (no console process left behind).
    for pid in leftover:
        wait_until(lambda p=pid: not Path(f"/proc/{p}").exists(), timeout=15)


def shut_out(port: int, pid: int, token: str) -> None:
    """No secret, no entry: the page, the websocket, another origin."""
    before = children(pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/")
    reply = conn.getresponse()
    assert reply.status == 403 and token not in reply.read().decode()
    conn.close()
    origin = f"http://127.0.0.1:{port}"
    assert handshake(port, origin, None) == 403
    assert handshake(port, origin, "dffmpeg_console=wrong") == 403
    # With the cookie, but from a page on another site: refused too.
    assert handshake(port, "http://evil.example", f"dffmpeg_console={token}") == 403
    # None of them started a console session.
    time.sleep(0.5)
    assert children(pid) == before


def browse(sync_api: Any, address: str, tmp_path: Path) -> tuple[str, list[str]]:
    """Open the console, wait for the job's file name and progress, drain the worker.

    What the page received over its websocket is what its terminal draws; it is read
    from the frames (the terminal itself paints on a canvas).
    """
    frames: list[str] = []
    blocked: list[str] = []

    def on_websocket(ws: Any) -> None:
        def received(payload: Any) -> None:
            data = payload if isinstance(payload, bytes) else str(payload).encode()
            frames.append(data.decode("utf-8", errors="replace"))

        ws.on("framereceived", received)

    def route(request_route: Any) -> None:
        url = request_route.request.url
        if url.startswith(("http://127.0.0.1:", "ws://127.0.0.1:")):
            request_route.continue_()
        else:
            blocked.append(url)
            request_route.abort()

    def text() -> str:
        return ANSI.sub("", "".join(frames))

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            args=FLAGS,
            headless=True,
            viewport={"width": 1600, "height": 900},
        )
        try:
            page = context.new_page()
            page.route("**/*", route)
            page.on("websocket", on_websocket)
            page.goto(address)
            page.wait_for_selector("body.-first-byte", timeout=30_000)
            # The session's console is a new process (Textual's imports, the first
            # refresh): tens of seconds on a loaded 2-core machine.
            deadline = time.monotonic() + 90
            while not (FILM in text() and re.search(r"\d+\.\d%", text())):
                assert time.monotonic() < deadline, text()[-2000:]
                page.wait_for_timeout(200)
            page.screenshot(path=str(tmp_path / "jobs.png"))
            page.click("#terminal")
            page.keyboard.press("2")  # the workers tab; its only worker is selected
            deadline = time.monotonic() + 30
            while "drained" not in text():
                # Pressed again until it takes: on a busy machine the tab may not have
                # its focus yet when the key arrives (a drain of a drained worker is
                # a no-op).
                assert time.monotonic() < deadline, text()[-2000:]
                page.keyboard.press("d")  # drain
                for _ in range(15):
                    if "drained" in text():
                        break
                    page.wait_for_timeout(200)
            page.screenshot(path=str(tmp_path / "drained.png"))
        finally:
            context.close()
    return text(), blocked
