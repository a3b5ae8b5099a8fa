"""A job's output waits in memory, then on disk, while the coordinator cannot take it
(worker/relay.py, worker/spool.py): in order, nothing lost, files private and removed."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

from dffmpeg.wire import Frame, FrameKind
from worker.relay import FrameSender, OutputBuffer, read_pipe
from worker.spool import SUFFIX, SpoolFile, prepare_directory


def chunks(count: int, size: int = 1000) -> list[tuple[FrameKind, bytes]]:
    kinds = (FrameKind.STDOUT, FrameKind.STDERR)
    return [(kinds[i % 3 == 0], bytes([i % 256]) * size) for i in range(count)]


def test_output_beyond_the_memory_share_goes_to_disk_in_order(tmp_path: Path) -> None:
    directory = prepare_directory(str(tmp_path / "spool"), "w1")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    buffer = OutputBuffer(max_buffered=10_000, spool=lambda: SpoolFile(directory, "w1-job1"))
    buffer.reader_started()
    sent = chunks(200)  # 200 KB, twenty times the memory share
    for kind, data in sent:
        buffer.put(kind, data)  # never blocks: nobody takes anything yet
    files = list(directory.glob(f"*{SUFFIX}"))
    assert [f.name for f in files] == [f"w1-job1{SUFFIX}"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert buffer.spooled_total >= 190_000
    buffer.reader_finished()
    got: list[tuple[FrameKind, bytes]] = []
    while (batch := buffer.take()) is not None:
        got.extend(batch)
    assert got == sent
    # Read empty: the file gave its space back; closing the buffer removes it.
    assert files[0].stat().st_size == 0
    buffer.close()
    assert not files[0].exists()


def test_output_arriving_while_the_spool_drains_keeps_its_place(tmp_path: Path) -> None:
    directory = prepare_directory(str(tmp_path), "w1")
    buffer = OutputBuffer(max_buffered=3000, spool=lambda: SpoolFile(directory, "j"))
    buffer.reader_started()
    sent = chunks(40)
    got: list[tuple[FrameKind, bytes]] = []
    for kind, data in sent[:20]:
        buffer.put(kind, data)
    got.extend(buffer.take() or [])  # memory first
    for kind, data in sent[20:30]:  # still spooling: the spool is not empty yet
        buffer.put(kind, data)
    got.extend(buffer.take() or [])
    for kind, data in sent[30:]:
        buffer.put(kind, data)
    buffer.reader_finished()
    while (batch := buffer.take()) is not None:
        got.extend(batch)
    assert got == sent
    buffer.close()


def test_without_a_spool_a_full_buffer_holds_the_child_back() -> None:
    buffer = OutputBuffer(max_buffered=2000)
    buffer.reader_started()
    buffer.put(FrameKind.STDOUT, b"a" * 1500)
    blocked = threading.Thread(target=buffer.put, args=(FrameKind.STDOUT, b"b" * 1500))
    blocked.start()
    time.sleep(0.3)
    assert blocked.is_alive()  # the reader waits: the child's pipe fills, it waits too
    assert buffer.take() == [(FrameKind.STDOUT, b"a" * 1500)]
    blocked.join(5)
    assert not blocked.is_alive()


def test_leftovers_of_a_previous_run_are_removed(tmp_path: Path) -> None:
    (tmp_path / f"w1-old{SUFFIX}").write_bytes(b"x")
    (tmp_path / f"w2-running{SUFFIX}").write_bytes(b"another worker's")
    (tmp_path / "other.txt").write_bytes(b"keep")
    prepare_directory(str(tmp_path), "w1")
    assert sorted(os.listdir(tmp_path)) == ["other.txt", f"w2-running{SUFFIX}"]


def test_undeliverable_output_is_reported_once_and_drained() -> None:
    buffer = OutputBuffer()
    buffer.reader_started()
    errors: list[Exception] = []
    attempts: list[list[Frame]] = []

    def send(frames: list[Frame]) -> None:
        attempts.append(frames)
        raise TimeoutError("the coordinator is away for longer than its grace")

    sender = FrameSender(buffer, send, errors.append)
    worker = threading.Thread(target=sender.run)
    worker.start()
    for kind, data in chunks(50):
        buffer.put(kind, data)
        time.sleep(0.001)
    buffer.reader_finished()
    worker.join(5)
    assert not worker.is_alive()
    assert len(errors) == 1 and isinstance(sender.error, TimeoutError)
    assert len(attempts) == 1  # nothing was sent after the give-up, all was drained
    assert sender.seq >= 1


def test_a_short_jobs_only_output_is_kept_for_its_finish() -> None:
    """Output written just before the pipes end is not sent on its own: the sender
    keeps it (``final``) for the finish. Output of a pipe that stays open is sent."""
    read, write = os.pipe()
    buffer = OutputBuffer()
    buffer.reader_started()
    sent: list[list[Frame]] = []
    reader = threading.Thread(target=read_pipe, args=(read, FrameKind.STDOUT, buffer))
    reader.start()
    os.write(write, b'{"format": {}}\n')
    os.close(write)  # the process exits right after its output
    reader.join(5)  # (the sender's short wait for the pipes' end is not timed here)
    sender = FrameSender(buffer, sent.append, keep_final=True)
    sender.run()
    assert sent == [] and [f.data for f in sender.final] == [b'{"format": {}}\n']

    read, write = os.pipe()
    buffer = OutputBuffer()
    buffer.reader_started()
    sent = []
    reader = threading.Thread(target=read_pipe, args=(read, FrameKind.STDERR, buffer))
    reader.start()
    sender = FrameSender(buffer, sent.append, keep_final=True)
    running = threading.Thread(target=sender.run)
    running.start()
    os.write(write, b"frame=1\r")
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [f.data for f in sent[0]] == [b"frame=1\r"]  # not held while the pipe is open
    os.write(write, b"done\n")
    os.close(write)
    running.join(5)
    reader.join(5)
    assert [f.data for batch in sent for f in batch] + [f.data for f in sender.final] == [
        b"frame=1\r",
        b"done\n",
    ]
