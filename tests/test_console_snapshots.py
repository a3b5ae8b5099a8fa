"""Screenshots of the console's main screens, from fixed data.

The only place a stand-in for the coordinator is used: a screenshot needs data that
does not change between runs. Everything the stand-in returns has the shape of the real
API's answers (see tests/test_admin_api.py for those). The main screens are taken at
80x24 and 160x48. Update the SVGs with
``pytest tests/test_console_snapshots.py --snapshot-update`` and look at them.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from client.api import Unreachable
from console.app import ConsoleApp
from console.screens.job_detail import JobDetailScreen
from console.screens.log import LogScreen
from console.screens.worker_detail import WorkerDetailScreen

NOW = "2026-11-26T12:00:00+00:00"
FFMPEG = {"path": "/usr/bin/ffmpeg", "version": "ffmpeg version 5.1.8-0+deb12u1 Copyright"}
FFPROBE = {"path": "/usr/bin/ffprobe", "version": "ffprobe version 5.1.8-0+deb12u1 Copyright"}


GPU = {
    "vendor": "nvidia",
    "index": 0,
    "name": "NVIDIA GeForce GTX 1660 SUPER",
    "utilization": 38,
    "encoder": 61,
    "decoder": 22,
    "memory_used_mib": 1210,
    "memory_total_mib": 6144,
    "encoder_sessions": 2,
}


def worker(n: int, state: str, used: int, drained: bool = False) -> dict[str, Any]:
    seen = "2026-11-26T11:59:58+00:00" if state == "online" else "2026-11-26T09:12:00+00:00"
    load: dict[str, Any] = {
        "cpus": 8,
        "cpu_percent": [0, 87.5, 12.0, 3.0][n],
        "memory_percent": [0, 61.2, 97.1, 20.0][n],
        "load_1m": 2.1,
        "at": seen,
    }
    if n == 1:
        load["gpus"] = [GPU]
    return {
        "worker_id": f"node{n}",
        "state": state,
        "drained": drained,
        "sandboxed": n != 3,
        "slots": 6 if n == 1 else 4,
        "slots_used": used,
        "labels": ["gpu", "nvenc"] if n == 1 else ["cpu"],
        "binaries": ["ffmpeg", "ffprobe"],
        "binary_versions": {"ffmpeg": FFMPEG, "ffprobe": FFPROBE},
        "path_variables": ["Media", "Cache"] if n != 2 else ["Cache"],
        "mounts": {"Media": "/mnt/media", "Cache": "/var/cache/jellyfin"},
        "os": "Linux 6.1.0-27-amd64 x86_64",
        "configured": {"slots": 4, "labels": ["gpu", "nvenc"] if n == 1 else ["cpu"]},
        "overrides": {"slots": 6} if n == 1 else {},
        "version": "0.1.0",
        "hostname": f"node{n}.lan",
        "registered_at": "2026-11-26T08:00:00+00:00",
        "last_seen_at": seen,
        "lease_expires_at": "2026-11-26T12:00:58+00:00"
        if state == "online"
        else "2026-11-26T09:13:00+00:00",
        "load": load,
    }


HARDWARE = {
    "ffmpeg": {
        "cuda": "ok",
        "h264_nvenc": "ok",
        "hevc_nvenc": "ok",
        "vaapi": "no vaapi device: Device creation failed: -542398533.",
        "h264_qsv": "no qsv device: Device creation failed: -542398533.",
        "h264_v4l2m2m": "no /dev/video* device node",
    }
}


FILMS = ["Big Buck Bunny.mkv", "Sintel (2010).mkv", "Tears of Steel.mp4", "Elephants Dream.mkv"]


def job(n: int, state: str, **extra: Any) -> dict[str, Any]:
    film = FILMS[n % len(FILMS)]
    probe = n == 3
    return {
        "job_id": f"{n:04d}" + "a1b2c3d4e5f6a7b8c9d0e1f2a3b4",
        "requester": "jellyfin" if n % 2 else "sonarr",
        "binary": "ffmpeg" if not probe else "ffprobe",
        "args": [
            "-i",
            f"$Media/films/{film}",
            "-c:v",
            "libx264",
            "-f",
            "hls",
            "$Cache/t/main.m3u8",
        ],
        "input_name": f"$Media/films/{film}",
        "output_name": None if probe else f"$Cache/transcodes/{n:04d}/main.m3u8",
        "cwd": "$Cache/transcodes",
        "mode": "active",
        "priority": 0,
        "state": state,
        "worker_id": extra.get("worker_id"),
        "exit_code": extra.get("exit_code"),
        "failure": extra.get("failure"),
        "reason": extra.get("reason"),
        "created_at": f"2026-11-26T11:{59 - n * 7 % 60:02d}:00+00:00",
        "started_at": extra.get("started_at"),
        "finished_at": extra.get("finished_at"),
        "progress": extra.get("progress"),
    }


JOBS = [
    job(
        1,
        "running",
        worker_id="node1",
        started_at="2026-11-26T11:52:01+00:00",
        progress={
            "time": 312.5,
            "duration": 5400.0,
            "percent": 5.8,
            "speed": 3.2,
            "frame": 7812,
            "fps": 80.0,
        },
    ),
    job(
        2,
        "running",
        worker_id="node2",
        started_at="2026-11-26T11:46:30+00:00",
        progress={"time": 75.0, "duration": 888.0, "percent": 8.4, "speed": 0.9, "fps": 21.6},
    ),
    job(
        3,
        "completed",
        worker_id="node1",
        exit_code=0,
        reason="exited with 0",
        started_at="2026-11-26T11:38:00+00:00",
        finished_at="2026-11-26T11:38:01+00:00",
    ),
    job(
        4,
        "completed",
        worker_id="node2",
        exit_code=1,
        reason="exited with 1",
        started_at="2026-11-26T11:31:02+00:00",
        finished_at="2026-11-26T11:31:09+00:00",
        progress={"time": 2.0, "speed": 1.4, "fps": 35.0},
    ),
    job(5, "pending"),
    job(6, "canceled", failure="canceled", reason="canceled by ops"),
    job(
        7,
        "failed",
        worker_id="node1",
        failure="worker_lost",
        reason="worker lost",
        started_at="2026-11-26T11:10:00+00:00",
        finished_at="2026-11-26T11:10:40+00:00",
    ),
]
USERS = [
    {
        "client_id": "jellyfin",
        "role": "client",
        "created_at": "2026-11-20T10:00:00+00:00",
        "allowed_networks": ["192.168.1.0/24"],
    },
    {
        "client_id": "node1",
        "role": "worker",
        "created_at": "2026-11-20T10:00:00+00:00",
        "allowed_networks": [],
    },
    {
        "client_id": "ops",
        "role": "admin",
        "created_at": "2026-11-20T10:00:00+00:00",
        "allowed_networks": [],
    },
]
# A fixed hour of throughput and queue, minute by minute (the live minute last).
FINISHED = [(m * 7 + 3) % 11 for m in range(59)] + [4]
PENDING = [max(0, 6 - abs(30 - m) // 3) for m in range(59)] + [1]
SUMMARY = {
    "series": {"minutes": 60, "finished": FINISHED, "pending": PENDING},
    "last_day": {"finished": 1432, "failed": 17, "sampled_minutes": 1440},
    "jobs_by_state": {"running": 2, "completed": 2, "failed": 1, "pending": 1, "canceled": 1},
    "workers_by_state": {"online": 2, "offline": 1},
    "users_by_role": {"admin": 1, "client": 1, "worker": 1},
    "slots": {"total": 8, "used": 2, "accepting_workers": 2},
    "coordinator_version": "0.1.0",
    "now": NOW,
}
STDERR = (
    "Input #0, matroska,webm, from '/mnt/media/films/Big Buck Bunny.mkv':\n"
    "  Duration: 01:30:00.00, start: 0.000000, bitrate: 4000 kb/s\n"
    "Stream mapping:\n  Stream #0:0 -> #0:0 (h264 (native) -> h264 (libx264))\n"
    "frame= 7700 fps= 80 q=28.0 size=   51200kB time=00:05:08.00 bitrate=1361.7kbits/s speed=3.2x\r"
    "frame= 7812 fps= 80 q=28.0 size=   52224kB time=00:05:12.50 bitrate=1369.0kbits/s speed=3.2x\r"
)


class FixedApi:
    """Answers like the coordinator, always with the same data."""

    client_id = "ops"

    def __init__(self, reachable: bool = True) -> None:
        self.reachable = reachable

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if not self.reachable:
            raise Unreachable("[Errno 111] Connection refused")
        answers: dict[str, Any] = {
            "/cluster": SUMMARY,
            "/workers": {
                "workers": [
                    worker(1, "online", 2),
                    worker(2, "online", 0, True),
                    worker(3, "offline", 0),
                ]
            },
            "/jobs": {"jobs": JOBS, "total": len(JOBS), "offset": 0, "limit": 200},
            "/users": {"users": USERS},
            f"/jobs/{JOBS[0]['job_id']}/stderr": {
                "stderr": STDERR,
                "bytes": len(STDERR),
                "truncated": False,
            },
        }
        if method == "POST" and path == "/users":
            body = kwargs["json_body"]
            user = {"client_id": body["client_id"], "role": body["role"], "allowed_networks": []}
            return {"user": {**user, "hmac_key": "3q2-Wn9xJdLk0cQvT1m4Zb8yRrE6uHsPaGfNoKiV7wE"}}
        if path.startswith("/workers/node"):
            found = next(w for w in answers["/workers"]["workers"] if path.endswith(w["worker_id"]))
            return {
                "worker": {
                    **found,
                    "capabilities": {
                        "ffmpeg": {
                            "encoders": ["aac", "h264_nvenc", "hevc_nvenc", "libx264"],
                            "decoders": ["aac", "h264", "hevc"],
                            "filters": ["scale", "scale_cuda", "subtitles"],
                            "formats": ["hls", "matroska", "mp4"],
                            "hwaccels": ["cuda"],
                        },
                        "ffprobe": None,
                    },
                    "hardware": HARDWARE,
                }
            }
        if path == f"/jobs/{JOBS[0]['job_id']}":
            detail = copy.deepcopy(JOBS[0])
            detail["events"] = [
                {
                    "at": "2026-11-26T11:52:00+00:00",
                    "from": None,
                    "to": "pending",
                    "reason": "submitted by jellyfin",
                },
                {
                    "at": "2026-11-26T11:52:00+00:00",
                    "from": "pending",
                    "to": "assigned",
                    "reason": "assigned to node1",
                },
                {
                    "at": "2026-11-26T11:52:01+00:00",
                    "from": "assigned",
                    "to": "running",
                    "reason": "accepted",
                },
            ]
            return {"job": detail}
        return copy.deepcopy(answers[path])

    def close(self) -> None:
        pass


def loaded(app: ConsoleApp) -> bool:
    return app.main.snapshot is not None


async def wait_loaded(pilot: Pilot[None]) -> None:
    app = pilot.app
    assert isinstance(app, ConsoleApp)
    # Up to 15 s: the suite runs these beside other work on two cores.
    for _ in range(750):
        if loaded(app):
            break
        await pilot.pause(0.02)
    await pilot.pause()


def make() -> ConsoleApp:
    return ConsoleApp(FixedApi(), refresh_seconds=0)


# The main screens at the smallest terminal an operator should use and at a large one.
SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


async def wait_for(pilot: Pilot[None], condition: Any) -> None:
    for _ in range(750):
        if condition():
            break
        await pilot.pause(0.02)
    await pilot.pause()
    # A dialog's text cursor blinks on a timer: held steady, the picture does not depend
    # on when it was taken.
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()  # a screen just pushed draws its widgets on the next turn


@pytest.mark.parametrize("size", SIZES)
def test_jobs_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make(), terminal_size=size, run_before=wait_loaded)


@pytest.mark.parametrize("size", SIZES)
def test_workers_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_loaded(pilot)
        await pilot.press("2")

    assert snap_compare(make(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_users_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_loaded(pilot)
        await pilot.press("3")

    assert snap_compare(make(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_job_detail_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_loaded(pilot)
        await pilot.press("enter")
        app = pilot.app
        await wait_for(
            pilot, lambda: isinstance(app.screen, JobDetailScreen) and app.screen.job is not None
        )

    assert snap_compare(make(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_log_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_loaded(pilot)
        await pilot.press("l")
        app = pilot.app
        await wait_for(pilot, lambda: isinstance(app.screen, LogScreen) and app.screen.lines)
        await pilot.press("slash", *"stream", "enter")
        await pilot.pause()

    assert snap_compare(make(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_worker_detail_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_loaded(pilot)
        await pilot.press("2", "enter")
        app = pilot.app
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, WorkerDetailScreen) and app.screen.worker is not None,
        )

    assert snap_compare(make(), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_help_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(make(), terminal_size=size, press=["question_mark"])


def test_small_terminal(snap_compare: Any) -> None:
    assert snap_compare(make(), terminal_size=(72, 16), run_before=wait_loaded)


def test_unreachable_banner(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        app = pilot.app
        assert isinstance(app, ConsoleApp)
        await wait_for(pilot, lambda: app.main.query_one("#banner").has_class("-problem"))

    app = ConsoleApp(FixedApi(reachable=False), refresh_seconds=0)
    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)


def test_new_key_dialog(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_loaded(pilot)
        await pilot.press("3", "a", *"emby", "enter")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "KeyScreen")

    assert snap_compare(make(), terminal_size=(100, 24), run_before=run_before)


def test_worker_edit_dialog(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[None]) -> None:
        await wait_loaded(pilot)
        await pilot.press("2", "e")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "WorkerEditScreen")

    assert snap_compare(make(), terminal_size=(100, 24), run_before=run_before)
