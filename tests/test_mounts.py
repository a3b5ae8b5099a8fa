"""Mount monitoring: present roots are offered, missing or hung ones are not, and a hung
check never holds anything up."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from worker.mounts import MountMonitor, root_present


def test_present_and_missing_roots(tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "file").write_text("")
    monitor = MountMonitor(
        {
            "Media": str(tmp_path / "media"),
            "Gone": str(tmp_path / "gone"),
            "File": str(tmp_path / "file"),
        },
        on_change=lambda _: None,
    )
    assert monitor.available() == ["Media"]
    assert root_present(str(tmp_path / "media"))
    assert not root_present(str(tmp_path / "file"))


def test_hung_mount_counts_as_absent_without_blocking(tmp_path: Path) -> None:
    """A check that never answers (what stat on a dead NFS server does) is given up after
    the timeout, and is not started again while the first one is still stuck."""
    release = threading.Event()
    started: list[str] = []
    (tmp_path / "ok").mkdir()

    def check(root: str) -> bool:
        started.append(root)
        if root == "/net/hung":
            release.wait(30)
        return root_present(root)

    monitor = MountMonitor(
        {"Ok": str(tmp_path / "ok"), "Hung": "/net/hung"},
        on_change=lambda _: None,
        timeout=0.2,
        check=check,
    )
    try:
        begin = time.monotonic()
        assert monitor.available() == ["Ok"]
        assert monitor.available() == ["Ok"]
        assert time.monotonic() - begin < 2
        assert started.count("/net/hung") == 1  # the stuck check was not piled up
    finally:
        release.set()


def test_changes_are_reported_from_the_monitor_thread(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    reports: list[list[str]] = []
    changed = threading.Event()

    def on_change(variables: list[str]) -> None:
        reports.append(variables)
        changed.set()

    monitor = MountMonitor({"Media": str(root)}, on_change, interval=0.05)
    assert monitor.available() == ["Media"]
    monitor.start()
    try:
        root.rmdir()
        assert changed.wait(5)
        assert reports == [[]]
        changed.clear()
        root.mkdir()
        assert changed.wait(5)
        assert reports == [[], ["Media"]]
    finally:
        monitor.stop()
