"""Pilot tests of dffmpeg-console against a real coordinator process on 127.0.0.1.

The coordinator is seeded through its API: an admin, clients, a registered worker and
jobs. The console talks to it with a real signed ``Api``, exactly as in production.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, TabbedContent

from client.api import Api, AuthError
from console.app import ConsoleApp
from console.screens.dialogs import ConfirmScreen, KeyScreen
from console.screens.job_detail import JobDetailScreen
from console.widgets.banner import ConnectionBanner
from console.widgets.tables import KeyedTable
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, encode_frames
from tests.helpers import admin, free_port, health, process_env, running, wait_until, write_yaml

WORKER = {
    "slots": 3,
    "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg", "version": "ffmpeg version 5.1.8"}},
    "labels": ["gpu", "fast"],
    "path_variables": ["Media"],
    "version": "0.1.0",
    "sandboxed": True,
}


@dataclass
class Coordinator:
    url: str
    config: Path
    keys: dict[str, str]

    def api(self, client_id: str, key: str | None = None) -> Api:
        return Api(self.url, client_id, key or self.keys[client_id], timeout=10)

    def call(self, who: str, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        """One request as ``who`` on a connection that is closed right after."""
        api = self.api(who, key)
        try:
            return api.call(method, path, **kw)
        finally:
            api.close()


def start_coordinator(tmp: Path, config: Path, port: int) -> Any:
    return running(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        tmp / f"coordinator-{port}.log",
        env=process_env(),
    )


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    tmp = tmp_path_factory.mktemp("console")
    port = free_port()
    config = write_yaml(
        tmp / "coordinator.yaml",
        {
            "host": "127.0.0.1",
            "port": port,
            "database_url": f"sqlite:///{tmp / 'coordinator.db'}",
            # Long leases: the seeded worker never heartbeats but must stay online.
            "worker_lease_seconds": 600,
        },
    )
    keys = {}
    for client_id, role in (("ops", "admin"), ("carol", "client"), ("dave", "client")):
        keys[client_id] = admin(config, "user", "add", client_id, "--role", role)["hmac_key"]
    for n in range(3):
        keys[f"wk{n}"] = admin(config, "user", "add", f"wk{n}", "--role", "worker")["hmac_key"]
    url = f"http://127.0.0.1:{port}"
    with start_coordinator(tmp, config, port):
        wait_until(lambda: health(url) == 200, timeout=20)
        coord = Coordinator(url, config, keys)
        for n in range(3):
            coord.call(f"wk{n}", "POST", "/workers/register", json_body=WORKER)
        yield coord


def submit(coord: Coordinator, who: str, *args: str) -> str:
    body = {"binary": "ffmpeg", "args": list(args) or ["-version"], "mode": "background"}
    job_id: str = coord.call(who, "POST", "/jobs", json_body=body)["job"]["job_id"]
    return job_id


def drive(
    coord: Coordinator | None,
    scenario: Callable[[ConsoleApp, Pilot[None]], Coroutine[Any, Any, None]],
    api: Api | None = None,
    size: tuple[int, int] = (140, 40),
    timeout: float = 10.0,
    page_size: int = 200,
) -> None:
    assert api is not None or coord is not None
    app = ConsoleApp(
        api or coord.api("ops"),  # type: ignore[union-attr]
        refresh_seconds=0.3,
        timeout=timeout,
        page_size=page_size,
    )

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(app, pilot)

    asyncio.run(run())


async def until(pilot: Pilot[None], condition: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.05)


def table(app: ConsoleApp, name: str) -> KeyedTable:
    return app.main.query_one(f"#{name}-table", KeyedTable)


def keys_of(app: ConsoleApp, name: str) -> list[str]:
    return [str(row.value) for row in table(app, name).rows]


async def select(pilot: Pilot[None], app: ConsoleApp, name: str, key: str) -> None:
    """Move the cursor to ``key`` with the arrow keys, as an operator would."""
    await until(pilot, lambda: key in keys_of(app, name))
    grid = table(app, name)
    grid.focus()
    while grid.selected_key != key:
        before = grid.cursor_row
        await pilot.press("down")
        if grid.cursor_row == before:
            grid.move_cursor(row=0)
    await pilot.pause()


def status(app: ConsoleApp) -> str:
    return str(app.screen.query_one("#status").render())


def test_navigates_tabs_and_shows_the_cluster(coordinator: Coordinator) -> None:
    job_id = submit(coordinator, "carol", "-i", "/media/a.mkv", "out.mp4")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: job_id in keys_of(app, "jobs"))
        row = table(app, "jobs").get_row(job_id)
        assert [str(c) for c in row[1:4]] == ["pending", "ffmpeg", "carol"]
        await pilot.press("2")
        assert app.main.query_one(TabbedContent).active == "workers"
        assert table(app, "workers").has_focus
        await until(pilot, lambda: "wk0" in keys_of(app, "workers"))
        worker = [str(c) for c in table(app, "workers").get_row("wk0")]
        assert worker[1:7] == ["online", "0/3", "gpu,fast", "0.1.0", "ffmpeg 5.1.8", "Media"]
        await pilot.press("3")
        assert app.main.query_one(TabbedContent).active == "users"
        assert {"ops", "carol", "dave"} <= set(keys_of(app, "users"))
        await pilot.press("question_mark")
        assert "HelpScreen" in type(app.screen).__name__
        await pilot.press("escape")
        await pilot.press("1")
        assert table(app, "jobs").has_focus

    drive(coordinator, scenario)


def test_refresh_keeps_the_cursor_on_its_row(coordinator: Coordinator) -> None:
    first = submit(coordinator, "dave")
    submit(coordinator, "dave")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await select(pilot, app, "jobs", first)
        submit(coordinator, "dave")  # a new row appears above the selected one
        count = len(keys_of(app, "jobs"))
        await until(pilot, lambda: len(keys_of(app, "jobs")) > count)
        assert table(app, "jobs").selected_key == first

    drive(coordinator, scenario)


def test_filters_jobs_on_the_server_and_rows_by_text(coordinator: Coordinator) -> None:
    carol = submit(coordinator, "carol")
    dave = submit(coordinator, "dave")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: {carol, dave} <= set(keys_of(app, "jobs")))
        await pilot.press("slash")
        assert app.main.query_one("#filter", Input).has_focus
        await pilot.press(*"user:dave")
        await until(pilot, lambda: carol not in keys_of(app, "jobs"))
        assert dave in keys_of(app, "jobs")
        jobs = table(app, "jobs")
        assert {str(jobs.get_row(k)[3]) for k in keys_of(app, "jobs")} == {"dave"}
        await pilot.press("escape")
        await until(pilot, lambda: carol in keys_of(app, "jobs"))
        await pilot.press("2", "slash", *"wk1")
        await until(pilot, lambda: keys_of(app, "workers") == ["wk1"])

    drive(coordinator, scenario)


def test_pages_through_jobs(coordinator: Coordinator) -> None:
    # Submitted by the admin (which may submit too), the only jobs of that requester.
    jobs = [submit(coordinator, "ops") for _ in range(5)][::-1]  # newest first

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        summary = lambda: str(app.main.query_one("#summary").render())  # noqa: E731
        await pilot.press("slash", *"user:ops", "enter")
        await until(pilot, lambda: keys_of(app, "jobs") == jobs[:2])
        assert summary().endswith("listed 1-2 of 5")
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: keys_of(app, "jobs") == jobs[2:4])
        assert summary().endswith("listed 3-4 of 5")
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: keys_of(app, "jobs") == jobs[4:])
        await pilot.press("right_square_bracket")  # nothing older: stays
        await pilot.press("left_square_bracket", "left_square_bracket")
        await until(pilot, lambda: keys_of(app, "jobs") == jobs[:2])

    drive(coordinator, scenario, page_size=2)


def test_add_user_shows_the_key_once_and_it_works(coordinator: Coordinator) -> None:
    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await pilot.press("a")
        await pilot.press(*"emby", "enter")
        await until(pilot, lambda: isinstance(app.screen, KeyScreen))
        key = str(app.screen.query_one("#key").render())
        assert coordinator.call("emby", "GET", "/jobs", key=key)["total"] == 0
        await pilot.press("c")  # copies; nothing typed can alter the key shown
        assert app.clipboard == key
        assert str(app.screen.query_one("#key").render()) == key
        await pilot.press("escape")
        await until(pilot, lambda: "emby" in keys_of(app, "users"))
        assert status(app) == "user emby added"

    drive(coordinator, scenario)


def test_add_user_error_is_shown_in_plain_words(coordinator: Coordinator) -> None:
    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("3", "a", *"carol", "enter")
        await until(pilot, lambda: status(app).startswith("Refused"))
        assert status(app) == "Refused: user carol already exists"

    drive(coordinator, scenario)


def test_rotate_key_after_confirmation(coordinator: Coordinator) -> None:
    old = coordinator.call(
        "ops", "POST", "/users", json_body={"client_id": "sonarr", "role": "client"}
    )
    old_key = old["user"]["hmac_key"]

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await select(pilot, app, "users", "sonarr")
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, KeyScreen))
        new_key = str(app.screen.query_one("#key").render())
        assert new_key != old_key
        with pytest.raises(AuthError):
            coordinator.call("sonarr", "GET", "/jobs", key=old_key)
        assert "jobs" in coordinator.call("sonarr", "GET", "/jobs", key=new_key)

    drive(coordinator, scenario)


def test_set_allowed_networks(coordinator: Coordinator) -> None:
    coordinator.call("ops", "POST", "/users", json_body={"client_id": "radarr", "role": "client"})

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await select(pilot, app, "users", "radarr")
        await pilot.press("n", *"10.0.0.0/8, 127.0.0.1", "enter")
        await until(pilot, lambda: "may connect from" in status(app))
        await until(pilot, lambda: str(table(app, "users").get_row("radarr")[2]) != "any")
        user = coordinator.call("ops", "GET", "/users/radarr")["user"]
        assert user["allowed_networks"] == ["10.0.0.0/8", "127.0.0.1/32"]
        await pilot.press("n", *" bogus", "enter")
        await until(pilot, lambda: status(app).startswith("Refused"))
        assert "is not an IP network" in status(app)

    drive(coordinator, scenario)


def test_delete_user_only_after_confirmation(coordinator: Coordinator) -> None:
    coordinator.call("ops", "POST", "/users", json_body={"client_id": "lidarr", "role": "client"})

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await select(pilot, app, "users", "lidarr")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.5)
        assert coordinator.call("ops", "GET", "/users/lidarr")["user"]["role"] == "client"
        await pilot.press("x", "y")
        await until(pilot, lambda: "lidarr" not in keys_of(app, "users"))
        assert status(app) == "user lidarr deleted"

    drive(coordinator, scenario)


def test_drain_and_resume_a_worker(coordinator: Coordinator) -> None:
    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("2")
        await select(pilot, app, "workers", "wk2")
        await pilot.press("d")
        await until(
            pilot, lambda: str(table(app, "workers").get_row("wk2")[1]) == "online, drained"
        )
        assert "drained" in status(app)
        assert coordinator.call("ops", "GET", "/workers/wk2")["worker"]["drained"] is True
        await pilot.press("u")
        await until(pilot, lambda: str(table(app, "workers").get_row("wk2")[1]) == "online")

    drive(coordinator, scenario)


def test_cancel_a_job_from_the_table_and_from_its_details(coordinator: Coordinator) -> None:
    first = submit(coordinator, "carol", "-i", "in.mkv", "-c:v", "libx264", "out.mkv")
    second = submit(coordinator, "carol")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await select(pilot, app, "jobs", first)
        await pilot.press("c", "y")
        await until(pilot, lambda: str(table(app, "jobs").get_row(first)[1]) == "canceled")
        assert status(app) == f"job {first[:12]} is canceled"
        await select(pilot, app, "jobs", second)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen))
        detail = app.screen
        await until(pilot, lambda: "pending" in str(detail.query_one("#job-head").render()))
        assert "submitted by carol" in str(detail.query_one("#events").get_row_at(0)[3])  # type: ignore[attr-defined]
        await pilot.press("c", "y")
        await until(pilot, lambda: "canceled" in str(detail.query_one("#job-head").render()))
        await pilot.press("escape")
        assert app.screen is app.main
        state = coordinator.call("ops", "GET", f"/jobs/{second}")["job"]["state"]
        assert state == "canceled"
        # Canceling again is answered like the first (a cancel is idempotent: sent
        # again because its answer was lost, it must not fail).
        await select(pilot, app, "jobs", first)
        await pilot.press("c", "y")
        await until(pilot, lambda: status(app) == f"job {first[:12]} is canceled")

    drive(coordinator, scenario)


def test_banner_when_credentials_are_refused(coordinator: Coordinator) -> None:
    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        banner = app.main.query_one(ConnectionBanner)
        await until(pilot, lambda: banner.has_problem)
        assert "Credentials refused" in str(banner.render())
        assert "Retrying" in str(banner.render())

    drive(None, scenario, api=Api(coordinator.url, "ops", "not-the-key"))


def test_banner_when_the_identity_is_not_an_admin(coordinator: Coordinator) -> None:
    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        banner = app.main.query_one(ConnectionBanner)
        await until(pilot, lambda: banner.has_problem)
        assert "not allowed: this action needs the role admin" in str(banner.render())

    drive(None, scenario, api=coordinator.api("carol"))


def test_keys_work_while_the_coordinator_hangs() -> None:
    """A coordinator that accepts connections and never answers: the refresh thread
    waits, the keyboard does not; when the connection breaks, the banner says so."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    api = Api(f"http://127.0.0.1:{port}", "ops", "k" * 43)

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        banner = app.main.query_one(ConnectionBanner)
        await until(pilot, lambda: app._refreshing.locked())
        for tab, key in (("users", "3"), ("workers", "2"), ("jobs", "1")):
            await pilot.press(key)
            assert app.main.query_one(TabbedContent).active == tab
        # All of that happened while the first refresh was still waiting for an answer.
        assert app._refreshing.locked()
        assert not banner.has_problem
        conn, _ = listener.accept()  # the refresh's connection, waiting in the backlog
        conn.close()  # ... now ends without an answer
        await until(pilot, lambda: banner.has_problem, timeout=20)
        assert "Coordinator unreachable" in str(banner.render())
        # The next refresh hangs again; quitting must not wait for it.
        await until(pilot, lambda: app._refreshing.locked())
        marks["quit"] = time.monotonic()
        await pilot.press("q")

    marks: dict[str, float] = {}
    try:
        drive(None, scenario, api=api, timeout=30)
        assert time.monotonic() - marks["quit"] < 5
    finally:
        listener.close()


