"""The drop-in contract: the same command, run locally and through the drop-in, must look
the same to the caller (stdout bytes, produced files, stderr shape, exit code).

Client and worker see the media under different roots (two symlinks to one directory),
so every case also proves that paths are mapped on the way out and back.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from dffmpeg.exitcodes import ExitCode
from tests.conftest import Cluster, start_cluster
from tests.helpers import admin, free_port, wait_until

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def case(cluster: Cluster) -> Path:
    """A fresh directory for one case, under the client's view of the media root."""
    path = cluster.client_media / f"case-{uuid.uuid4().hex[:8]}"
    (path / "local").mkdir(parents=True)
    (path / "remote").mkdir()
    return path


def local(binary: str, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("timeout", 60)
    return subprocess.run([binary, *args], **kwargs)  # type: ignore[call-overload,no-any-return]


def both(
    cluster: Cluster, name: str, args_for: object, **kwargs: object
) -> tuple[subprocess.CompletedProcess[bytes], subprocess.CompletedProcess[bytes]]:
    """Run ``args_for(side)`` locally and through the drop-in; side is local/remote."""
    make = args_for  # a callable: side -> list of arguments
    assert callable(make)
    real = FFMPEG if name == "ffmpeg" else FFPROBE
    loc = local(real, *make("local"), **kwargs)
    rem = cluster.run(name, *make("remote"), **kwargs)
    return loc, rem


_PROGRESS = re.compile(rb"^(frame=|size=|\s*$)")


def stderr_shape(data: bytes) -> list[bytes]:
    """ffmpeg's messages without progress lines and with numbers masked (timing varies)."""
    data = data.replace(b"/remote/", b"/SIDE/").replace(b"/local/", b"/SIDE/")
    lines = re.split(rb"[\r\n]", data)
    return [re.sub(rb"[0-9.]+", b"#", line) for line in lines if not _PROGRESS.match(line)]


def files_in(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def remote_processes(cluster: Cluster, marker: str) -> list[int]:
    """Pids of real ffmpeg processes (the worker's) whose arguments contain ``marker``."""
    found = []
    want = str(cluster.worker_media).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state == b"Z" or cmdline[0] != FFMPEG.encode():
            continue
        joined = b" ".join(cmdline)
        if marker.encode() in joined and want in joined:
            found.append(int(entry))
    return found


def long_hls_args(clip: Path, out: Path) -> list[str]:
    """An HLS transcode paced in real time, long enough to be stopped mid-way."""
    return [
        "-hide_banner",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        str(clip),
        "-t",
        "30",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-sc_threshold",
        "0",
        "-c:a",
        "aac",
        "-f",
        "hls",
        "-hls_time",
        "1",
        "-hls_segment_filename",
        str(out / "h%d.ts"),
        str(out / "h.m3u8"),
    ]


def start(cmd: list[str], cluster: Cluster | None, **kwargs: object) -> subprocess.Popen[bytes]:
    kwargs.setdefault("env", cluster.env() if cluster is not None else None)
    return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )


@contextmanager
def stopped_after(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Kill ``proc`` if the block leaves it running (a failed assertion)."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- streams, files and exit codes --------------------------------------------------------


def test_hls_transcode_into_a_transcode_directory(cluster: Cluster, case: Path) -> None:
    def args(side: str) -> list[str]:
        out = case / side
        return [
            "-v",
            "error",
            "-i",
            str(cluster.client_media / "clip.mp4"),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-c:a",
            "aac",
            "-f",
            "hls",
            "-hls_time",
            "1",
            "-hls_list_size",
            "0",
            "-hls_segment_filename",
            str(out / "h%d.ts"),
            str(out / "h.m3u8"),
        ]

    loc, rem = both(cluster, "ffmpeg", args)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert rem.returncode == 0
    local_files, remote_files = files_in(case / "local"), files_in(case / "remote")
    assert sorted(remote_files) == sorted(local_files)
    assert len([n for n in remote_files if n.endswith(".ts")]) >= 2
    assert remote_files["h.m3u8"] == local_files["h.m3u8"]
    assert remote_files["h.m3u8"].endswith(b"#EXT-X-ENDLIST\n")


def test_q_on_stdin_stops_hls_within_a_second(cluster: Cluster, case: Path) -> None:
    results = {}
    for side in ("local", "remote"):
        out = case / side
        cmd = [
            FFMPEG if side == "local" else cluster.dropin("ffmpeg"),
            *long_hls_args(cluster.client_media / "clip.mp4", out),
        ]
        with start(cmd, cluster if side == "remote" else None) as proc, stopped_after(proc):
            wait_until(lambda out=out: (out / "h1.ts").exists(), timeout=30)  # type: ignore[misc]
            assert proc.stdin is not None
            sent = time.monotonic()
            proc.stdin.write(b"q")
            proc.stdin.flush()
            _, err = proc.communicate(timeout=10)
            results[side] = (proc.returncode, time.monotonic() - sent, err)
    code, elapsed, err = results["remote"]
    assert code == results["local"][0] == 0, err[-500:]
    assert elapsed < 1.0, elapsed
    assert b"[q] command received. Exiting." in err
    playlist = (case / "remote" / "h.m3u8").read_bytes()
    assert playlist.endswith(b"#EXT-X-ENDLIST\n")
    assert (case / "local" / "h.m3u8").read_bytes().endswith(b"#EXT-X-ENDLIST\n")


def test_keys_pass_through_in_real_time(cluster: Cluster, case: Path) -> None:
    """``p`` and ``u`` (pause/resume in media-server builds of ffmpeg) and ``?`` reach the
    process unchanged while it runs; ``?`` makes it print its key help, so we can see it
    arrived mid-run. Stock ffmpeg ignores ``p``/``u`` and then runs to the end."""
    outputs = {}
    for side in ("local", "remote"):
        out = case / side / "out.mkv"
        cmd = [
            FFMPEG if side == "local" else cluster.dropin("ffmpeg"),
            "-hide_banner",
            "-re",
            "-i",
            str(cluster.client_media / "clip.mp4"),
            "-c",
            "copy",
            str(out),
        ]
        with start(cmd, cluster if side == "remote" else None) as proc, stopped_after(proc):
            assert proc.stdin is not None
            time.sleep(0.5)
            for key in (b"p", b"?", b"u"):
                proc.stdin.write(key)
                proc.stdin.flush()
                time.sleep(0.2)
            _, err = proc.communicate(timeout=30)
            outputs[side] = (proc.returncode, err)
    (loc_code, loc_err), (rem_code, rem_err) = outputs["local"], outputs["remote"]
    assert rem_code == loc_code == 0
    assert b"key    function" in rem_err
    assert stderr_shape(rem_err) == stderr_shape(loc_err)
    assert (case / "remote" / "out.mkv").stat().st_size > 10_000


@pytest.mark.parametrize("duration", ["0.04", "500"])
def test_key_written_at_start_then_eof_reaches_a_short_job(cluster: Cluster, duration: str) -> None:
    """Jellyfin's runtime-key check: start ffmpeg on a job of a few tens of milliseconds,
    write ``?``, close stdin, read the key help from stderr. Local ffmpeg finds the byte
    at its first look; through the drop-in it must too, however short the job."""
    args = ["-hide_banner", "-f", "lavfi", "-i", f"nullsrc=s=1x1:d={duration}", "-f", "null", "-"]
    loc, rem = both(cluster, "ffmpeg", lambda _side: args, input=b"?")
    assert loc.returncode == rem.returncode == 0
    assert b"key    function" in loc.stderr
    assert b"key    function" in rem.stderr
    assert stderr_shape(rem.stderr) == stderr_shape(loc.stderr)


@pytest.mark.parametrize("form", ["quoted", "escaped"])
def test_subtitle_burn_in_with_fonts_dir(cluster: Cluster, case: Path, form: str) -> None:
    fonts = case / "fonts"
    fonts.mkdir()
    font = next(Path("/usr/share/fonts").rglob("*.ttf"), None)
    if font is None:
        pytest.skip("no TrueType font under /usr/share/fonts")
    shutil.copy(font, fonts / font.name)
    # quoted: filtergraph separators inside a quoted value; escaped: ':' and "'" escaped
    # for the filter option and again for the graph, in an unquoted value.
    subs = case / ("subs, one [x].ass" if form == "quoted" else "a:b's.ass")
    subs.write_text(
        "[Script Info]\nScriptType: v4.00+\nPlayResX: 320\nPlayResY: 240\n\n"
        "[V4+ Styles]\nFormat: Name, Fontname, Fontsize, PrimaryColour, Alignment\n"
        "Style: Default,DejaVu Sans,28,&H0000FFFF,2\n\n"
        "[Events]\nFormat: Layer, Start, End, Style, Text\n"
        "Dialogue: 0,0:00:00.00,0:00:05.00,Default,Hello dffmpeg\n"
    )

    def args(side: str) -> list[str]:
        return [
            "-v",
            "error",
            "-ss",
            "1",
            "-i",
            str(cluster.client_media / "clip.mp4"),
            "-vf",
            f"subtitles=f='{subs}':fontsdir='{fonts}'"
            if form == "quoted"
            else "subtitles=f="
            + str(subs).replace(":", r"\\\:").replace("'", r"\\\'")
            + f":fontsdir={fonts}",
            "-frames:v",
            "1",
            str(case / side / "frame.png"),
        ]

    loc, rem = both(cluster, "ffmpeg", args)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert rem.returncode == 0, rem.stderr
    burned = (case / "remote" / "frame.png").read_bytes()
    assert burned == (case / "local" / "frame.png").read_bytes()
    plain = local(
        FFMPEG,
        "-v",
        "error",
        "-ss",
        "1",
        "-i",
        str(cluster.client_media / "clip.mp4"),
        "-frames:v",
        "1",
        "-f",
        "image2pipe",
        "-c:v",
        "png",
        "-",
    )
    assert plain.stdout != burned  # the subtitle really was drawn


def test_attachment_dump_into_working_directory(cluster: Cluster, case: Path) -> None:
    font = next(Path("/usr/share/fonts").rglob("*.ttf"), None)
    if font is None:
        pytest.skip("no TrueType font under /usr/share/fonts")
    mkv = case / "with-font.mkv"
    made = local(
        FFMPEG,
        "-v",
        "error",
        "-i",
        str(cluster.client_media / "clip.mp4"),
        "-c",
        "copy",
        "-attach",
        str(font),
        "-metadata:s:t",
        "mimetype=application/x-truetype-font",
        str(mkv),
    )
    assert made.returncode == 0, made.stderr
    args = [
        "-hide_banner",
        "-dump_attachment:t",
        "",
        "-i",
        f"file:{mkv}",
        "-t",
        "0",
        "-f",
        "null",
        "null",
    ]
    loc = local(FFMPEG, *args, cwd=case / "local")
    rem = subprocess.run(
        [cluster.dropin("ffmpeg"), *args],
        cwd=case / "remote",
        env={**cluster.env(), "PWD": str(case / "remote")},
        capture_output=True,
        timeout=60,
    )
    assert rem.returncode == loc.returncode == 0, rem.stderr
    assert files_in(case / "remote") == files_in(case / "local")
    assert (case / "remote" / font.name).read_bytes() == font.read_bytes()
    assert stderr_shape(rem.stderr) == stderr_shape(loc.stderr)


def test_ffprobe_json(cluster: Cluster) -> None:
    clip = str(cluster.client_media / "clip.mp4")
    args = [
        "-v",
        "quiet",
        "-print_format",
        "json",
        "-show_format",
        "-show_streams",
        "-show_chapters",
        clip,
    ]
    loc, rem = both(cluster, "ffprobe", lambda _side: args)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert clip.encode() in rem.stdout  # the caller's own path, not the worker's


def test_ffprobe_keyframes_csv_on_stdout(cluster: Cluster) -> None:
    clip = str(cluster.client_media / "clip.mp4")
    args = [
        "-loglevel",
        "error",
        "-skip_frame",
        "nokey",
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time,flags",
        "-of",
        "csv=print_section=0",
        clip,
    ]
    loc, rem = both(cluster, "ffprobe", lambda _side: args)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert rem.stdout.count(b"K") >= 1


def test_jpeg_frame_extraction_to_a_file(cluster: Cluster, case: Path) -> None:
    def args(side: str) -> list[str]:
        return [
            "-v",
            "error",
            "-ss",
            "1",
            "-i",
            str(cluster.client_media / "clip.mp4"),
            "-frames:v",
            "1",
            "-q:v",
            "2",
            "-f",
            "image2",
            str(case / side / "t.jpg"),
        ]

    loc, rem = both(cluster, "ffmpeg", args)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    jpeg = (case / "remote" / "t.jpg").read_bytes()
    assert jpeg[:2] == b"\xff\xd8"
    assert jpeg == (case / "local" / "t.jpg").read_bytes()


def test_binary_stream_on_stdout(cluster: Cluster) -> None:
    args = [
        "-v",
        "error",
        "-i",
        str(cluster.client_media / "clip.mp4"),
        "-vn",
        "-ac",
        "1",
        "-ar",
        "11025",
        "-f",
        "s16le",
        "-",
    ]
    loc, rem = both(cluster, "ffmpeg", lambda _side: args)
    assert (rem.returncode, rem.stderr) == (loc.returncode, loc.stderr)
    assert len(rem.stdout) > 40_000
    assert rem.stdout == loc.stdout


def test_pipe_input_from_stdin(cluster: Cluster) -> None:
    ts = local(
        FFMPEG,
        "-v",
        "error",
        "-i",
        str(cluster.client_media / "clip.mp4"),
        "-c",
        "copy",
        "-f",
        "mpegts",
        "-",
    ).stdout
    assert len(ts) > 30_000
    args = ["-v", "error", "-i", "pipe:0", "-map", "0", "-c", "copy", "-f", "framemd5", "-"]
    loc, rem = both(cluster, "ffmpeg", lambda _side: args, input=ts)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert rem.stdout.count(b"\n") > 100


def test_empty_stdin_reaches_pipe_input(cluster: Cluster) -> None:
    """stdin at /dev/null: the drop-in sends its EOF with the submission (no input
    request); ffmpeg reading ``pipe:0`` sees the end of its input as locally."""
    args = ["-hide_banner", "-f", "s16le", "-i", "pipe:0", "-f", "null", "-"]
    loc, rem = both(cluster, "ffmpeg", lambda _side: args, stdin=subprocess.DEVNULL)
    assert (rem.returncode, rem.stdout) == (loc.returncode, loc.stdout)
    assert stderr_shape(rem.stderr) == stderr_shape(loc.stderr)


def test_failing_command_exit_code_and_stderr(cluster: Cluster) -> None:
    args = [
        "-hide_banner",
        "-i",
        str(cluster.client_media / "clip.mp4"),
        "-no_such_option",
        "1",
        "-f",
        "null",
        "-",
    ]
    loc, rem = both(cluster, "ffmpeg", lambda _side: args)
    assert loc.returncode != 0
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)


def test_environment_allow_list_is_forwarded(cluster: Cluster) -> None:
    args = ["-hide_banner", "-i", str(cluster.client_media / "missing.mkv")]
    env = {"AV_LOG_FORCE_COLOR": "1"}
    loc = local(FFMPEG, *args, env={**os.environ, **env})
    rem = subprocess.run(
        [cluster.dropin("ffmpeg"), *args], env=cluster.env(**env), capture_output=True, timeout=60
    )
    assert b"\x1b[" in loc.stderr  # colour forced: the variable changed what ffmpeg printed
    assert (rem.returncode, rem.stderr) == (loc.returncode, loc.stderr)


def test_path_outside_mapped_roots_is_refused(cluster: Cluster) -> None:
    rem = cluster.run("ffprobe", "-v", "error", "-show_format", "/etc/hostname")
    assert rem.returncode == ExitCode.JOB_REJECTED
    assert rem.stdout == b""
    lines = rem.stderr.decode().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dffmpeg: ") and "outside every mapped root" in lines[0]


# -- fast probes --------------------------------------------------------------------------


def _job_count(cluster: Cluster) -> int:
    """Jobs the drop-in's identity has submitted (through the API: no process to start)."""
    from client.api import Api
    from dffmpeg.config import load_client

    api = Api.from_config(load_client(str(cluster.client_config)))
    try:
        return len(api.call("GET", "/jobs", params={"limit": 1000})["jobs"])
    finally:
        api.close()


@pytest.mark.parametrize(
    "args",
    [
        ["-version"],
        ["-encoders"],
        ["-hide_banner", "-encoders"],
        ["-v", "error", "-decoders"],
        ["-loglevel", "quiet", "-filters"],
        ["-hwaccels"],
        ["-hide_banner", "-hwaccels"],  # ffprobe has no -hwaccels: fails like the binary
        ["-hide_banner", "-formats"],
    ],
)
@pytest.mark.parametrize("name", ["ffmpeg", "ffprobe"])
def test_fast_probes_are_byte_identical_and_run_no_job(
    cluster: Cluster, name: str, args: list[str]
) -> None:
    before = _job_count(cluster)
    loc, rem = both(cluster, name, lambda _side: args)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert rem.stdout or rem.stderr
    # Answered from the capture unless it failed and the banner is hidden (then a job).
    expected_jobs = 1 if loc.returncode != 0 and "-hide_banner" in args else 0
    assert _job_count(cluster) == before + expected_jobs


def test_other_information_forms_run_as_jobs(cluster: Cluster) -> None:
    before = _job_count(cluster)
    loc, rem = both(cluster, "ffmpeg", lambda _side: ["-hide_banner", "-h", "encoder=mjpeg"])
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert b"mjpeg" in rem.stdout
    assert _job_count(cluster) == before + 1


# -- signals ------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_to_dropin_stops_remote_process(
    cluster: Cluster, case: Path, sig: signal.Signals
) -> None:
    codes = {}
    for side in ("local", "remote"):
        out = case / side
        cmd = [
            FFMPEG if side == "local" else cluster.dropin("ffmpeg"),
            *long_hls_args(cluster.client_media / "clip.mp4", out),
        ]
        with start(cmd, cluster if side == "remote" else None) as proc, stopped_after(proc):
            if side == "remote":
                pids = wait_until(lambda: remote_processes(cluster, str(case.name)), timeout=20)
            wait_until(lambda out=out: (out / "h0.ts").exists(), timeout=30)  # type: ignore[misc]
            proc.send_signal(sig)
            sent = time.monotonic()
            proc.communicate(timeout=10)
            codes[side] = proc.returncode
            if side == "remote":
                wait_until(lambda: not remote_processes(cluster, str(case.name)), timeout=2)
                assert time.monotonic() - sent < 2.0
                assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert codes["remote"] == codes["local"]


