"""Coordinator processes on one host ring each other after a bump (coordinator/doorbell.py).

The counters' poll is slowed to seconds here, so a waiter woken within the test's bound
was woken by a ring; with the doorbells closed the same wait takes the poll's interval.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.engine import make_url

from coordinator.doorbell import Doorbell, directory_for
from tests.conftest import instances
from tests.helpers import waiter

SLOW_POLL = 3.0

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def slow_polls(database_url: str) -> Iterator[tuple[Flask, Flask]]:
    for first, second in instances(database_url, recheck_seconds=60.0):
        for app in (first, second):
            wakeups = app.extensions["dffmpeg.wakeups"]
            if wakeups.listener is not None:  # PostgreSQL: the poll and the rings alone
                wakeups.listener.stop()
                wakeups.listener = None
            wakeups.interval = SLOW_POLL
        time.sleep(0.2)  # the threads' current 40 ms waits end
        yield first, second


def _woken_after(waiter_app: Flask, notifier_app: Flask, key: str) -> float | None:
    """Seconds from a notification in one instance to its waiter's wake-up in the other."""
    flag = threading.Event()
    thread, woke = waiter(waiter_app.extensions["dffmpeg.notifier"], key, flag)
    # Registered and past its first check, and the poll has its baseline (a first poll
    # wakes every waiter once).
    time.sleep(SLOW_POLL + 0.5)
    flag.set()
    sent = time.monotonic()
    notifier_app.extensions["dffmpeg.notifier"].notify(key)
    thread.join(timeout=25)
    return woke[0] - sent if woke else None


def test_a_bump_rings_the_other_processes_at_once(slow_polls: tuple[Flask, Flask]) -> None:
    first, second = slow_polls
    assert first.extensions["dffmpeg.wakeups"].doorbell is not None
    took = _woken_after(second, first, "output:job-ring")
    assert took is not None and took < 1.0, f"woken after {took} s, not by a ring"


def test_without_doorbells_the_poll_still_carries_the_wakeup(
    slow_polls: tuple[Flask, Flask],
) -> None:
    first, second = slow_polls
    for app in (first, second):
        wakeups = app.extensions["dffmpeg.wakeups"]
        bell = wakeups.doorbell
        wakeups.doorbell = None  # the thread's select still holds its fd: never readable
        bell.close()
    took = _woken_after(second, first, "output:job-poll")
    assert took is not None, "the poll lost the wake-up"
    assert took > 0.5, f"woken after {took} s with no doorbell: the test cannot tell"


def test_rings_skip_dead_sockets_and_remove_them(tmp_path: Path) -> None:
    directory = str(tmp_path / "bells")
    one, two = Doorbell(directory), Doorbell(directory)
    assert one.open() and two.open()
    try:
        # A process killed with its socket still on disk: bound once, nothing behind it.
        dead = os.path.join(directory, "deadbeef0000")
        orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        orphan.bind(dead)
        orphan.close()
        assert one.ring() == 1
        assert not os.path.exists(dead)
        ready = socket.socket(fileno=os.dup(two.fileno()))
        try:
            assert ready.recv(8) == b"!"
        finally:
            ready.close()
        assert two.ring() == 1
    finally:
        one.close()
        two.close()
    assert not os.path.exists(directory)  # the last one out removed it


def test_a_directory_others_can_write_is_not_used(tmp_path: Path) -> None:
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)  # the umask took some bits
    bell = Doorbell(str(directory))
    assert not bell.open()
    assert list(directory.iterdir()) == []
    if os.getuid() == 0:  # as root (CI) a directory can be given to another user
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        bell = Doorbell(str(theirs))
        assert not bell.open()
        assert list(theirs.iterdir()) == []


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ("sqlite:////tmp/x/../db.sqlite", "sqlite:////tmp/db.sqlite", True),
        ("sqlite:////tmp/a.sqlite", "sqlite:////tmp/b.sqlite", False),
        ("mysql+pymysql://u:one@127.0.0.1/test", "mysql+pymysql://u:two@127.0.0.1/test", True),
        ("mysql+pymysql://u@127.0.0.1/test", "mysql+pymysql://u@127.0.0.1/other", False),
    ],
)
def test_processes_of_one_database_share_a_directory(first: str, second: str, same: bool) -> None:
    a: Any = directory_for(make_url(first))
    b: Any = directory_for(make_url(second))
    assert (a == b) is same
    assert "one" not in a and "two" not in b  # no password in a path
    assert directory_for(make_url("sqlite://")) is None


def test_the_master_sweeps_what_dead_processes_left(tmp_path: Path) -> None:
    """gunicorn's master removes an exited worker's socket by its pid, and when it stops
    every socket nobody is bound to, then the directory once it is empty."""
    from coordinator.doorbell import sweep

    directory = str(tmp_path / "bells")
    live = Doorbell(directory)
    assert live.open()
    assert live.path is not None and os.path.basename(live.path).startswith(f"{os.getpid()}-")
    for name in ("4242-aaaa", "4343-bbbb"):  # killed workers: bound once, nothing behind
        orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        orphan.bind(os.path.join(directory, name))
        orphan.close()
    sweep(directory, 4242)
    assert sorted(os.listdir(directory)) == sorted(["4343-bbbb", os.path.basename(live.path)])
    sweep(directory)
    assert os.listdir(directory) == [os.path.basename(live.path)]
    live.close()
    sweep(directory)
    assert not os.path.exists(directory)