def test_banner_when_unreachable_then_recovers(coordinator: Coordinator, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = coordinator.config.read_text().replace(coordinator.url.rsplit(":", 1)[1], str(port))
    second = write_yaml(tmp_path / "second.yaml", {})
    second.write_text(config)

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        banner = app.main.query_one(ConnectionBanner)
        await until(pilot, lambda: banner.has_problem)
        assert "Coordinator unreachable" in str(banner.render())
        await pilot.press("2")  # the keyboard still works while it retries
        assert app.main.query_one(TabbedContent).active == "workers"
        # A second coordinator on the same database comes up on that port.
        with start_coordinator(tmp_path, second, port):
            await until(pilot, lambda: not banner.has_problem, timeout=30)
            await until(pilot, lambda: "wk0" in keys_of(app, "workers"))

    drive(None, scenario, api=Api(url, "ops", coordinator.keys["ops"], timeout=5))


def client_cli(coord: Coordinator, tmp_path: Path, who: str, *args: str) -> str:
    config = write_yaml(
        tmp_path / f"{who}.yaml",
        {"client_id": who, "hmac_key": coord.keys[who], "coordinator_url": coord.url},
    )
    out = subprocess.run(
        [sys.executable, "-m", "client.cli", "--config", str(config), *args],
        capture_output=True,
        check=True,
        env=process_env(),
        timeout=30,
    )
    return out.stdout.decode()


def test_status_all_prints_the_cluster_as_text_and_json(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    job_id = submit(coordinator, "carol", "-i", "x.mkv", "y.mkv")
    text = client_cli(coordinator, tmp_path, "ops", "status", "--all")
    assert text.startswith("workers: online 3")
    assert "WORKERS\nWORKER  STATE" in text
    assert "wk0     online  0/3    gpu,fast  0.1.0    ffmpeg 5.1.8  Media  " in text
    assert job_id[:12] in text
    data = json.loads(client_cli(coordinator, tmp_path, "ops", "status", "--all", "--json"))
    assert {w["worker_id"] for w in data["workers"]} >= {"wk0", "wk1", "wk2"}
    assert data["jobs_total"] == sum(data["summary"]["jobs_by_state"].values())
    assert data["jobs"][0]["job_id"] == job_id
    # Without --all a client sees its own jobs only.
    submit(coordinator, "dave")
    mine = json.loads(client_cli(coordinator, tmp_path, "dave", "status", "--json"))
    assert {j["requester"] for j in mine["jobs"]} == {"dave"}


def test_progress_and_live_stderr_of_a_running_job(coordinator: Coordinator) -> None:
    """A worker (through the API) runs a job and streams ffmpeg-like stderr: the jobs
    table shows progress and speed, the detail screen follows the stderr tail."""
    body = {"binary": "ffmpeg", "args": ["-i", "x.mkv", "y.mp4"], "priority": 100}
    job_id = coordinator.call("carol", "POST", "/jobs", json_body=body)["job"]["job_id"]
    worker = coordinator.api("wk0")
    claimed = worker.call("GET", "/workers/poll", params={"wait": 0})["jobs"]
    assert job_id in [j["job_id"] for j in claimed]
    worker.call("POST", f"/jobs/{job_id}/accept")
    seq = 0

    def stderr(data: bytes) -> None:
        nonlocal seq
        seq += 1
        frames = encode_frames([Frame(FrameKind.STDERR, seq, data)])
        worker.request(
            "POST", f"/jobs/{job_id}/output", body=frames, content_type=CONTENT_TYPE_FRAMES
        )

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        stderr(b"Input #0, matroska\n  Duration: 00:00:20.00, start: 0.0\n")
        stderr(b"frame=  100 fps= 50 q=28.0 size=  10kB time=00:00:05.00 bitrate=1k speed=2x\r")
        await until(pilot, lambda: job_id in keys_of(app, "jobs"))
        await until(pilot, lambda: str(table(app, "jobs").get_row(job_id)[5]) == "25.0% 2x")
        await select(pilot, app, "jobs", job_id)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen))
        text = lambda: str(app.screen.query_one("#stderr").render())  # noqa: E731
        await until(pilot, lambda: "time=00:00:05.00" in text())
        stderr(b"frame=  300 fps= 50 q=28.0 size=  30kB time=00:00:15.00 bitrate=1k speed=2.5x\r")
        await until(pilot, lambda: "time=00:00:15.00" in text())
        # Of the rewritten progress line only the latest version is shown.
        assert "time=00:00:05.00" not in text()
        await until(pilot, lambda: "75.0% 2.5x" in str(app.screen.query_one("#job-head").render()))
        worker.call("POST", f"/jobs/{job_id}/finish", json_body={"exit_code": 0})
        await until(pilot, lambda: "completed" in str(app.screen.query_one("#job-head").render()))

    try:
        drive(coordinator, scenario)
    finally:
        worker.close()
