"""The jobs screen against a real coordinator: file names and search, quick views and
negated filters, sorting, colours by state and exit code, fps/speed/elapsed/ETA with
behind-real-time highlighted, the log view and its search, and a filter being typed
never passing for an outage.

Every job here requires a label (the scripted worker's own, or one nobody has), so the
scripted workers of one test never claim the jobs of another.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from console.app import ConsoleApp
from console.screens.log import LogScreen
from console.widgets.banner import ConnectionBanner
from tests.console_cluster import (
    Coordinator,
    ScriptedWorker,
    cell,
    column,
    console_coordinator,
    drive,
    keys_of,
    labelled,
    select,
    status,
    table,
    until,
)

NOBODY = "nobody-has-this"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with console_coordinator(tmp_path_factory.mktemp("console-jobs"), workers=0) as coord:
        yield coord


def film(name: str) -> list[str]:
    return ["-i", f"$Media/films/{name}", "-c:v", "libx264", "-f", "mp4", f"$Media/out/{name}.mp4"]


def filter_text(app: ConsoleApp) -> str:
    return app.main.query_one("#filter", Input).value


def test_file_names_are_columns_and_searched_across_the_whole_history(
    coordinator: Coordinator,
) -> None:
    coordinator.user("ann", "client")
    bunny = labelled(coordinator, "ann", NOBODY, *film("Big Buck Bunny.mkv"))
    others = [labelled(coordinator, "ann", NOBODY, *film(f"Other {n}.mkv")) for n in range(4)]

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"user:ann", "enter")
        # A page of 2: the bunny job, the oldest, is not on the first page.
        await until(pilot, lambda: keys_of(app, "jobs") == others[::-1][:2])
        assert str(cell(app, "jobs", others[-1], "input")) == "Other 3.mkv"
        assert str(cell(app, "jobs", others[-1], "output")) == "Other 3.mkv.mp4"
        # The search goes to the coordinator: it finds the job on another page.
        await pilot.press("slash", "space", *"bunny", "enter")
        await until(pilot, lambda: keys_of(app, "jobs") == [bunny])
        assert str(cell(app, "jobs", bunny, "input")) == "Big Buck Bunny.mkv"
        # A phrase with its space, quoted; and a negated word.
        app.main.set_filter('user:ann "buck bunny"')
        await until(pilot, lambda: keys_of(app, "jobs") == [bunny])
        app.main.set_filter("user:ann -bunny")
        await until(pilot, lambda: set(keys_of(app, "jobs")) == set(others[::-1][:2]))
        assert app.main.snapshot is not None and app.main.snapshot.jobs_total == 4

    drive(coordinator, scenario, page_size=2)


def test_quick_views_and_negated_filters(coordinator: Coordinator) -> None:
    """Active, failed (a non-zero exit included), hide ffprobe, same worker, same
    requester, mine, and negated key words."""
    coordinator.user("bob", "client")
    worker = ScriptedWorker(coordinator, "views-w", register=True)
    running = labelled(coordinator, "bob", "views-w", *film("running.mkv"))
    worker.take(running)
    exited = labelled(coordinator, "bob", "views-w", *film("exit1.mkv"))
    worker.take(exited)
    worker.finish(exited, 1)
    good = labelled(coordinator, "bob", "views-w", *film("good.mkv"))
    worker.take(good)
    worker.finish(good, 0)
    pending = labelled(coordinator, "bob", NOBODY, *film("waiting.mkv"))
    probe = labelled(
        coordinator, "bob", NOBODY, "-show_streams", "$Media/films/probe.mkv", binary="ffprobe"
    )
    mine = labelled(coordinator, "ops", NOBODY, *film("ops-own.mkv"))
    everything = {running, exited, good, pending, probe}

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"user:bob", "enter")
        await until(pilot, lambda: set(keys_of(app, "jobs")) == everything)
        # The exit code shows in the state, in red: not a plain "completed".
        state = cell(app, "jobs", exited, "state")
        assert str(state) == "exit 1" and "red" in str(state.style)
        assert "red" in str(cell(app, "jobs", exited, "exit").style)
        assert str(cell(app, "jobs", good, "state")) == "completed"
        assert "green" in str(cell(app, "jobs", good, "state").style)
        assert "cyan" in str(cell(app, "jobs", running, "state").style)
        await pilot.press("a")  # active: pending, assigned, running, canceling
        assert filter_text(app) == "user:bob is:active"
        await until(pilot, lambda: set(keys_of(app, "jobs")) == {running, pending, probe})
        await pilot.press("b")  # and no ffprobe
        assert filter_text(app) == "user:bob is:active -bin:ffprobe"
        await until(pilot, lambda: set(keys_of(app, "jobs")) == {running, pending})
        await pilot.press("a", "b", "f")  # both off; failed: exit 1 counts as failed
        assert filter_text(app) == "user:bob is:failed"
        await until(pilot, lambda: keys_of(app, "jobs") == [exited])
        await pilot.press("f")
        await until(pilot, lambda: set(keys_of(app, "jobs")) == everything)
        await select(pilot, app, "jobs", good)
        await pilot.press("w")  # the jobs of the selected job's worker
        assert filter_text(app) == "user:bob worker:views-w"
        await until(pilot, lambda: set(keys_of(app, "jobs")) == {running, exited, good})
        app.main.set_filter("user:bob !state:completed,pend")  # a beginning is enough
        await until(pilot, lambda: set(keys_of(app, "jobs")) == {running})
        app.main.set_filter("")
        await select(pilot, app, "jobs", mine)
        await pilot.press("m")  # mine: submitted by the console's own identity
        await until(pilot, lambda: keys_of(app, "jobs") == [mine])
        await pilot.press("m")
        await select(pilot, app, "jobs", probe)
        await pilot.press("u")  # the selected job's requester
        assert filter_text(app) == "user:bob"
        await until(pilot, lambda: set(keys_of(app, "jobs")) == everything)

    try:
        drive(coordinator, scenario)
    finally:
        worker.finish(running, 0)
        worker.close()


def test_sort_by_any_column(coordinator: Coordinator) -> None:
    coordinator.user("cid", "client")
    names = ["b.mkv", "c.mkv", "a.mkv"]
    jobs = {name: labelled(coordinator, "cid", NOBODY, *film(name)) for name in names}

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"user:cid", "enter")
        await until(pilot, lambda: len(keys_of(app, "jobs")) == 3)
        assert column(app, "jobs", "input") == ["a.mkv", "c.mkv", "b.mkv"]  # newest first
        grid = table(app, "jobs")
        while grid.sort_column != grid.COLUMNS.index("input"):
            await pilot.press("s")
        assert column(app, "jobs", "input") == ["a.mkv", "b.mkv", "c.mkv"]
        assert str(grid.columns["input"].label) == "input ▲"  # type: ignore[index]
        await pilot.press("S")
        assert column(app, "jobs", "input") == ["c.mkv", "b.mkv", "a.mkv"]
        # A refresh keeps the order, and the cursor on its row.
        await select(pilot, app, "jobs", jobs["b.mkv"])
        labelled(coordinator, "cid", NOBODY, *film("d.mkv"))
        await until(pilot, lambda: len(keys_of(app, "jobs")) == 4)
        assert column(app, "jobs", "input") == ["d.mkv", "c.mkv", "b.mkv", "a.mkv"]
        assert grid.selected_key == jobs["b.mkv"]
        while grid.sort_column is not None:
            await pilot.press("s")  # past the last column: the coordinator's order again
        assert column(app, "jobs", "input")[0] == "d.mkv"

    drive(coordinator, scenario)


def test_running_jobs_show_fps_speed_elapsed_eta_and_falling_behind(
    coordinator: Coordinator,
) -> None:
    coordinator.user("dan", "client")
    worker = ScriptedWorker(coordinator, "speed-w", register=True)
    slow = labelled(coordinator, "dan", "speed-w", *film("slow.mkv"))
    fast = labelled(coordinator, "dan", "speed-w", *film("fast.mkv"))
    worker.take(slow)
    worker.take(fast)
    duration = b"  Duration: 00:01:40.00, start: 0.000000, bitrate: 4000 kb/s\n"
    for job_id, speed in ((slow, "0.5"), (fast, "2")):
        worker.stderr(job_id, duration)
        worker.stderr(
            job_id, f"frame= 250 fps= 12 q=28.0 time=00:00:10.00 speed={speed}x\r".encode()
        )

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"user:dan", "enter")
        await until(pilot, lambda: str(cell(app, "jobs", slow, "eta")) == "00:03:00")
        # 90 s of media left at 0.5x: 3 minutes; at 2x: 45 s.
        assert str(cell(app, "jobs", fast, "eta")) == "00:00:45"
        assert str(cell(app, "jobs", slow, "progress")) == "10.0%"
        assert str(cell(app, "jobs", slow, "fps")) == "12"
        assert str(cell(app, "jobs", slow, "elapsed")).startswith("00:00:")
        # Slower than real time: highlighted; faster: not.
        assert "on yellow" in str(cell(app, "jobs", slow, "speed").style)
        assert "on yellow" in str(cell(app, "jobs", slow, "progress").style)
        assert "on yellow" not in str(cell(app, "jobs", fast, "speed").style)
        worker.finish(slow, 0)
        # Finished: no ETA any more, and its last figures are greyed, not highlighted.
        await until(pilot, lambda: str(cell(app, "jobs", slow, "eta")) == "-")
        assert "on yellow" not in str(cell(app, "jobs", slow, "speed").style)

    try:
        drive(coordinator, scenario)
    finally:
        worker.finish(fast, 0)
        worker.close()


def test_full_screen_log_with_search(coordinator: Coordinator) -> None:
    coordinator.user("eve", "client")
    worker = ScriptedWorker(coordinator, "log-w", register=True)
    job_id = labelled(coordinator, "eve", "log-w", *film("broken.mkv"))
    worker.take(job_id)
    lines = [f"[h264 @ 0x55] frame {n} decoded" for n in range(300)]
    lines[40] = "[h264 @ 0x55] Invalid NAL unit size (1234 > 567)"
    lines[250] = "[h264 @ 0x55] invalid nal unit size again"
    worker.stderr(job_id, ("\n".join(lines) + "\n").encode())
    worker.finish(job_id, 1)

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"user:eve", "enter")
        await select(pilot, app, "jobs", job_id)
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, LogScreen))
        log = app.screen
        assert isinstance(log, LogScreen)
        area = log.query_one("#log", TextArea)
        await until(pilot, lambda: len(log.lines) == 300)
        # It opens at the end: the last lines are what an operator wants first.
        assert area.cursor_location[0] == 299
        await pilot.press("slash", *"invalid nal", "enter")
        await until(pilot, lambda: "match 1 of 2" in status(app))
        assert area.selected_text.lower() == "invalid nal"
        assert area.selection.start[0] == 40  # wraps to the first match from the end
        await pilot.press("n")
        assert "match 2 of 2" in status(app) and area.selection.start[0] == 250
        await pilot.press("N")
        assert area.selection.start[0] == 40
        # Escape in the search line closes the search, not the log.
        await pilot.press("slash", "escape")
        assert app.screen is log
        await pilot.press("q")  # q leaves the log, it does not quit the console
        await until(pilot, lambda: app.screen is app.main)
        assert app.is_running

    try:
        drive(coordinator, scenario)
    finally:
        worker.close()


def test_a_filter_being_typed_never_shows_the_outage_banner(coordinator: Coordinator) -> None:
    coordinator.user("fay", "client")
    worker = ScriptedWorker(coordinator, "typing-w", register=True)
    running = labelled(coordinator, "fay", "typing-w", *film("r.mkv"))
    worker.take(running)
    waiting = labelled(coordinator, "fay", NOBODY, *film("p.mkv"))

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        banner = app.main.query_one(ConnectionBanner)
        hint = app.main.query_one("#filter-hint")
        await pilot.press("slash", *"user:fay ")
        await until(pilot, lambda: set(keys_of(app, "jobs")) == {running, waiting})
        for key in "state:run":
            await pilot.press(key)
            for _ in range(4):  # across refreshes (every 0.3 s here)
                await pilot.pause(0.1)
                assert not banner.has_problem, str(banner.render())
        await until(pilot, lambda: keys_of(app, "jobs") == [running])
        # A word that cannot mean anything is named under the filter, and left out.
        await pilot.press(*"xyz")
        await until(pilot, lambda: "no state starts with 'runxyz'" in str(hint.render()))
        assert not banner.has_problem
        # A filter the coordinator refuses is named there too, and is no outage.
        app.main.set_filter("user:fay " + "x" * 300)
        await until(pilot, lambda: "refused" in str(hint.render()))
        assert "255 characters" in str(hint.render())
        await pilot.pause(0.7)
        assert not banner.has_problem
        app.main.set_filter("user:fay")
        await until(pilot, lambda: not hint.display)

    try:
        drive(coordinator, scenario)
    finally:
        worker.finish(running, 0)
        worker.close()


def test_cluster_header_counts_the_last_day_and_the_last_hour(coordinator: Coordinator) -> None:
    coordinator.user("gus", "client")
    worker = ScriptedWorker(coordinator, "header-w", register=True)
    for code in (0, 1, 0):
        job_id = labelled(coordinator, "gus", "header-w", *film(f"h{code}.mkv"))
        worker.take(job_id)
        worker.finish(job_id, code)
    busy = labelled(coordinator, "gus", "header-w", *film("busy.mkv"))
    worker.take(busy)

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        summary = coordinator.call("ops", "GET", "/cluster")
        day = summary["last_day"]
        assert day["finished"] >= 3 and day["failed"] >= 1
        last_day = app.main.query_one("#last-day")
        await until(pilot, lambda: f"{day['finished']} done" in str(last_day.render()))
        assert f"{day['failed']} failed" in str(last_day.render())
        # No drop-in reported anything: the coordinator says 0 of each.
        assert "0 fallbacks, 0 cluster exits" in str(last_day.render())
        sparkline = app.main.query_one("#throughput")
        data = list(sparkline.data or [])  # type: ignore[attr-defined]
        # Per minute over the last hour: compared by their sum, which a minute turning
        # between the console's read and the test's does not change.
        later = coordinator.call("ops", "GET", "/cluster")["series"]["finished"]

        def total(values: list[Any]) -> int:
            return sum(value or 0 for value in values)  # a minute with no data: None

        sums = {total(summary["series"]["finished"]), total(later)}
        assert len(data) == 60 and total(data) in sums and total(data) >= 3
        text = str(app.main.query_one("#summary").render())
        assert f"slots {summary['slots']['used']}/" in text and summary["slots"]["used"] >= 1

    try:
        drive(coordinator, scenario)
    finally:
        worker.finish(busy, 0)
        worker.close()