@pytest.fixture(scope="module")
def short_lease_cluster(
    tmp_path_factory: pytest.TempPathFactory, media_dir: Path
) -> Iterator[Cluster]:
    yield from start_cluster(
        tmp_path_factory.mktemp("lease"), media_dir, coordinator_extra={"client_lease_seconds": 3}
    )


def test_sigkilled_dropin_remote_process_stops_within_lease(short_lease_cluster: Cluster) -> None:
    cluster = short_lease_cluster
    out = cluster.client_media / f"case-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    cmd = [cluster.dropin("ffmpeg"), *long_hls_args(cluster.client_media / "clip.mp4", out)]
    with start(cmd, cluster) as proc, stopped_after(proc):
        wait_until(lambda: remote_processes(cluster, out.name), timeout=20)
        wait_until(lambda: (out / "h0.ts").exists(), timeout=30)
        # Still running while the drop-in lives, well past one lease.
        time.sleep(4)
        assert remote_processes(cluster, out.name)
        proc.kill()
        killed = time.monotonic()
        proc.wait()
        # The lease (3 s) runs out, the janitor (every 0.5 s) cancels, the worker stops it.
        wait_until(lambda: not remote_processes(cluster, out.name), timeout=10)
        assert time.monotonic() - killed < 3 + 3


