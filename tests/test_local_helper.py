"""The drop-in's native launcher and its local helper (client/helper.py), on a real cluster.

Every test gives the helper a runtime directory of its own (``XDG_RUNTIME_DIR``), so it
never meets the helper other tests share. Evidence that a call ran in the helper: the
helper's own child process while the call waits on its stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import helper
from tests.conftest import Cluster
from tests.helpers import admin, children_of, wait_until

LAUNCHER = Path(sys.executable).parent / "dffmpeg-proxy"
# Waits on stdin until the test closes it: the call is alive while the test looks.
READS_STDIN = ["-v", "error", "-f", "s16le", "-ar", "8000", "-ac", "1", "-i", "pipe:0"]
READS_STDIN += ["-f", "null", "-"]

pytestmark = pytest.mark.skipif(
    LAUNCHER.read_bytes()[:2] == b"#!", reason="the native launcher is not installed"
)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    yield path
    # A helper a call started there (the launcher's fallback does) ends with the test.
    for lock in path.glob("dffmpeg/*.lock"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(lock.read_text()), signal.SIGTERM)


def call_env(cluster: Cluster, runtime: Path, **extra: str) -> dict[str, str]:
    return cluster.env(XDG_RUNTIME_DIR=str(runtime), **extra)


@pytest.fixture
def served(cluster: Cluster, runtime: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A helper started as the launcher would start it, waited for until it listens."""
    env = call_env(cluster, runtime)
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.helper", "--idle-seconds", "60"], env=env
    )
    wait_until(lambda: os.path.exists(helper.socket_path(env)), timeout=20)
    yield proc
    proc.terminate()  # it waits for its children: a test that failed may have left one
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        for child in children_of(proc.pid):
            os.kill(child, signal.SIGKILL)
        proc.kill()
        proc.wait()


def start_waiting_call(cluster: Cluster, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [cluster.dropin("ffmpeg"), *READS_STDIN],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.timeout(90)
def test_a_call_runs_in_the_helper_with_the_callers_streams(
    cluster: Cluster, runtime: Path, served: subprocess.Popen[bytes], media_dir: Path
) -> None:
    env = call_env(cluster, runtime)
    call = start_waiting_call(cluster, env)
    children = wait_until(lambda: children_of(served.pid), timeout=20)
    # The helper's child is the drop-in: it has the caller's stdin (our pipe).
    child = children[0]
    theirs = os.readlink(f"/proc/{call.pid}/fd/0")
    wait_until(lambda: os.readlink(f"/proc/{child}/fd/0") == theirs, timeout=10)
    assert os.readlink(f"/proc/{child}/cwd") == os.getcwd()
    out, err = call.communicate(b"\0" * 16000, timeout=30)
    assert (call.returncode, out, err) == (0, b"", b"")

    # Binary stdout, byte for byte, from a call the helper ran.
    probe = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams"]
    mapped = str(cluster.client_media / "clip.mp4")
    remote = subprocess.run(
        [cluster.dropin("ffprobe"), *probe, mapped], env=env, capture_output=True, timeout=60
    )
    clip = str(media_dir / "clip.mp4")
    local = subprocess.run(["ffprobe", *probe, clip], capture_output=True, timeout=60)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout)["streams"] == json.loads(local.stdout)["streams"]


@pytest.mark.timeout(90)
def test_exit_codes_and_signals_are_the_python_drop_ins(
    cluster: Cluster, runtime: Path, served: subprocess.Popen[bytes]
) -> None:
    env = call_env(cluster, runtime)
    direct = call_env(cluster, runtime / "none")  # no helper there: the Python drop-in
    failing = ["-v", "error", "-i", str(cluster.client_media / "missing.mkv"), "-f", "null", "-"]
    through = subprocess.run([cluster.dropin("ffmpeg"), *failing], env=env, capture_output=True)
    alone = subprocess.run([cluster.dropin("ffmpeg"), *failing], env=direct, capture_output=True)
    assert through.returncode == alone.returncode == 254 or (
        through.returncode == alone.returncode and through.returncode not in (0, 204)
    )
    assert through.stderr == alone.stderr

    codes = []
    for each in (env, direct):
        call = start_waiting_call(cluster, each)
        if each is env:
            wait_until(lambda: children_of(served.pid), timeout=20)
        wait_until(lambda: _running_jobs(cluster), timeout=20)
        call.send_signal(signal.SIGTERM)
        # ffmpeg notices the signal once its blocked read returns; stdin stays open, so
        # the signal, not an EOF, ends it.
        time.sleep(1.0)
        assert call.stdin is not None
        call.stdin.write(b"\0" * 16000)
        call.stdin.flush()
        codes.append(call.wait(30))
        call.communicate(timeout=30)
    assert codes[0] == codes[1]
    assert not children_of(served.pid)


