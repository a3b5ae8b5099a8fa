"""Drop-in pieces that need no cluster: probe recognition, env filtering, fallback paths."""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

import pytest

from client.early_stdin import LIMIT, EarlyStdin, put_back, take_ready
from client.fastprobe import ProbeCall, recognise
from client.proxy import fallback_binary
from dffmpeg.config import ClientConfig
from tests.helpers import wait_until
from worker.guard import forwarded_env


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-version"], ProbeCall("-version", banner=True)),
        (["-hide_banner", "-encoders"], ProbeCall("-encoders", banner=False)),
        (["-encoders", "-hide_banner"], ProbeCall("-encoders", banner=False)),
        (["-v", "error", "-decoders"], ProbeCall("-decoders", banner=False)),
        (["-loglevel", "info", "-filters"], ProbeCall("-filters", banner=True)),
        (["-v", "16", "-formats"], ProbeCall("-formats", banner=False)),
        (["-nostdin", "-hwaccels"], ProbeCall("-hwaccels", banner=True)),
        (["-v", "verbose", "-encoders"], None),  # more banner than the capture holds
        (["-v", "repeat+error", "-encoders"], None),
        (["-v", "error", "-v", "quiet", "-encoders"], None),
        (["-encoders", "-decoders"], None),
        (["-h"], None),
        (["-h", "encoder=libx264"], None),
        (["-i", "a.mkv"], None),
        (["-version", "-i", "a.mkv"], None),
        ([], None),
    ],
)
def test_recognise_only_exact_probe_forms(args: list[str], expected: ProbeCall | None) -> None:
    assert recognise(args) == expected


def test_forwarded_env_is_an_allow_list() -> None:
    asked = {
        "TZ": "Europe/Paris",
        "LANG": "C.UTF-8",
        "LC_NUMERIC": "C",
        "AV_LOG_FORCE_NOCOLOR": "1",
        "LD_PRELOAD": "/tmp/evil.so",
        "FFREPORT": "file=/etc/x",
        "FREI0R_PATH": "/tmp",
        "LADSPA_PATH": "/tmp",
        "PATH": "/tmp",
        "PYTHONPATH": "/tmp",
        "HOME": "/tmp",
        "bad name": "x",
        "LANGUAGE": "a\0b",
        "LC_ALL": "x" * 5000,
    }
    assert forwarded_env(asked) == {
        "TZ": "Europe/Paris",
        "LANG": "C.UTF-8",
        "LC_NUMERIC": "C",
        "AV_LOG_FORCE_NOCOLOR": "1",
    }


def _config(fallback: object) -> ClientConfig:
    return ClientConfig.from_dict(
        {
            "client_id": "c",
            "hmac_key": "k",
            "coordinator_url": "http://127.0.0.1:1",
            "local_fallback": fallback,
        }
    )


def test_fallback_binary_forms(tmp_path: object) -> None:
    assert fallback_binary(_config(None), "ffmpeg") is None
    assert fallback_binary(_config("/usr/bin/ffmpeg"), "ffmpeg") == "/usr/bin/ffmpeg"
    assert fallback_binary(_config("/usr/bin/ffmpeg"), "ffprobe") == "/usr/bin/ffprobe"
    assert fallback_binary(_config("/usr/bin"), "ffprobe") == "/usr/bin/ffprobe"
    mapping = {"ffmpeg": "/opt/ff/ffmpeg"}
    assert fallback_binary(_config(mapping), "ffmpeg") == "/opt/ff/ffmpeg"
    assert fallback_binary(_config(mapping), "ffprobe") is None


def test_default_forward_env_is_a_small_safe_list() -> None:
    config = _config(None)
    assert "TZ" in config.forward_env and "LANG" in config.forward_env
    assert not any(name.startswith("LD_") or name == "PATH" for name in config.forward_env)


def test_information_calls_are_recognised() -> None:
    from client.fastprobe import is_information_call

    assert is_information_call(["-hide_banner", "-h", "encoder=libx264"])
    assert is_information_call(["-pix_fmts"])
    assert not is_information_call(["-i", "a.mkv", "-h"])
    assert not is_information_call(["-i", "a.mkv", "-f", "null", "-"])


def test_ready_stdin_is_taken_without_waiting_and_put_back(tmp_path: Path) -> None:
    """A pipe that holds bytes (and ended) is taken at once; an empty open pipe is not
    waited for; ``put_back`` makes the same stdin read everything again, in order."""
    read_end, write_end = os.pipe()
    try:
        assert take_ready(read_end) == EarlyStdin()  # open and empty: no wait, nothing
        os.write(write_end, b"?")
        os.close(write_end)
        write_end = -1
        early = take_ready(read_end)
        assert early == EarlyStdin(b"?", eof=True)
        assert early.frames == 2
        put_back(early, read_end)
        assert os.read(read_end, 10) == b"?"
        assert os.read(read_end, 10) == b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    # A file is rewound, and more than the limit leaves the rest for the relay.
    path = tmp_path / "input"
    path.write_bytes(b"x" * (LIMIT + 10))
    fd = os.open(path, os.O_RDONLY)
    try:
        early = take_ready(fd)
        assert (len(early.data), early.eof) == (LIMIT, False)
        put_back(early, fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
    finally:
        os.close(fd)
    # A pipe still being written (by another process, as a caller's is): what is there
    # now goes, the rest is copied behind it.
    writer = subprocess.Popen(
        ["sh", "-c", "printf head; read _; printf tail"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert writer.stdin is not None and writer.stdout is not None
    try:
        fd = writer.stdout.fileno()
        wait_until(lambda: take_peek(fd), timeout=10)
        early = take_ready(fd)
        assert early == EarlyStdin(b"head", eof=False)
        put_back(early, fd)
        writer.stdin.write(b"\n")
        writer.stdin.close()
        got = b""
        while chunk := os.read(fd, 100):
            got += chunk
        assert got == b"headtail"
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()


def take_peek(fd: int) -> bool:
    readable, _, _ = select.select([fd], [], [], 0)
    return bool(readable)


def test_an_empty_stdin_is_its_eof_alone() -> None:
    """/dev/null (a service's children get it): the EOF goes with the submission."""
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        early = take_ready(fd)
    finally:
        os.close(fd)
    assert early == EarlyStdin(b"", eof=True)
    assert early.frames == 1
    assert take_ready(None) == EarlyStdin()