def test_reader_closing_stdout_ends_remote_like_local(cluster: Cluster, case: Path) -> None:
    """A caller that stops reading stdout: a local ffmpeg's next write fails (EPIPE) and it
    exits with its error code; the remote one must see the same, not run on forever."""
    args = ["-hide_banner", "-re", "-stream_loop", "-1", "-i",
            str(cluster.client_media / "clip.mp4"), "-c", "copy", "-f", "mpegts", "-"]  # fmt: skip
    results = {}
    for side in ("local", "remote"):
        cmd = [FFMPEG if side == "local" else cluster.dropin("ffmpeg"), *args]
        with start(cmd, cluster if side == "remote" else None) as proc, stopped_after(proc):
            assert proc.stdout is not None and proc.stderr is not None
            head = proc.stdout.read(1000)
            assert len(head) == 1000, (side, proc.stderr.read())
            proc.stdout.close()
            closed = time.monotonic()
            err = proc.stderr.read()
            proc.wait(timeout=20)
            results[side] = (proc.returncode, time.monotonic() - closed, err)
    assert results["remote"][0] == results["local"][0] != 0
    assert b"Broken pipe" in results["remote"][2]
    assert results["remote"][1] < 5.0


def test_local_fallback_when_cluster_unreachable(cluster: Cluster, tmp_path: Path) -> None:
    import yaml

    config = yaml.safe_load(cluster.client_config.read_text())
    config["coordinator_url"] = f"http://127.0.0.1:{free_port()}"
    config["local_fallback"] = FFMPEG
    path = tmp_path / "fallback.yaml"
    path.write_text(yaml.safe_dump(config))
    args = ["-v", "error", "-i", str(cluster.client_media / "clip.mp4"), "-c", "copy", "-f",
            "mpegts", "-"]  # fmt: skip
    rem = subprocess.run(
        [cluster.dropin("ffmpeg"), *args],
        env={**cluster.env(), "DFFMPEG_CLIENT_CONFIG": str(path)},
        capture_output=True,
        timeout=60,
    )
    loc = local(FFMPEG, *args)
    assert rem.returncode == loc.returncode == 0
    assert rem.stdout == loc.stdout
    lines = rem.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dffmpeg: coordinator unreachable")
    assert lines[0].endswith(f"; running {FFMPEG} locally")


