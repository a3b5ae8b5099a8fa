"""A real coordinator process for the console's Pilot tests, and ways to drive both.

The coordinator is seeded through its API: an admin, clients, registered workers and
jobs. The console talks to it with a real signed ``Api``, exactly as in production. A
``ScriptedWorker`` plays a worker over the real API (claim, accept, stream stderr,
finish), so a test decides exactly what ffmpeg "printed" and when.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.pilot import Pilot

from client.api import Api
from console.app import ConsoleApp
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
    root: Path

    def api(self, client_id: str, key: str | None = None) -> Api:
        return Api(self.url, client_id, key or self.keys[client_id], timeout=10)

    def call(self, who: str, method: str, path: str, key: str | None = None, **kw: Any) -> Any:
        """One request as ``who`` on a connection that is closed right after."""
        api = self.api(who, key)
        try:
            return api.call(method, path, **kw)
        finally:
            api.close()

    def user(self, client_id: str, role: str) -> str:
        key: str = admin(self.config, "user", "add", client_id, "--role", role)["hmac_key"]
        self.keys[client_id] = key
        return key


def start_coordinator(tmp: Path, config: Path, port: int) -> Any:
    return running(
        [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
        tmp / f"coordinator-{port}.log",
        env=process_env(),
    )


@contextmanager
def console_coordinator(tmp: Path, workers: int = 3, **settings: Any) -> Iterator[Coordinator]:
    """A coordinator with users ops (admin), carol and dave (clients) and ``workers``
    workers wk0, wk1... registered with ``WORKER``."""
    port = free_port()
    config = write_yaml(
        tmp / "coordinator.yaml",
        {
            "host": "127.0.0.1",
            "port": port,
            "database_url": f"sqlite:///{tmp / 'coordinator.db'}",
            # Named, so a second coordinator from a copy of this config opens the keys.
            "secret_key_file": str(tmp / "coordinator.secret"),
            # Long leases: the seeded workers never heartbeat but must stay online.
            "worker_lease_seconds": 600,
            "worker_idle_lease_seconds": 600,
            **settings,
        },
    )
    url = f"http://127.0.0.1:{port}"
    coord = Coordinator(url, config, {}, tmp)
    for client_id, role in (("ops", "admin"), ("carol", "client"), ("dave", "client")):
        coord.user(client_id, role)
    for n in range(workers):
        coord.user(f"wk{n}", "worker")
    with start_coordinator(tmp, config, port):
        wait_until(lambda: health(url) == 200, timeout=20)
        for n in range(workers):
            coord.call(f"wk{n}", "POST", "/workers/register", json_body=WORKER)
        yield coord


def labelled(coord: Coordinator, who: str, label: str, *args: str, **extra: Any) -> str:
    """A job only a worker with ``label`` may run; it waits for one (no failing fast)."""
    return submit(coord, who, *args, required_labels=[label], wait_for_worker=True, **extra)


def submit(coord: Coordinator, who: str, *args: str, **extra: Any) -> str:
    body = {"binary": "ffmpeg", "args": list(args) or ["-version"], "mode": "background", **extra}
    job_id: str = coord.call(who, "POST", "/jobs", json_body=body)["job"]["job_id"]
    return job_id


@dataclass
class ScriptedWorker:
    """A worker identity that runs jobs as a test says, over the real worker API.

    ``register`` (for a new identity): online with the label ``worker_id``, so jobs
    that require that label go to it and to nobody else.
    """

    coord: Coordinator
    worker_id: str
    register: bool = False
    registration: dict[str, Any] = field(default_factory=dict)
    api: Api = field(init=False)
    seq: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.register:
            self.coord.user(self.worker_id, "worker")
        self.api = self.coord.api(self.worker_id)
        if self.register:
            body = {**WORKER, "labels": [self.worker_id], **self.registration}
            self.api.call("POST", "/workers/register", json_body=body)

    def take(self, job_id: str) -> None:
        """Claim (poll) and accept ``job_id``; it must be this worker's to claim."""
        claimed = self.api.call("GET", "/workers/poll", params={"wait": 0})["jobs"]
        assert job_id in [j["job_id"] for j in claimed], claimed
        self.api.call("POST", f"/jobs/{job_id}/accept")

    def stderr(self, job_id: str, data: bytes) -> None:
        self.seq[job_id] = self.seq.get(job_id, 0) + 1
        frames = encode_frames([Frame(FrameKind.STDERR, self.seq[job_id], data)])
        self.api.request(
            "POST", f"/jobs/{job_id}/output", body=frames, content_type=CONTENT_TYPE_FRAMES
        )

    def finish(self, job_id: str, exit_code: int = 0) -> None:
        self.api.call("POST", f"/jobs/{job_id}/finish", json_body={"exit_code": exit_code})

    def heartbeat(self, load: dict[str, Any]) -> None:
        self.api.call("POST", "/workers/heartbeat", json_body={"load": load})

    def close(self) -> None:
        self.api.close()


@contextmanager
def real_worker(
    coord: Coordinator, worker_id: str, paths: dict[str, str], **settings: Any
) -> Iterator[Any]:
    """A ``dffmpeg-worker`` process with Debian's ffmpeg, online before the block."""
    import shutil

    key = coord.user(worker_id, "worker")
    config = write_yaml(
        coord.root / f"{worker_id}.yaml",
        {
            "client_id": worker_id,
            "hmac_key": key,
            "coordinator_url": coord.url,
            "binaries": {"ffmpeg": shutil.which("ffmpeg"), "ffprobe": shutil.which("ffprobe")},
            "slots": 2,
            "labels": [worker_id],
            "paths": paths,
            "heartbeat_seconds": 1,
            **settings,
        },
    )

    def online() -> bool:
        workers = coord.call("ops", "GET", "/workers")["workers"]
        return any(w["worker_id"] == worker_id and w["state"] == "online" for w in workers)

    with running(
        [sys.executable, "-m", "worker.cli", "--config", str(config)],
        coord.root / f"{worker_id}.log",
        env=process_env(),
    ) as proc:
        wait_until(online, timeout=60, interval=0.2)
        yield proc


def drive(
    coord: Coordinator | None,
    scenario: Callable[[ConsoleApp, Pilot[None]], Coroutine[Any, Any, None]],
    api: Api | None = None,
    size: tuple[int, int] = (160, 40),
    timeout: float = 10.0,
    page_size: int = 200,
    refresh_seconds: float = 0.3,
) -> None:
    assert api is not None or coord is not None
    app = ConsoleApp(
        api or coord.api("ops"),  # type: ignore[union-attr]
        refresh_seconds=refresh_seconds,
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


def cell(app: ConsoleApp, name: str, key: str, column: str) -> Text:
    """The cell of ``column`` in the row ``key`` (a Rich Text, style included)."""
    grid = table(app, name)
    value = grid.get_cell(key, column)
    assert isinstance(value, Text)
    return value


def column(app: ConsoleApp, name: str, col: str) -> list[str]:
    """A column's text, top to bottom."""
    grid = table(app, name)
    return [str(grid.get_cell(row.value, col)) for row in grid.rows]


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


def screen_text(app: ConsoleApp) -> str:
    """Everything the current screen shows, as the terminal would get it (text only).

    Textual has no public call for this; the compositor's strips are what it writes.
    """
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text for strip in strips)
