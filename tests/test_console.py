"""Pilot tests of dffmpeg-console against a real coordinator process on 127.0.0.1.

The coordinator is seeded through its API: an admin, clients, registered workers and
jobs. The console talks to it with a real signed ``Api``, exactly as in production
(tests/console_cluster.py).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, TabbedContent

from client.api import Api, AuthError
from console.app import ConsoleApp
from console.screens.dialogs import ConfirmScreen, KeyScreen
from console.screens.job_detail import JobDetailScreen
from console.widgets.banner import ConnectionBanner
from tests.console_cluster import (
    Coordinator,
    ScriptedWorker,
    cell,
    console_coordinator,
    drive,
    keys_of,
    select,
    start_coordinator,
    status,
    submit,
    table,
    until,
)
from tests.helpers import free_port, process_env, write_yaml


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with console_coordinator(tmp_path_factory.mktemp("console")) as coord:
        yield coord


def test_navigates_tabs_and_shows_the_cluster(coordinator: Coordinator) -> None:
    job_id = submit(coordinator, "carol", "-i", "/media/a.mkv", "out.mp4")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await until(pilot, lambda: job_id in keys_of(app, "jobs"))
        shown = [str(cell(app, "jobs", job_id, c)) for c in ("state", "bin", "input", "requester")]
        assert shown == ["pending", "ffmpeg", "a.mkv", "carol"]
        await pilot.press("2")
        assert app.main.query_one(TabbedContent).active == "workers"
        assert table(app, "workers").has_focus
        await until(pilot, lambda: "wk0" in keys_of(app, "workers"))
        shown = [
            str(cell(app, "workers", "wk0", c))
            for c in ("state", "slots", "labels", "version", "binaries", "paths")
        ]
        assert shown == ["online", "0/3", "gpu,fast", "0.1.0", "ffmpeg 5.1.8", "Media"]
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
        assert {str(cell(app, "jobs", k, "requester")) for k in keys_of(app, "jobs")} == {"dave"}
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
        await until(pilot, lambda: str(cell(app, "users", "radarr", "networks")) != "any")
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
        await until(pilot, lambda: str(cell(app, "workers", "wk2", "state")) == "online, drained")
        assert "drained" in status(app)
        assert coordinator.call("ops", "GET", "/workers/wk2")["worker"]["drained"] is True
        await pilot.press("u")
        await until(pilot, lambda: str(cell(app, "workers", "wk2", "state")) == "online")

    drive(coordinator, scenario)


def test_cancel_a_job_from_the_table_and_from_its_details(coordinator: Coordinator) -> None:
    first = submit(coordinator, "carol", "-i", "in.mkv", "-c:v", "libx264", "out.mkv")
    second = submit(coordinator, "carol")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await select(pilot, app, "jobs", first)
        await pilot.press("c", "y")
        await until(pilot, lambda: str(cell(app, "jobs", first, "state")) == "canceled")
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


def test_lost_contact_and_stale_data_are_marked_with_their_age(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    """The coordinator goes away after a refresh: the last data stays, the banner says
    how old it is and counts up, and the header marks it stale; contact again clears
    both."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = coordinator.config.read_text().replace(coordinator.url.rsplit(":", 1)[1], str(port))
    second = write_yaml(tmp_path / "second.yaml", {})
    second.write_text(config)
    marks: dict[str, int] = {}

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        banner = app.main.query_one(ConnectionBanner)
        freshness = app.main.query_one("#freshness")
        await pilot.press("2")
        with start_coordinator(tmp_path, second, port) as proc:
            await until(pilot, lambda: "wk0" in keys_of(app, "workers"), 30)
            assert not banner.has_problem
            proc.terminate()
            proc.wait(10)
        await until(pilot, lambda: banner.has_problem, timeout=15)
        assert "wk0" in keys_of(app, "workers")  # the last data stays on screen
        age = re.compile(r"Data shown is (\d+)s old")
        await until(pilot, lambda: age.search(str(banner.render())))
        marks["first"] = int(age.search(str(banner.render())).group(1))  # type: ignore[union-attr]
        await until(pilot, lambda: "stale: data" in str(freshness.render()), timeout=15)
        later = age.search(str(banner.render()))
        assert later is not None and int(later.group(1)) > marks["first"]
        with start_coordinator(tmp_path, second, port):
            await until(pilot, lambda: not banner.has_problem, timeout=30)
            await until(pilot, lambda: "stale" not in str(freshness.render()))

    drive(
        None, scenario, api=Api(url, "ops", coordinator.keys["ops"], timeout=5), refresh_seconds=1
    )


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


def status_line(frame: int, fps: float, time_at: str, speed: str) -> bytes:
    """One of ffmpeg's \\r-terminated progress lines."""
    line = (
        f"frame={frame:5d} fps={fps:3g} q=28.0 size=  10kB time={time_at} bitrate=1k speed={speed}x"
    )
    return line.encode() + b"\r"


def test_progress_and_live_stderr_of_a_running_job(coordinator: Coordinator) -> None:
    """A worker (through the API) runs a job and streams ffmpeg-like stderr: the jobs
    table shows progress and speed, the detail screen follows the stderr tail."""
    body = {"binary": "ffmpeg", "args": ["-i", "x.mkv", "y.mp4"], "priority": 100}
    job_id = coordinator.call("carol", "POST", "/jobs", json_body=body)["job"]["job_id"]
    worker = ScriptedWorker(coordinator, "wk0")
    worker.take(job_id)

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        worker.stderr(job_id, b"Input #0, matroska\n  Duration: 00:00:20.00, start: 0.0\n")
        worker.stderr(job_id, status_line(100, 50, "00:00:05.00", "2"))
        await until(pilot, lambda: job_id in keys_of(app, "jobs"))
        await until(pilot, lambda: str(cell(app, "jobs", job_id, "progress")) == "25.0%")
        assert str(cell(app, "jobs", job_id, "speed")) == "2x"
        assert str(cell(app, "jobs", job_id, "fps")) == "50"
        await select(pilot, app, "jobs", job_id)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobDetailScreen))
        text = lambda: str(app.screen.query_one("#stderr").render())  # noqa: E731
        await until(pilot, lambda: "time=00:00:05.00" in text())
        worker.stderr(
            job_id,
            b"frame=  300 fps= 50 q=28.0 size=  30kB time=00:00:15.00 bitrate=1k speed=2.5x\r",
        )
        await until(pilot, lambda: "time=00:00:15.00" in text())
        # Of the rewritten progress line only the latest version is shown.
        assert "time=00:00:05.00" not in text()
        head = lambda: str(app.screen.query_one("#job-head").render())  # noqa: E731
        await until(pilot, lambda: "progress 75.0%" in head() and "speed 2.5x" in head())
        worker.finish(job_id, 0)
        await until(pilot, lambda: "completed" in head())

    try:
        drive(coordinator, scenario)
    finally:
        worker.close()