def _unrunnable(cluster: Cluster, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A root of the caller's that no worker has (a job naming it queues for ever: the
    client waits for a worker), and the environment of a drop-in configured so."""
    import yaml

    other = tmp_path / "elsewhere"
    other.mkdir()
    config = yaml.safe_load(cluster.client_config.read_text())
    config["paths"]["Elsewhere"] = str(other)
    config["wait_for_worker"] = True  # queue instead of failing fast
    path = tmp_path / "client.yaml"
    path.write_text(yaml.safe_dump(config))
    return other, {**cluster.env(), "DFFMPEG_CLIENT_CONFIG": str(path)}


def test_signal_while_queued_cancels_and_dies_at_once(cluster: Cluster, tmp_path: Path) -> None:
    """No worker can take the job (a path variable none of them has): SIGTERM must not
    leave the caller waiting for a process that never started."""
    other, env = _unrunnable(cluster, tmp_path)
    cmd = [cluster.dropin("ffmpeg"), "-i", str(other / "a.mkv"), "-f", "null", "-"]
    with start(cmd, None, env=env) as proc, stopped_after(proc):
        queued = wait_until(lambda: _jobs_in(cluster, "pending"), timeout=20)
        time.sleep(0.5)  # the drop-in is following the job (its signal handlers are set)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
    assert proc.returncode == -signal.SIGTERM
    assert err == b""  # nothing of ours: no message, no traceback from a helper thread
    assert {j["job_id"] for j in queued} <= {j["job_id"] for j in _jobs_in(cluster, "canceled")}


def test_signal_while_the_submission_waits_cancels_and_dies_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The submission waits on the coordinator for the job's first output; a SIGTERM
    then breaks it off, and the drop-in finds its job (the idempotency key) and passes
    the signal on: the queued job is canceled and the caller dies of SIGTERM. (The wait
    is made 30 s here, so that the signal certainly comes during it.)"""
    other, env = _unrunnable(cluster, tmp_path)
    code = (
        "import sys; import client.submit as s; s.SUBMIT_WAIT_SECONDS = 30.0; "
        "from client.proxy import main; sys.argv[0] = 'ffmpeg'; sys.exit(main())"
    )
    cmd = [sys.executable, "-c", code, "-i", str(other / "a.mkv"), "-f", "null", "-"]
    with start(cmd, None, env=env) as proc, stopped_after(proc):
        queued = wait_until(lambda: proc.poll() is not None or _jobs_in(cluster, "pending"), 20)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        signaled = time.monotonic()
        _, err = proc.communicate(timeout=10)
    assert time.monotonic() - signaled < 3
    assert proc.returncode == -signal.SIGTERM
    assert err == b""
    assert {j["job_id"] for j in queued} <= {j["job_id"] for j in _jobs_in(cluster, "canceled")}
    assert len(queued) == 1  # found again, not submitted twice


