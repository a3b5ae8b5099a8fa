"""The console's plain-data helpers and the shared status formatting."""

from __future__ import annotations

from datetime import UTC, datetime

from client import status
from console.model import JobFilter, stderr_lines
from console.screens.dialogs import split_networks

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def test_filter_splits_server_keys_from_words() -> None:
    parsed = JobFilter.parse("state:running,pending user:Jellyfin worker:n1 X264 bogus:1")
    assert parsed.server == {"state": "running,pending", "requester": "Jellyfin", "worker": "n1"}
    assert parsed.words == ["x264", "bogus:1"]
    assert parsed.matches(["abc", "libx264 encode", "bogus:1"])
    assert not parsed.matches(["abc", "x265"])
    assert JobFilter.parse("").matches(["anything"])


def test_stderr_lines_keep_the_last_version_of_rewritten_lines() -> None:
    text = "Input #0\r\nStream mapping:\nframe=1 time=0\rframe=2 time=1\rframe=3 time=2\r\n\n"
    assert stderr_lines(text) == ["Input #0", "Stream mapping:", "frame=3 time=2"]
    assert stderr_lines("\n".join(str(i) for i in range(500)), keep=3) == ["497", "498", "499"]


def test_ages_use_the_given_clock() -> None:
    assert status.age("2026-11-26T11:59:18+00:00", NOW) == "42s"
    assert status.age("2026-11-26T11:00:00+00:00", NOW) == "1h"
    assert status.age("2026-11-24T11:00:00+00:00", NOW) == "2d"
    assert status.age("2026-11-26T12:00:30+00:00", NOW) == "0s"  # clocks drift
    assert status.age(None, NOW) == "-"
    assert status.age("garbage", NOW) == "-"


def test_progress_text() -> None:
    assert status.progress_text(None) == "-"
    assert status.progress_text({"percent": 43.46, "speed": 1.9, "time": 1.0}) == "43.5% 1.9x"
    assert status.progress_text({"time": 3725.4, "speed": 0.5}) == "01:02:05 0.5x"
    assert status.progress_text({"frame": 3}) == "-"


def test_worker_cells() -> None:
    worker = {
        "worker_id": "n1",
        "state": "online",
        "drained": True,
        "slots": 4,
        "slots_used": 1,
        "labels": ["gpu"],
        "binaries": ["ffmpeg", "ffprobe"],
        "binary_versions": {
            "ffmpeg": {"version": "ffmpeg version 5.1.8-0+deb12u1 Copyright (c)"},
            "ffprobe": {"version": "weird"},
        },
        "path_variables": [],
        "version": "0.1.0",
        "last_seen_at": "2026-11-26T11:59:58+00:00",
    }
    assert status.worker_row(worker, NOW) == [
        "n1",
        "online, drained",
        "1/4",
        "gpu",
        "0.1.0",
        "ffmpeg 5.1.8-0+deb12u1, ffprobe weird",
        "-",
        "2s",
    ]


def test_text_table_and_render() -> None:
    assert status.text_table(["a", "bb"], []) == "(none)"
    assert status.text_table(["a", "bb"], [["xyz", "1"]]) == "A    BB\nxyz  1"
    summary = {"now": NOW.isoformat(), "jobs_by_state": {"running": 1}, "slots": {"used": 1}}
    text = status.render(summary, [], [], 120)
    assert text.startswith("workers: none  |  slots 1/0  |  jobs: running 1  |  listed 0 of 120")
    assert "JOBS (newest 0 of 120)" in text


def test_split_networks() -> None:
    assert split_networks(" 10.0.0.0/8,192.168.1.7  fd00::/8 ,") == [
        "10.0.0.0/8",
        "192.168.1.7",
        "fd00::/8",
    ]
    assert split_networks("") == []


def test_summary_says_which_jobs_are_listed() -> None:
    assert status.summary_text({}, 7).endswith("|  listed 7")
    assert status.summary_text({}, 7, 0, 7).endswith("|  listed 7")
    assert status.summary_text({}, 450, 200, 200).endswith("|  listed 201-400 of 450")