def _running_jobs(cluster: Cluster) -> list[dict[str, object]]:
    jobs: object = admin(cluster.coordinator_config, "job", "list")
    assert isinstance(jobs, list)
    return [j for j in jobs if j["state"] == "running"]


@pytest.mark.timeout(90)
def test_a_killed_launcher_stops_its_call(
    cluster: Cluster, runtime: Path, served: subprocess.Popen[bytes]
) -> None:
    call = start_waiting_call(cluster, call_env(cluster, runtime))
    wait_until(lambda: children_of(served.pid), timeout=20)
    wait_until(lambda: _running_jobs(cluster), timeout=20)
    call.kill()
    call.communicate(timeout=30)
    # The child sees its launcher's connection end and stops the job as SIGTERM would.
    wait_until(lambda: not children_of(served.pid), timeout=20)
    wait_until(lambda: not _running_jobs(cluster), timeout=20)


@pytest.mark.timeout(90)
def test_the_first_call_starts_a_helper_that_serves_the_next(
    cluster: Cluster, runtime: Path
) -> None:
    env = call_env(cluster, runtime)
    first = subprocess.run(
        [cluster.dropin("ffmpeg"), "-hide_banner", "-version"], env=env, capture_output=True
    )
    local = subprocess.run(["ffmpeg", "-hide_banner", "-version"], capture_output=True)
    assert first.returncode == 0 and first.stdout == local.stdout
    path = helper.socket_path(env)
    wait_until(lambda: os.path.exists(path), timeout=20)
    pid = int(Path(path + ".lock").read_text())
    try:
        call = start_waiting_call(cluster, env)
        wait_until(lambda: children_of(pid), timeout=20)
        call.communicate(timeout=30)
        assert call.returncode == 0
        again = subprocess.run(
            [cluster.dropin("ffmpeg"), "-hide_banner", "-version"], env=env, capture_output=True
        )
        assert again.stdout == local.stdout
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=20)


@pytest.mark.timeout(90)
def test_local_helper_false_starts_none(cluster: Cluster, runtime: Path, tmp_path: Path) -> None:
    config = json.loads(json.dumps(_yaml(cluster.client_config)))
    config["local_helper"] = False
    own = tmp_path / "client.yaml"
    own.write_text(json.dumps(config))
    env = call_env(cluster, runtime)
    env["DFFMPEG_CLIENT_CONFIG"] = str(own)
    done = subprocess.run(
        [cluster.dropin("ffmpeg"), "-hide_banner", "-version"], env=env, capture_output=True
    )
    assert done.returncode == 0
    time.sleep(1.0)
    assert not os.path.exists(helper.socket_path(env))


def _yaml(path: Path) -> dict[str, object]:
    import yaml

    data: dict[str, object] = yaml.safe_load(path.read_text())
    return data


@pytest.mark.timeout(90)
def test_a_call_with_other_loader_settings_runs_without_the_helper(
    cluster: Cluster, runtime: Path, served: subprocess.Popen[bytes]
) -> None:
    env = call_env(cluster, runtime)
    env["PYTHONPATH"] = env.get("PYTHONPATH", "") + os.pathsep + "/nonexistent"
    call = start_waiting_call(cluster, env)
    wait_until(lambda: _running_jobs(cluster), timeout=20)
    assert not children_of(served.pid)
    call.communicate(timeout=30)
    assert call.returncode == 0


