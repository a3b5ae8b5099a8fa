"""The workers screen against a real coordinator: host and load from heartbeats (a real
worker process, and GPU figures from a scripted one), the details view with its
hardware checks, mounts and newest jobs, and live slots and labels from a dialog."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from console.app import ConsoleApp
from console.screens.dialogs import WorkerEditScreen
from console.screens.worker_detail import WorkerDetailScreen
from tests.console_cluster import (
    Coordinator,
    ScriptedWorker,
    cell,
    console_coordinator,
    drive,
    keys_of,
    labelled,
    real_worker,
    select,
    status,
    until,
)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    with console_coordinator(tmp_path_factory.mktemp("console-workers"), workers=0) as coord:
        yield coord


def table_rows(screen: object, selector: str) -> list[list[str]]:
    grid = screen.query_one(selector, DataTable)  # type: ignore[attr-defined]
    return [[str(c) for c in grid.get_row(row.key)] for row in grid.ordered_rows]


@pytest.mark.timeout(120)
def test_a_real_worker_shows_its_host_load_checks_and_mounts(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    paths = {"Media": str(media), "Gone": str(tmp_path / "not-mounted")}
    with real_worker(coordinator, "real-w", paths):
        job_id = labelled(
            coordinator, "carol", "real-w", "-f", "lavfi", "-i", "testsrc=d=0.2", "-f", "null", "-"
        )

        async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
            await pilot.press("2")
            await until(pilot, lambda: "real-w" in keys_of(app, "workers"))
            assert str(cell(app, "workers", "real-w", "host")) == socket.gethostname()
            # CPU and memory from the worker's own sampling of /proc.
            assert str(cell(app, "workers", "real-w", "cpu")).endswith("%")
            assert str(cell(app, "workers", "real-w", "mem")).endswith("%")
            assert str(cell(app, "workers", "real-w", "gpu")) == "-"  # no GPU here
            await select(pilot, app, "workers", "real-w")
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, WorkerDetailScreen))
            detail = app.screen
            await until(pilot, lambda: "host" in str(detail.query_one("#worker-head").render()))
            head = str(detail.query_one("#worker-head").render())
            assert f"host {socket.gethostname()}" in head
            assert f"$Media = {media} (present)" in head
            assert "(absent)" in head and "$Gone" in head
            assert "slots 0 of 2 in use (from its config)" in head
            binaries = table_rows(detail, "#worker-binaries")
            assert [row[0] for row in binaries] == ["ffmpeg", "ffprobe"]
            assert "encoders" in binaries[0][3] and binaries[0][4] == "none"
            rows = table_rows(detail, "#worker-hardware")
            checks = {row[1]: row for row in rows if row[0] == "ffmpeg"}
            assert next(row[2] for row in rows if row[0] == "ffprobe") == "not offered"
            # Every accelerator Debian's ffmpeg lists was tried here and failed.
            assert checks["h264_nvenc"][2] == "not offered"
            assert "cuda" in checks["h264_nvenc"][3]
            assert all(row[2] == "not offered" for row in checks.values())
            await until(pilot, lambda: job_id[:12] in str(table_rows(detail, "#worker-jobs")))
            await pilot.press("escape")
            assert app.screen is app.main

        drive(coordinator, scenario, timeout=20)


def test_gpu_load_and_how_old_a_sample_is(coordinator: Coordinator) -> None:
    worker = ScriptedWorker(coordinator, "gpu-w", register=True)
    gpu = {
        "vendor": "nvidia",
        "name": "GTX 1660",
        "utilization": 38,
        "encoder": 61,
        "encoder_sessions": 2,
    }
    worker.heartbeat({"cpu_percent": 97.0, "memory_percent": 40.0, "gpus": [gpu]})

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("2")
        await until(pilot, lambda: "gpu-w" in keys_of(app, "workers"))
        assert str(cell(app, "workers", "gpu-w", "gpu")) == "38% enc 61% 2 sess"
        cpu = cell(app, "workers", "gpu-w", "cpu")
        assert str(cpu) == "97%" and "red" in str(cpu.style)  # nearly saturated
        worker.heartbeat({"cpu_percent": 12.0, "memory_percent": 40.0})
        await until(pilot, lambda: str(cell(app, "workers", "gpu-w", "cpu")) == "12%")
        assert "red" not in str(cell(app, "workers", "gpu-w", "cpu").style)
        assert str(cell(app, "workers", "gpu-w", "gpu")) == "-"

    try:
        drive(coordinator, scenario)
    finally:
        worker.close()


def test_slots_and_labels_changed_from_the_console(coordinator: Coordinator) -> None:
    worker = ScriptedWorker(coordinator, "edit-w", register=True)

    async def scenario(app: ConsoleApp, pilot: Pilot[None]) -> None:
        await pilot.press("2")
        await select(pilot, app, "workers", "edit-w")
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, WorkerEditScreen))
        dialog = app.screen
        assert "edit-w" in str(dialog.query_one("Label").render())
        await pilot.press(*"5")
        dialog.query_one("#labels", Input).focus()
        await pilot.press(*"night, edit-w", "enter")
        await until(pilot, lambda: status(app).startswith("worker edit-w: 5 slots"))
        await until(pilot, lambda: str(cell(app, "workers", "edit-w", "slots")) == "0/5*")
        assert str(cell(app, "workers", "edit-w", "labels")) == "night,edit-w"
        shown = coordinator.call("ops", "GET", "/workers/edit-w")["worker"]
        assert (shown["slots"], shown["labels"]) == (5, ["night", "edit-w"])
        # The scheduler follows: a job needing "night" goes to it now.
        job_id = labelled(coordinator, "carol", "night", "-version")
        claimed = worker.api.call("GET", "/workers/poll", params={"wait": 0})["jobs"]
        assert job_id in [j["job_id"] for j in claimed]
        worker.api.call("POST", f"/jobs/{job_id}/accept")
        worker.finish(job_id)
        # From the details screen, emptied fields: back to the worker's config.
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, WorkerDetailScreen))
        detail = app.screen
        await until(
            pilot, lambda: "set by an admin" in str(detail.query_one("#worker-head").render())
        )
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, WorkerEditScreen))
        app.screen.query_one("#slots", Input).value = ""
        app.screen.query_one("#labels", Input).value = ""
        await pilot.press("enter")
        await until(
            pilot, lambda: "(from its config)" in str(detail.query_one("#worker-head").render())
        )
        shown = coordinator.call("ops", "GET", "/workers/edit-w")["worker"]
        assert (shown["slots"], shown["labels"], shown["overrides"]) == (3, ["edit-w"], {})

    try:
        drive(coordinator, scenario)
    finally:
        worker.close()
