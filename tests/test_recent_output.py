"""A stream's reader in the process that stored its output gets the newest batch from
memory; every other read, and the one that may carry the final status, reads the
database (coordinator/recent_output.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from flask import Flask
from sqlalchemy import event

from coordinator.recent_output import RecentOutput
from dffmpeg.wire import CONTENT_TYPE_FRAMES, Frame, FrameKind, decode_frames, encode_frames
from tests.conftest import Identities
from tests.test_scheduling import poll, register, submit

pytestmark = pytest.mark.timeout(30)


def out(seq: int, data: bytes = b"x") -> Frame:
    return Frame(FrameKind.STDOUT, seq, data)


def test_only_the_frames_that_follow_the_readers_last_one() -> None:
    recent = RecentOutput()
    recent.stored("j", 1, [out(1), out(2)])
    recent.stored("j", 1, [out(3)])
    assert [f.seq for f in recent.after("j", 1, 0, 1 << 20) or []] == [1, 2, 3]
    assert [f.seq for f in recent.after("j", 1, 2, 1 << 20) or []] == [3]
    assert recent.after("j", 1, 3, 1 << 20) is None  # nothing newer held: the database
    assert recent.after("j", 2, 0, 1 << 20) is None  # another run of the job
    assert recent.after("k", 1, 0, 1 << 20) is None
    # A gap (frames stored by another process in between): the old run no longer leads.
    recent.stored("j", 1, [out(6)])
    assert recent.after("j", 1, 3, 1 << 20) is None
    assert [f.seq for f in recent.after("j", 1, 5, 1 << 20) or []] == [6]
    recent.forget("j")
    assert recent.after("j", 1, 5, 1 << 20) is None and recent.size == 0


def test_bounded_per_run_in_all_and_in_runs() -> None:
    recent = RecentOutput(run_bytes=10, max_bytes=25, max_runs=3)
    recent.stored("a", 1, [out(i, b"12345") for i in range(1, 5)])  # 20 bytes: 2 kept
    assert recent.after("a", 1, 0, 100) is None  # frame 1 was dropped
    assert [f.seq for f in recent.after("a", 1, 2, 100) or []] == [3, 4]
    assert [f.seq for f in recent.after("a", 1, 2, 1) or []] == [3]  # the read's budget
    recent.stored("b", 1, [out(1, b"1234567890")])
    recent.stored("c", 1, [out(1, b"1234567890")])  # 30 bytes in all: "a" goes
    assert recent.after("a", 1, 2, 100) is None and recent.size == 20
    recent.stored("d", 1, [out(1)])
    recent.stored("e", 1, [out(1)])  # a fourth run: the oldest goes
    assert recent.after("b", 1, 0, 100) is None
    assert recent.after("e", 1, 0, 100) is not None


@contextmanager
def output_reads(app: Flask) -> Iterator[list[str]]:
    """The statements that read the output table while the block runs."""
    from coordinator.db import db

    seen: list[str] = []
    with app.app_context():
        engine = db.engine

    def before(_conn, _cursor, statement: str, *_args: object) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("SELECT") and "FROM output_chunks" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_a_reader_gets_the_batch_just_stored_without_reading_it_back(
    app: Flask, api: Identities
) -> None:
    register(api.worker, slots=1)
    job = submit(api.client)
    assert poll(api.worker) == [job]
    batches = [[out(1, b"a" * 1000), out(2, b"b")], [out(3, b"c" * 5000)]]
    read: list[Frame] = []
    for batch in batches:
        reply = api.worker.post(
            f"/api/v1/jobs/{job}/output",
            data=encode_frames(batch),
            content_type=CONTENT_TYPE_FRAMES,
        )
        assert reply.status_code == 200 and reply.get_json()["added"] == len(batch)
        with output_reads(app) as selects:
            answer = api.client.get(f"/api/v1/jobs/{job}/output?after={len(read)}&wait=0")
        assert answer.status_code == 200
        read += list(decode_frames(answer.data))
        assert selects == []  # from memory
    assert read == [f for batch in batches for f in batch]
    # The same frames sent again (a retry) add nothing, and hand out nothing twice.
    api.worker.post(
        f"/api/v1/jobs/{job}/output",
        data=encode_frames(batches[1]),
        content_type=CONTENT_TYPE_FRAMES,
    )
    # A read from the start gets the same frames (all still held, within bounds).
    with output_reads(app) as selects:
        again = list(
            decode_frames(api.client.get(f"/api/v1/jobs/{job}/output?after=0&wait=0").data)
        )
    assert again == read and selects == []
    # The end: the read that carries the final status reads the database.
    reply = api.worker.post(f"/api/v1/jobs/{job}/finish", json_body={"exit_code": 0})
    assert reply.status_code == 200
    with output_reads(app) as selects:
        last = list(decode_frames(api.client.get(f"/api/v1/jobs/{job}/output?after=3&wait=0").data))
    assert selects and [f.kind for f in last] == [FrameKind.STATUS]
    assert app.extensions["dffmpeg.recent_output"].size == 0
