"""One job end to end: real coordinator, real worker, real ffmpeg, through the drop-in.

The client and the worker see the same media under different roots, so every test also
exercises path mapping in both directions.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from dffmpeg.exitcodes import ExitCode
from tests.conftest import Cluster
from tests.helpers import BIN, free_port, process_env


def probe_json(cluster: Cluster, path: Path, remote: bool) -> subprocess.CompletedProcess[bytes]:
    args = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)]
    if remote:
        return cluster.run("ffprobe", *args)
    return subprocess.run(["ffprobe", *args], capture_output=True, timeout=60)


def test_ffprobe_json_is_byte_identical(cluster: Cluster) -> None:
    clip = cluster.client_media / "clip.mp4"
    remote = probe_json(cluster, clip, remote=True)
    local = probe_json(cluster, clip, remote=False)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout
    assert json.loads(remote.stdout)["format"]["filename"] == str(clip)


def duration(path: Path) -> float:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return float(out.stdout)


def test_transcode_to_h264_matches_local(cluster: Cluster) -> None:
    clip = cluster.client_media / "clip.mp4"
    remote_out = cluster.client_media / "remote-h264.mkv"
    local_out = cluster.client_media / "local-h264.mkv"
    args = [
        "-v",
        "error",
        "-y",
        "-i",
        str(clip),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-c:a",
        "copy",
    ]
    remote = cluster.run("ffmpeg", *args, str(remote_out))
    assert remote.returncode == 0, remote.stderr
    subprocess.run(["ffmpeg", *args, str(local_out)], check=True, capture_output=True, timeout=60)
    assert abs(duration(remote_out) - duration(local_out)) < 0.05
    codec = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=codec_name",
            "-of",
            "csv=p=0",
            str(remote_out),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert codec.stdout.strip() == b"h264"


def test_mpegts_on_stdout_is_identical(cluster: Cluster) -> None:
    clip = cluster.client_media / "clip.mp4"
    args = ["-v", "error", "-i", str(clip), "-c", "copy", "-f", "mpegts", "-"]
    remote = cluster.run("ffmpeg", *args)
    local = subprocess.run(["ffmpeg", *args], capture_output=True, timeout=60)
    assert remote.returncode == 0, remote.stderr
    assert len(remote.stdout) > 20_000
    assert hashlib.sha256(remote.stdout).digest() == hashlib.sha256(local.stdout).digest()


def test_carriage_return_progress_flood_is_relayed_whole(cluster: Cluster) -> None:
    # About 200,000 tiny frames with progress after every one: tens of thousands of
    # "\r"-terminated lines and no newline between them.
    args = [
        "-hide_banner",
        "-nostdin",
        "-stats_period",
        "0.0001",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=32x32:rate=1000:duration=300",
        "-f",
        "null",
        "-",
    ]
    remote = cluster.run("ffmpeg", *args, timeout=120)
    assert remote.returncode == 0
    lines = remote.stderr.split(b"\r")
    assert len(lines) > 10_000, len(lines)
    # Every progress line arrived whole and in order: frame counts never go backwards.
    progress = [line for line in lines if line.startswith(b"frame=")]
    assert len(progress) > 10_000
    counts = [int(line[6:].split()[0]) for line in progress]
    assert counts == sorted(counts)
    assert counts[-1] == 300_000


def test_failing_ffmpeg_exit_code_arrives_unchanged(cluster: Cluster) -> None:
    missing = cluster.client_media / "missing.mkv"
    remote = cluster.run("ffmpeg", "-hide_banner", "-i", str(missing))
    local = subprocess.run(
        ["ffmpeg", "-hide_banner", "-i", str(missing)], capture_output=True, timeout=60
    )
    assert local.returncode != 0
    assert remote.returncode == local.returncode
    assert remote.stderr == local.stderr  # the client's own path is shown, not the worker's
    assert remote.stdout == b""


def test_working_directory_is_mapped(cluster: Cluster) -> None:
    remote = subprocess.run(
        [
            cluster.dropin("ffprobe"),
            "-v",
            "error",
            "-show_entries",
            "format=nb_streams",
            "-of",
            "csv=p=0",
            "clip.mp4",
        ],
        cwd=cluster.client_media,
        env={**cluster.env(), "PWD": str(cluster.client_media)},
        capture_output=True,
        timeout=60,
    )
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == b"2\n"


def test_client_cli_submit(cluster: Cluster) -> None:
    clip = cluster.client_media / "clip.mp4"
    out = subprocess.run(
        [
            str(BIN / "dffmpeg-client"),
            "--config",
            str(cluster.client_config),
            "submit",
            "--binary",
            "ffprobe",
            "--",
            "-v",
            "error",
            "-show_entries",
            "format=nb_streams",
            "-of",
            "csv=p=0",
            str(clip),
        ],
        capture_output=True,
        timeout=60,
        env=process_env(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"2\n"


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ("coordinator_url", ExitCode.COORDINATOR_UNREACHABLE, "dffmpeg: coordinator unreachable"),
        ("hmac_key", ExitCode.AUTH_REFUSED, "dffmpeg: coordinator refused"),
    ],
)
def test_cluster_failure_is_one_line_and_a_documented_code(
    tmp_path: Path, cluster: Cluster, change: str, code: ExitCode, message: str
) -> None:
    config = yaml.safe_load(cluster.client_config.read_text())
    config[change] = (
        f"http://127.0.0.1:{free_port()}" if change == "coordinator_url" else "not-the-key"
    )
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [cluster.dropin("ffprobe"), "-version"],
        capture_output=True,
        timeout=30,
        env={**os.environ, "DFFMPEG_CLIENT_CONFIG": str(path)},
    )
    assert out.returncode == code
    assert out.stdout == b""
    lines = out.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)
