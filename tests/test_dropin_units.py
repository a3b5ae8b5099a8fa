"""Drop-in pieces that need no cluster: probe recognition, env filtering, fallback paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from client.fastprobe import ProbeCall, recognise
from client.proxy import fallback_binary
from dffmpeg.config import ClientConfig
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


def test_stdin_known_empty_only_for_dev_null_or_closed(tmp_path: Path) -> None:
    """What the drop-in sends as EOF with the submission (client/job.py)."""
    from client.job import stdin_at_eof

    with open(os.devnull, "rb") as null:
        assert stdin_at_eof(null.fileno())
    read_end, write_end = os.pipe()
    try:
        assert not stdin_at_eof(read_end)  # a pipe is read and relayed as it comes
    finally:
        os.close(read_end)
        os.close(write_end)
    assert stdin_at_eof(read_end)  # closed now: the relay would read EOF at once
    regular = tmp_path / "empty"
    regular.write_bytes(b"")
    with regular.open("rb") as handle:
        assert not stdin_at_eof(handle.fileno())
