"""The console's plain-data parts: the filter language, cells, printable text, and the
shared status formatting."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from client import status
from console import cells, model
from console.filters import JobFilter, toggle, words_of
from console.model import stderr_lines
from console.screens.dialogs import parse_slots, split_networks
from dffmpeg.text import printable

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def test_filter_words_become_the_coordinators_query() -> None:
    parsed = JobFilter.parse(
        'state:run,pend user:me worker:n1 bin:ffprobe -bin:ffmpeg !state:c "Big Buck" x264 -old',
        me="ops",
    )
    assert parsed.params() == [
        ("binary", "ffprobe"),
        ("requester", "ops"),
        ("state", "running,pending"),
        ("worker", "n1"),
        ("not_binary", "ffmpeg"),
        ("not_state", "canceling,completed,canceled"),
        ("search", "Big Buck"),
        ("search", "x264"),
        ("not_search", "old"),
    ]
    assert parsed.problems == []


def test_views_and_what_cannot_mean_anything() -> None:
    views = JobFilter.parse("is:active is:failed is:mine", me="ops")
    assert views.include == {
        "state": ["pending", "assigned", "running", "canceling"],
        "requester": ["ops"],
    }
    assert views.failed is True
    assert JobFilter.parse("-is:failed").failed is False
    assert JobFilter.parse("-is:active").exclude["state"][0] == "pending"
    # Half typed: nothing yet, no problem; nonsense: named, and left out of the query.
    assert JobFilter.parse("state:").params() == [] and JobFilter.parse("state:").problems == []
    bad = JobFilter.parse("state:xyz is:nothing user:ann")
    assert bad.params() == [("requester", "ann")]
    assert bad.problems == [
        "no state starts with 'xyz'",
        "no view is:nothing (there are active, failed, mine)",
    ]
    # A lone "-" is a word, an unknown key is a search.
    assert JobFilter.parse("- foo:bar").search == ["-", "foo:bar"]


def test_plain_words_match_workers_and_users() -> None:
    parsed = JobFilter.parse("gpu -night state:running")
    assert parsed.matches(["node1", "gpu,fast"])
    assert not parsed.matches(["node2", "gpu,night"])
    assert JobFilter.parse("").matches(["anything"])


def test_quotes_and_quick_view_toggles() -> None:
    assert words_of('a "b c') == ["a", "b c"]  # a quote still open while typing
    assert toggle("user:bob", "is:active") == "user:bob is:active"
    assert toggle("user:bob is:active", "is:active") == "user:bob"
    assert toggle("worker:a x", "worker:b") == "x worker:b"  # one worker at a time
    assert toggle('"Big Buck" is:failed', "is:failed") == "'Big Buck'"


def test_printable_makes_controls_visible() -> None:
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("t\x1b]0;title\x07") == "t\\x1b]0;title\\x07"
    assert printable("x\ny\tz\r") == "x\\x0ay\\x09z\\x0d"
    assert printable("\x9b31m") == "\\x9b31m"  # C1 CSI
    assert printable("file\u202egnp.exe") == "file\\u202egnp.exe"
    assert printable("Élan [/] 東京") == "Élan [/] 東京"


def test_stderr_lines_keep_the_last_version_of_rewritten_lines() -> None:
    text = "Input #0\r\nStream mapping:\nframe=1 time=0\rframe=2 time=1\rframe=3 time=2\r\n\n"
    assert stderr_lines(text) == ["Input #0", "Stream mapping:", "frame=3 time=2"]
    assert stderr_lines("\n".join(str(i) for i in range(500)), keep=3) == ["497", "498", "499"]
    assert stderr_lines("bad \x1b[2J\n") == ["bad \\x1b[2J"]


def job(**extra: object) -> dict[str, object]:
    return {
        "job_id": "abc" * 11,
        "state": "running",
        "binary": "ffmpeg",
        "requester": "jf",
        "input_name": "$Media/films/A Very Long Film Title Indeed (2001) Remastered.mkv",
        "output_name": None,
        "created_at": "2026-11-26T11:58:00+00:00",
        "started_at": "2026-11-26T11:59:00+00:00",
        "progress": {"time": 30.0, "duration": 130.0, "percent": 23.1, "speed": 0.5, "fps": 12.0},
        **extra,
    }


def cell_of(row: cells.Row, name: str) -> str:
    return row.cells[cells.JOB_COLUMNS.index(name)].plain


def test_job_cells() -> None:
    row = cells.job_row(job(), NOW)
    assert cell_of(row, "input") == "A Very Long Film Title Indeed (…"
    assert cell_of(row, "output") == "-"
    assert cell_of(row, "elapsed") == "00:01:00"
    assert cell_of(row, "eta") == "00:03:20"  # 100 s of media at 0.5x
    assert cells.behind(job()) and not cells.behind(job(state="completed"))
    assert not cells.behind(job(progress={"speed": 0.99}))  # -re: real time, not behind
    exited = cells.job_row(job(state="completed", exit_code=1), NOW)
    assert cell_of(exited, "state") == "exit 1" and cell_of(exited, "eta") == "-"
    assert exited.sort[1] == "exit"
    assert cell_of(cells.job_row(job(state="completed", exit_code=0), NOW), "state") == "completed"


def test_worker_cells() -> None:
    worker = {
        "worker_id": "n1",
        "hostname": "n1.lan",
        "state": "online",
        "drained": True,
        "slots": 4,
        "slots_used": 1,
        "overrides": {"slots": 4},
        "labels": ["gpu"],
        "binaries": ["ffmpeg", "ffprobe"],
        "binary_versions": {
            "ffmpeg": {"version": "ffmpeg version 5.1.8-0+deb12u1 Copyright (c)"},
            "ffprobe": {"version": "weird"},
        },
        "path_variables": [],
        "version": "0.1.0",
        "last_seen_at": "2026-11-26T11:58:00+00:00",
        "lease_expires_at": "2026-11-26T11:59:00+00:00",
        "load": {
            "cpu_percent": 81.0,
            "memory_percent": 96.0,
            "at": "2026-11-26T11:55:00+00:00",
            "gpus": [{"utilization": 38, "encoder": 61, "encoder_sessions": 2}, {"utilization": 0}],
        },
    }
    row = dict(zip(cells.WORKER_COLUMNS, cells.worker_row(worker, NOW).cells, strict=True))
    assert [row[c].plain for c in ("worker", "host", "state", "slots")] == [
        "n1",
        "n1.lan",
        "online, drained",
        "1/4*",
    ]
    assert row["cpu"].plain == "81% 5m" and "yellow" in str(row["cpu"].style)  # an old sample
    assert "red" in str(row["mem"].style)
    assert row["gpu"].plain == "38% enc 61% 2 sess | 0%"
    assert row["binaries"].plain == "ffmpeg 5.1.8-0+deb12u1, ffprobe weird"
    assert row["seen"].plain == "lost 2m"  # its lease ran out a minute ago


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


def test_text_table_and_render() -> None:
    assert status.text_table(["a", "bb"], []) == "(none)"
    assert status.text_table(["a", "bb"], [["xyz", "1"]]) == "A    BB\nxyz  1"
    summary = {"now": NOW.isoformat(), "jobs_by_state": {"running": 1}, "slots": {"used": 1}}
    text = status.render(summary, [], [], 120)
    assert text.startswith("workers: none  |  slots 1/0  |  jobs: running 1  |  listed 0 of 120")
    assert "JOBS (newest 0 of 120)" in text


def test_dialog_parsing() -> None:
    assert split_networks(" 10.0.0.0/8,192.168.1.7  fd00::/8 ,") == [
        "10.0.0.0/8",
        "192.168.1.7",
        "fd00::/8",
    ]
    assert split_networks("") == []
    assert parse_slots(" 6 ") == 6 and parse_slots("") is None


def test_summary_and_the_last_day() -> None:
    assert model.summary_text({}, 7).endswith("|  listed 7")
    assert model.summary_text({}, 450, 200, 200).endswith("|  listed 201-400 of 450")
    day: dict[str, Any] = {"last_day": {"finished": 10, "failed": 2}}
    assert model.last_day_text(day) == "day: 10 done, 2 failed, - fallbacks, - cluster exits"
    day["dropin_last_day"] = {"local_fallbacks": 3, "cluster_exits": 0, "by_client": []}
    assert model.last_day_text(day) == "day: 10 done, 2 failed, 3 fallbacks, 0 cluster exits"
    assert model.series({"series": {"finished": [1, None, 3]}}, "finished") == [1.0, 0.0, 3.0]
    assert model.seconds_text(65) == "65s" and model.seconds_text(3700) == "61m 40s"