def _jobs_in(cluster: Cluster, state: str) -> list[Any]:
    jobs: Any = admin(cluster.coordinator_config, "job", "list", "--state", state)
    return list(jobs)


def test_large_pipe_input_is_relayed_whole(cluster: Cluster) -> None:
    """Megabytes on stdin, faster than the network: nothing lost, nothing reordered, and
    the drop-in's memory stays bounded (stdin waits for the network)."""
    raw = ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", "320x240", "-r", "25"]
    frames = local(FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=3:size=320x240",
                   *raw, "-").stdout  # fmt: skip
    assert len(frames) == 75 * 320 * 240 * 3 // 2
    args = ["-v", "error", *raw, "-i", "pipe:0", "-f", "framemd5", "-"]
    loc, rem = both(cluster, "ffmpeg", lambda _side: args, input=frames, timeout=120)
    assert (rem.returncode, rem.stdout, rem.stderr) == (loc.returncode, loc.stdout, loc.stderr)
    assert rem.stdout.count(b"\n0,") == 75


def test_progress_on_stderr_arrives_while_running(cluster: Cluster, case: Path) -> None:
    """``\\r`` progress lines reach the caller as ffmpeg writes them, not at the end."""
    cmd = [cluster.dropin("ffmpeg"), "-hide_banner", "-stats_period", "0.2", "-re", "-i",
           str(cluster.client_media / "clip.mp4"), "-f", "null", "-"]  # fmt: skip
    arrivals: list[tuple[float, bytes]] = []
    with start(cmd, cluster) as proc, stopped_after(proc):
        assert proc.stderr is not None
        while data := os.read(proc.stderr.fileno(), 65536):
            arrivals.append((time.monotonic(), data))
        proc.wait(timeout=30)
    end = arrivals[-1][0]
    progress = [t for t, data in arrivals if b"frame=" in data and b"\r" in data]
    assert progress, arrivals
    assert end - progress[0] > 1.0  # the first progress arrived well before the end
    assert len(progress) >= 4  # and several more separately while it ran


