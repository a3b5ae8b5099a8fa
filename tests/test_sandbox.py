"""The sandbox itself, with real bubblewrap: what a confined process sees and can do,
how it is signalled, the unprivileged and ``job_user`` paths, and failing closed."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cluster, start_cluster
from tests.helpers import REPO, admin, free_port, process_env, require, write_yaml

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
pytestmark = pytest.mark.timeout(120)
# What bubblewrap's own /dev holds: nothing of the host's devices.
MINIMAL_DEV = {
    "console", "core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr",
    "stdin", "stdout", "tty", "urandom", "zero",
}  # fmt: skip


@pytest.fixture(autouse=True)
def _bwrap() -> None:
    require(shutil.which("bwrap") is not None, "bubblewrap (bwrap)")


def in_worker(code: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """Run ``code`` in a process of its own, as a worker would: building a ``Sandbox``
    moves the process into its mount namespace, which the test process must not do."""
    preamble = "import json, os, signal, sys, time\nfrom worker.sandbox import Policy, Sandbox\n"
    kwargs.setdefault("env", process_env())
    return subprocess.run(
        [sys.executable, "-c", preamble + textwrap.dedent(code)],
        capture_output=True,
        timeout=90,
        **kwargs,  # type: ignore[call-overload]
    )


def confined(policy: str, script: str, cwd: str = "/tmp") -> subprocess.CompletedProcess[bytes]:
    """``sh -c script`` in a sandbox of ``Policy(...)`` (given as Python source)."""
    return in_worker(
        f"""
        process = Sandbox({policy}).launch(
            ["/bin/sh", "-c", {script!r}], cwd={cwd!r}, env={{"PATH": "/usr/bin:/bin"}}
        )
        out, err = process.communicate(timeout=60)
        sys.stdout.buffer.write(out)
        sys.stderr.buffer.write(err)
        sys.exit(process.returncode)
        """
    )


def test_only_the_listed_devices_and_driver_files_are_visible(tmp_path: Path) -> None:
    drivers = tmp_path / "vendors"
    drivers.mkdir()
    (drivers / "driver.icd").write_text("libdriver.so\n")
    plain = confined("Policy(roots={})", "ls -A /dev")
    assert set(plain.stdout.decode().split()) <= MINIMAL_DEV
    listed = confined(
        f"Policy(roots={{}}, devices=('/dev/fuse', {str(drivers)!r}))",
        f"ls -A /dev; echo --; cat {drivers}/driver.icd; ls -d /sys/dev/char",
    )
    names, _, rest = listed.stdout.decode().partition("--")
    assert set(names.split()) - MINIMAL_DEV == {"fuse"}
    assert "libdriver.so" in rest and "/sys/dev/char" in rest
    for host_only in ("vda", "kmsg", "kvm", "loop0", "mem"):
        assert host_only not in names.split()


def test_a_confined_process_has_no_rights_network_or_view_of_the_host(tmp_path: Path) -> None:
    result = confined(
        f"Policy(roots={{'Media': {str(tmp_path)!r}}})",
        "grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; "
        "echo pids $(ls /proc | grep -c '^[0-9]'); "
        "echo nets $(tail -n +3 /proc/net/dev | cut -d: -f1); "
        "for p in /root /home /etc/passwd /etc/shadow /var/lib /opt /srv; do "
        "  test -e $p && echo visible $p; done; echo end",
    )
    out = result.stdout.decode()
    assert "CapEff:\t0000000000000000" in out and "CapBnd:\t0000000000000000" in out
    assert "NoNewPrivs:\t1" in out
    pids = int(out.split("pids ")[1].split()[0])
    assert pids <= 6  # init, sh and its pipeline: none of the host's hundreds
    assert out.split("nets ")[1].split("\n")[0].split() == ["lo"]
    assert "visible" not in out and out.strip().endswith("end")


def test_the_network_is_there_only_with_allow_network() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        probe = f"{FFMPEG} -v error -rw_timeout 2000000 -i http://127.0.0.1:{port}/x -f null -"

        def connections() -> int:
            count = 0
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return count
                count += 1
                conn.close()

        confined("Policy(roots={})", probe)
        assert connections() == 0
        confined("Policy(roots={}, allow_network=True)", probe)
        assert connections() >= 1


def test_files_the_job_must_not_see_are_hidden_even_inside_a_root(tmp_path: Path) -> None:
    key = tmp_path / "worker.key"
    key.write_text("the-secret-key\n")
    result = confined(
        f"Policy(roots={{'Media': {str(tmp_path)!r}}}, hidden=({str(key)!r},))",
        f"cat {key}; echo; ls {tmp_path}",
    )
    assert b"the-secret-key" not in result.stdout
    assert b"worker.key" in result.stdout  # there, but empty


def test_signals_reach_the_confined_process_not_bubblewrap() -> None:
    result = in_worker(
        """
        sandbox = Sandbox(Policy(roots={}))
        script = 'trap "echo got $1; exit 7" INT; echo ready; while :; do sleep 0.05; done'
        process = sandbox.launch(["/bin/sh", "-c", script, "sh", "INT"], cwd="/tmp", env={})
        assert process.stdout.readline() == b"ready\\n"
        sandbox.deliver(process, signal.SIGINT)
        print("trapped", process.wait(timeout=10), process.stdout.read())
        process = sandbox.launch(["/bin/sh", "-c", "echo ready; exec sleep 30"], cwd="/tmp",
                                 env={})
        assert process.stdout.readline() == b"ready\\n"
        sandbox.deliver(process, signal.SIGHUP)
        print("killed", process.wait(timeout=10))
        """
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "trapped 7 b'got INT\\n'"
    # Death by a signal is reported as a shell would: 128 + N.
    assert lines[1] == f"killed {128 + signal.SIGHUP}"


def test_stop_ends_a_process_that_ignores_sigterm() -> None:
    result = in_worker(
        """
        sandbox = Sandbox(Policy(roots={}))
        process = sandbox.launch(
            ["/bin/sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.05; done"],
            cwd="/tmp", env={},
        )
        assert process.stdout.readline() == b"ready\\n"
        started = time.monotonic()
        sandbox.stop(process, grace=0.5)
        print(process.wait(timeout=10), round(time.monotonic() - started, 1))
        """
    )
    assert result.returncode == 0, result.stderr
    code, took = result.stdout.decode().split()
    assert int(code) != 0 and float(took) < 5


def test_the_sandbox_dies_with_the_worker() -> None:
    """A worker killed with SIGKILL leaves no job behind (bubblewrap does not see to it)."""
    marker = f"dffmpeg-orphan-{os.getpid()}"
    worker = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            f"""
            import sys, time
            from worker.sandbox import Policy, Sandbox
            p = Sandbox(Policy(roots={{}})).launch(
                ["/bin/sh", "-c", "echo ready; exec sleep 300 {marker}"], cwd="/tmp", env={{}})
            print(p.stdout.readline().decode(), end="", flush=True)
            time.sleep(300)
            """
        )],
        stdout=subprocess.PIPE,
        env=process_env(),
    )  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline() == b"ready\n"
        assert _pids_with(marker)
        worker.kill()
        worker.wait(10)
        deadline = time.monotonic() + 5
        while _pids_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pids_with(marker)
    finally:
        worker.kill()
        worker.wait(10)
        assert worker.stdout is not None
        worker.stdout.close()


def _pids_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if marker.encode() in cmdline.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="job_user needs a worker running as root")
def test_job_user_runs_the_job_as_that_user(tmp_path: Path) -> None:
    result = confined("Policy(roots={}, job_user='nobody')", "id -u; id -g")
    assert result.stdout.decode().split() == ["65534", "65534"], result.stderr
    missing = confined("Policy(roots={}, job_user='no-such-user-here')", "true")
    assert missing.returncode != 0 and b"does not exist" in missing.stderr


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the unprivileged user owns (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="dffmpeg-nobody-"))
    os.chmod(path, 0o755)
    os.chown(path, 65534, 65534)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become an unprivileged user")
def test_an_unprivileged_worker_confines_its_jobs_too(nobody_dir: Path) -> None:
    """A worker running as a plain user (as the systemd unit does): the same sandbox,
    roots still noexec. Shown with a library that writes a proof file when loaded."""
    require(shutil.which("gcc") is not None, "gcc")
    require(os.path.exists("/usr/bin/python3"), "the system's python3")
    root = nobody_dir / "media"
    root.mkdir()
    proof = root / "proof"
    source = nobody_dir / "evil.c"
    source.write_text(
        "#include <stdio.h>\n__attribute__((constructor)) static void run(void) {"
        f' FILE *f = fopen("{proof}", "w"); if (f) {{ fputs("ran", f); fclose(f); }} }}\n'
    )
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(root / "evil.so"), str(source)],
        check=True,
        timeout=60,
    )
    os.chown(root, 65534, 65534)
    # The two modules the sandbox needs, where the unprivileged user can read them.
    package = nobody_dir / "code" / "worker"
    package.mkdir(parents=True)
    for name in ("__init__.py", "namespaces.py", "process.py", "sandbox.py"):
        shutil.copy(REPO / "worker" / name, package / name)
    script = textwrap.dedent(
        f"""
        import os, sys
        from worker.sandbox import Policy, Sandbox
        assert os.geteuid() == 65534
        sandbox = Sandbox(Policy(roots={{"Media": {str(root)!r}}}))
        process = sandbox.launch(
            [{FFMPEG!r}, "-v", "error", "-f", "lavfi", "-i", "sine=d=0.1",
             "-af", "ladspa=file={root}/evil.so", "-f", "null", "-"],
            cwd={str(root)!r}, env={{"PATH": "/usr/bin:/bin"}},
        )
        out, err = process.communicate(timeout=60)
        sys.stdout.write(err.decode())
        probe = sandbox.launch(["/bin/sh", "-c", "id -u; ls /"], cwd="/tmp", env={{}})
        sys.stdout.write(probe.communicate(timeout=60)[0].decode())
        """
    )
    result = subprocess.run(
        ["/usr/bin/python3", "-c", script],
        user=65534,
        group=65534,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(nobody_dir / "code")},
        capture_output=True,
        timeout=90,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Failed to load" in out  # ffmpeg tried and the kernel refused the mapping
    assert not proof.exists()
    listing = out.split("65534", 1)[1].split()
    assert "root" not in listing and "home" not in listing


# -- the worker: failing closed, and saying so when unconfined ---------------------------------


def _worker_config(tmp_path: Path) -> Path:
    return write_yaml(
        tmp_path / "worker.yaml",
        {
            "client_id": "w",
            "hmac_key": "k" * 43,
            "coordinator_url": f"http://127.0.0.1:{free_port()}",
            "binaries": {"ffmpeg": FFMPEG},
            "paths": {"Media": str(tmp_path)},
        },
    )


def _start_worker(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, env=env, capture_output=True, timeout=60)


def test_a_worker_without_bubblewrap_refuses_to_start(tmp_path: Path) -> None:
    config = _worker_config(tmp_path)
    env = process_env(PATH=str(tmp_path / "empty-bin"))  # no bwrap on it
    result = _start_worker([sys.executable, "-m", "worker.cli", "--config", str(config)], env)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert lines[-1].startswith("dffmpeg-worker: ") and "bwrap" in lines[-1]
    assert "sandbox: off" in lines[-1]


def test_a_worker_whose_namespaces_are_refused_refuses_to_start(tmp_path: Path) -> None:
    """Run the worker itself inside a sandbox that forbids new user namespaces: the kernel
    refuses the job sandbox, and the worker says so in one line."""
    config = _worker_config(tmp_path)
    outer = ["bwrap", "--dev-bind", "/", "/", "--unshare-user", "--disable-userns", "--"]
    result = _start_worker(
        [*outer, sys.executable, "-m", "worker.cli", "--config", str(config)], process_env()
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("dffmpeg-worker: cannot confine jobs"), last


@pytest.fixture(scope="module")
def unconfined(tmp_path_factory: pytest.TempPathFactory, media_dir: Path) -> Iterator[Cluster]:
    yield from start_cluster(
        tmp_path_factory.mktemp("unconfined"), media_dir, worker_extra={"sandbox": "off"}
    )


def test_an_unconfined_worker_is_marked_as_such(unconfined: Cluster) -> None:
    workers: object = admin(unconfined.coordinator_config, "worker", "list")
    assert isinstance(workers, list)
    assert [w["sandboxed"] for w in workers] == [False]
    ops = admin(unconfined.coordinator_config, "user", "add", "ops", "--role", "admin")
    config = write_yaml(
        unconfined.root / "ops.yaml",
        {"client_id": "ops", "hmac_key": ops["hmac_key"], "coordinator_url": unconfined.url},
    )
    env = process_env()
    status = [sys.executable, "-m", "client.cli", "--config", str(config), "status", "--all"]
    text = subprocess.run(status, env=env, capture_output=True, timeout=30, check=True)
    assert b"online, unconfined" in text.stdout
    as_json = subprocess.run(
        [*status, "--json"], env=env, capture_output=True, timeout=30, check=True
    )
    assert b'"sandboxed": false' in as_json.stdout
    # It still runs jobs.
    assert unconfined.run("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "nullsrc=d=0.1",
                          "-f", "null", "-").returncode == 0  # fmt: skip


def test_jobs_starting_together_share_the_mount_guard(tmp_path: Path) -> None:
    """Every job start asks the guard whether the mount table changed, from its own
    thread; many at once must neither fail nor stack binds."""
    result = in_worker(
        f"""
        import threading
        from worker.namespaces import mount_points
        sandbox = Sandbox(Policy(roots={{"Media": {str(tmp_path)!r}}}))
        errors = []
        def start_many():
            for _ in range(200):
                try:
                    sandbox.mounts.ensure()
                except Exception as exc:
                    errors.append(repr(exc))
        threads = [threading.Thread(target=start_many) for _ in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        sandbox.mounts.apply()
        print(len(errors), mount_points().count({str(tmp_path)!r}))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split() == ["0", "1"]
