"""Keyboard safety and remote text, against a real coordinator.

- Escape and q leave a screen; only the main screen's q quits. Home/End move the
  cursor. A destructive action acts on the row its dialog names, even if a refresh
  moved the cursor meanwhile; after adding a user the cursor is on the new user.
- The help screen is made from the bindings: a key added to a table shows up in it.
- Text from other parties (worker labels, versions, host names, job arguments, cwd,
  errors, stderr) is shown with its control characters visible and is never parsed as
  markup: no escape byte reaches the terminal, ``[/]`` shows as ``[/]``, nothing
  crashes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from textual.binding import Binding
from textual.pilot import Pilot
from textual.widgets import DataTable

from client.api import AuthError
from console.app import ConsoleApp
from console.screens.dialogs import ConfirmScreen, KeyScreen
from console.screens.help import HelpScreen
from console.screens.job_detail import JobDetailScreen
from console.screens.log import LogScreen
from console.screens.worker_detail import WorkerDetailScreen
from console.widgets.tables import JobsTable
from tests.console_cluster import (
    Coordinator,
    ScriptedWorker,
    cell,
    console_coordinator,
    drive,
    keys_of,
    labelled,
    screen_text,
    select,
    table,
    until,
)

NOBODY = "nobody-has-this"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with console_coordinator(tmp_path_factory.mktemp("console-safety"), workers=1) as coord:
        yield coord


def test_escape_and_q_leave_screens_and_only_the_main_screen_quits(
    coordinator: Coordinator,
) -> None:
    job_id = labelled(coordinator, "carol", NOBODY, "-i", "a.mkv", "b.mkv")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        for open_keys, screen, leave in (
            (["enter"], JobDetailScreen, "q"),
            (["enter"], JobDetailScreen, "escape"),
            (["l"], LogScreen, "q"),
            (["l"], LogScreen, "escape"),
            (["enter", "l"], LogScreen, "q"),  # from the details: back to the details
            (["question_mark"], HelpScreen, "q"),
            (["2", "enter"], WorkerDetailScreen, "q"),
            (["2", "x"], ConfirmScreen, "escape"),
        ):
            await pilot.press("1")
            await select(pilot, app, "jobs", job_id)
            await pilot.press(*open_keys)
            await until(pilot, lambda s=screen: isinstance(app.screen, s))  # type: ignore[misc]
            await pilot.press(leave)
            await until(pilot, lambda s=screen: not isinstance(app.screen, s))  # type: ignore[misc]
            while app.screen is not app.main:  # the details under the log
                await pilot.press("escape")
            assert app.is_running
        assert coordinator.call("ops", "GET", "/workers/wk0")["worker"]["worker_id"] == "wk0"
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running)

    drive(coordinator, scenario)


def test_home_and_end_move_the_cursor(coordinator: Coordinator) -> None:
    coordinator.user("hal", "client")
    for n in range(6):
        labelled(coordinator, "hal", NOBODY, "-i", f"{n}.mkv", "-f", "null", "-")

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"user:hal", "enter")
        await until(pilot, lambda: len(keys_of(app, "jobs")) == 6)
        grid = table(app, "jobs")
        await pilot.press("end")
        assert grid.cursor_row == 5
        await pilot.press("home")
        assert grid.cursor_row == 0

    drive(coordinator, scenario)


def test_a_destructive_action_acts_on_the_row_its_dialog_names(coordinator: Coordinator) -> None:
    keys = {name: coordinator.user(name, "client") for name in ("pat", "quinn")}

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await select(pilot, app, "users", "quinn")
        row = table(app, "users").cursor_row
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "quinn" in str(app.screen.query_one("#question").render())
        # Meanwhile a user appears above: after a refresh the cursor's row index is
        # another user's. The answer still acts on the user the dialog named.
        coordinator.user("aaron", "client")
        await until(pilot, lambda: keys_of(app, "users").index("quinn") != row)
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, KeyScreen))
        with pytest.raises(AuthError):
            coordinator.call("quinn", "GET", "/jobs", key=keys["quinn"])
        assert "jobs" in coordinator.call("pat", "GET", "/jobs", key=keys["pat"])
        assert "jobs" in coordinator.call("aaron", "GET", "/jobs")

    drive(coordinator, scenario)


def test_the_cursor_follows_a_newly_added_user(coordinator: Coordinator) -> None:
    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("3")
        await select(pilot, app, "users", "carol")
        await pilot.press("a", *"zoe", "enter")
        await until(pilot, lambda: isinstance(app.screen, KeyScreen))
        await pilot.press("escape")
        await until(pilot, lambda: table(app, "users").selected_key == "zoe")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert str(app.screen.query_one("#question").render()) == "Delete user zoe?"
        await pilot.press("n")

    drive(coordinator, scenario)


def test_help_is_made_from_the_bindings(
    coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A binding added to the jobs table appears in the help with its own description.
    added = Binding("z", "request('open_job')", "A key added for this test")
    monkeypatch.setattr(JobsTable, "BINDINGS", [*JobsTable.BINDINGS, added])

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        grid = app.screen.query_one("#keys", DataTable)
        shown = [tuple(str(c) for c in grid.get_row(r.key)) for r in grid.ordered_rows]
        assert ("z", "jobs", "A key added for this test") in shown
        assert ("c", "jobs", "Cancel job") in shown
        assert ("q", "main screen", "Quit") in shown
        assert ("esc / q / ⌫", "job details", "Back") in shown
        assert ("n", "log", "Next match") in shown
        assert ("e", "workers", "Slots/labels") in shown
        assert ("ctrl+r", "anywhere", "Refresh now") in shown
        # Every description shown is one a binding has.
        described = {
            b.description
            for owner in app.screen.owners  # type: ignore[attr-defined]
            for b in owner.BINDINGS
            if isinstance(b, Binding)
        }
        assert {row[2] for row in shown} <= described

    drive(coordinator, scenario)


ESC = "\x1b"
HOSTILE_LABELS = [f"{ESC}]0;pwned\x07", "[b]bold[/b]", "[/]", f"{ESC}[2J"]


def test_remote_text_is_shown_not_obeyed(coordinator: Coordinator) -> None:
    worker = ScriptedWorker(
        coordinator,
        "evil-w",
        register=True,
        registration={
            "labels": ["evil-w", *HOSTILE_LABELS],
            "version": f"1.0{ESC}[2J[/]",
            "hostname": f"host{ESC}[31m[/red]",
            "mounts": {"Media": f"/mnt/{ESC}]2;title\x07[/]"},
        },
    )
    args = ["-i", f"$Media/a[b]{ESC}[2J.mkv", "-metadata", "title=[bold]x[/]", "out[/].mkv"]
    job_id = labelled(coordinator, "carol", "evil-w", *args, cwd=f"/tmp/[/]{ESC}]2;x\x07")
    worker.take(job_id)
    worker.stderr(job_id, f"[h264 @ 0x1] bad [/] {ESC}[2J{ESC}]0;t\x07 end\n".encode())
    failed = labelled(coordinator, "carol", "evil-w", "-i", "x.mkv", "y.mkv")
    worker.take(failed)
    worker.api.call(
        "POST", f"/jobs/{failed}/finish", json_body={"error": f"cannot start [/] {ESC}[2J"}
    )

    def clean(text: str) -> None:
        assert ESC not in text and "\x07" not in text
        assert "\\x1b" in text

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("slash", *"worker:evil-w", "enter")
        await until(pilot, lambda: {job_id, failed} <= set(keys_of(app, "jobs")))
        assert str(cell(app, "jobs", job_id, "input")) == "a[b]\\x1b[2J.mkv"
        clean(screen_text(app))
        # Job details: arguments, cwd and reasons with [/] in them do not crash it.
        for key in (job_id, failed):
            await select(pilot, app, "jobs", key)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, JobDetailScreen))
            detail = app.screen
            await until(pilot, lambda d=detail: d.job is not None)  # type: ignore[attr-defined]
            await pilot.pause(0.3)
            text = screen_text(app)
            clean(text)
            if key == job_id:
                assert "cwd /tmp/[/]\\x1b]2;x\\x07" in text
                assert "'title=[bold]x[/]'" in text and "out[/].mkv" in text
                assert "bad [/] \\x1b[2J\\x1b]0;t\\x07 end" in text
            else:
                assert "cannot start [/] \\x1b[2J" in text
            await pilot.press("l")
            await until(pilot, lambda: isinstance(app.screen, LogScreen))
            await pilot.pause(0.3)
            clean(screen_text(app)) if key == job_id else None
            await pilot.press("escape", "escape")
            await until(pilot, lambda: app.screen is app.main)
        await pilot.press("2")
        await until(pilot, lambda: "evil-w" in keys_of(app, "workers"))
        labels = str(cell(app, "workers", "evil-w", "labels"))
        assert labels == "evil-w,\\x1b]0;pwned\\x07,[b]bold[/b],[/],\\x1b[2J"
        assert str(cell(app, "workers", "evil-w", "version")) == "1.0\\x1b[2J[/]"
        assert str(cell(app, "workers", "evil-w", "host")) == "host\\x1b[31m[/red]"
        clean(screen_text(app))
        await select(pilot, app, "workers", "evil-w")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, WorkerDetailScreen))
        await until(pilot, lambda: "host" in str(app.screen.query_one("#worker-head").render()))
        clean(screen_text(app))
        assert "/mnt/\\x1b]2;title\\x07[/]" in screen_text(app)
        await pilot.press("e")  # the dialog shows the labels too
        await pilot.pause(0.3)
        assert ESC not in screen_text(app)
        await pilot.press("escape", "escape")
        assert app.is_running

    try:
        drive(coordinator, scenario)
    finally:
        worker.finish(job_id)
        worker.close()