@pytest.mark.timeout(90)
def test_a_changed_module_retires_the_helper(
    cluster: Cluster, runtime: Path, served: subprocess.Popen[bytes]
) -> None:
    module = Path(helper.__file__)
    before = module.stat()
    try:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
        done = subprocess.run(
            [cluster.dropin("ffmpeg"), "-hide_banner", "-version"],
            env=call_env(cluster, runtime),
            capture_output=True,
        )
        assert done.returncode == 0 and b"ffmpeg version" in done.stdout
        served.wait(20)  # it retired instead of serving old code
    finally:
        os.utime(module, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.timeout(90)
def test_a_directory_others_can_write_is_never_used(cluster: Cluster, tmp_path: Path) -> None:
    """A listener planted where the helper's socket would be, in a directory that is not
    private, receives no connection (and so none of the caller's descriptors)."""
    runtime = tmp_path / "open"
    runtime.mkdir()
    env = call_env(cluster, runtime)
    directory = Path(helper.runtime_dir(env))
    directory.mkdir()
    directory.chmod(0o777)
    planted = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    planted.bind(helper.socket_path(env))
    planted.listen(8)
    planted.settimeout(0.2)
    received: list[socket.socket] = []

    def accept() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                received.append(planted.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    done = subprocess.run(
        [cluster.dropin("ffmpeg"), "-hide_banner", "-version"], env=env, capture_output=True
    )
    thread.join()
    planted.close()
    assert done.returncode == 0 and b"ffmpeg version" in done.stdout
    assert received == []
    # Nor does a helper start there.
    started = subprocess.run(
        [sys.executable, "-m", "client.helper"], env=env, capture_output=True, timeout=20
    )
    assert started.returncode == 1 and b"not private" in started.stderr


@pytest.mark.timeout(90)
def test_another_user_is_refused(cluster: Cluster) -> None:
    """A request from another uid (nobody) that reaches the socket gets no child: the
    helper closes the connection without a pid."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another user")
    # Under /tmp itself (pytest's own directories are closed to other users).
    runtime = Path(tempfile.mkdtemp(prefix="dffmpeg-helper-test-", dir="/tmp"))
    env = call_env(cluster, runtime)
    path = helper.socket_path(env)
    proc = subprocess.Popen([sys.executable, "-m", "client.helper"], env=env)
    try:
        wait_until(lambda: os.path.exists(path), timeout=20)
        # Opened up for this test only, so that the request reaches the helper and its
        # own check of the peer's uid is what refuses it.
        for opened, mode in ((runtime, 0o711), (Path(path).parent, 0o711), (Path(path), 0o666)):
            opened.chmod(mode)
        request = helper.encode_request(
            helper.Call("/", 0o022, ["ffmpeg", "-hide_banner", "-version"], env)
        )
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(path)
                fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("3i", 0, 1, 2))]
                try:
                    sock.sendmsg([request], fds)
                    answer = sock.recv(4)
                except (BrokenPipeError, ConnectionResetError):
                    # Closed before our request went out (the helper checks the peer as
                    # it accepts), or with it unread.
                    answer = b""
                os.write(write, b"answered" if answer else b"closed")
            except OSError as exc:
                os.write(write, repr(exc).encode())
            finally:
                os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        outcome = os.read(read, 64)
        os.close(read)
        assert outcome == b"closed"
        assert not children_of(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(runtime, ignore_errors=True)


@pytest.mark.timeout(60)
def test_an_idle_helper_exits(cluster: Cluster, runtime: Path) -> None:
    env = call_env(cluster, runtime)
    proc = subprocess.Popen([sys.executable, "-m", "client.helper", "--idle-seconds", "1"], env=env)
    assert proc.wait(20) == 0
    assert not os.path.exists(helper.socket_path(env))


def test_requests_round_trip() -> None:
    call = helper.Call("/media/x y", 0o027, ["ffmpeg", "-i", "a\nb", ""], {"A": "1", "B": "x=y"})
    encoded = helper.encode_request(call)
    assert encoded[:4] == helper.MAGIC
    (length,) = struct.unpack("<I", encoded[4:8])
    assert helper.parse_request(encoded[8 : 8 + length]) == call