def test_concat_list_naming_the_callers_paths(cluster: Cluster, case: Path) -> None:
    """Jellyfin's album loudness scan: a concat list it wrote, with its own paths (and
    one relative entry), read with ``-f concat -safe 0``: the worker maps a private copy."""
    clip = cluster.client_media / "clip.mp4"
    for side in ("local", "remote"):
        shutil.copy(clip, case / side / "second.mp4")
        (case / side / "list.txt").write_text(
            f"ffconcat version 1.0\nfile '{clip}'\nfile 'second.mp4'\n"
        )

    def args(side: str) -> list[str]:
        return ["-v", "error", "-f", "concat", "-safe", "0", "-i", str(case / side / "list.txt"),
                "-map", "0:a", "-c:a", "pcm_s16le", "-f", "wav", "-"]  # fmt: skip

    loc, rem = both(cluster, "ffmpeg", args)
    assert rem.returncode == loc.returncode == 0, rem.stderr
    assert rem.stdout == loc.stdout and len(loc.stdout) > 100_000
    assert rem.stderr == loc.stderr == b""


def test_concat_protocol_of_files_inside_a_root(cluster: Cluster, case: Path) -> None:
    clip = cluster.client_media / "clip.mp4"
    parts = []
    for n in (1, 2):
        part = case / f"part{n}.ts"
        made = local(FFMPEG, "-v", "error", "-i", str(clip), "-c", "copy", "-f", "mpegts",
                     str(part))  # fmt: skip
        assert made.returncode == 0, made.stderr
        parts.append(str(part))
    args = ["-v", "error", "-i", "concat:" + "|".join(parts), "-map", "0:a", "-c:a",
            "pcm_s16le", "-f", "wav", "-"]  # fmt: skip
    loc, rem = both(cluster, "ffmpeg", lambda side: args)
    assert rem.returncode == loc.returncode == 0, rem.stderr
    assert rem.stdout == loc.stdout and len(loc.stdout) > 100_000
