"""docs/setup.md, followed literally in a fresh temporary root (see tests/setup_guide.py
for what is moved or stood in for): real coordinator and worker started from the unit
files as an unprivileged service user, and a real transcode through the drop-in."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Api
from tests import setup_guide
from tests.helpers import REPO, free_port, require

DEBIAN_PYTHON = Path("/usr/bin/python3")


def fake_install(root: Path) -> None:
    """What step 1 (clone and ``install.sh``) leaves in /opt/dffmpeg, from this checkout.

    A virtual environment of Debian's own Python (the service user cannot run this
    test's interpreter, which may live under /root) that sees the checkout's installed
    packages, with the project's console scripts; the docs beside it.
    """
    opt = root / "opt" / "dffmpeg"
    opt.mkdir(parents=True)
    (opt / "docs").symlink_to(REPO / "docs")
    (opt / "scripts").symlink_to(REPO / "scripts")
    venv = opt / ".venv"
    subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = sysconfig.get_path("purelib")
    (Path(purelib) / "dffmpeg-checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, func = target.split(":")
        path = venv / "bin" / name
        path.write_text(
            f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import {func}\n"
            f"sys.exit({func}())\n"
        )
        path.chmod(0o755)


def stand_ins(root: Path) -> Path:
    """``systemctl`` and ``useradd`` for the guide's shell (see tests/setup_guide.py)."""
    bin_dir = root / "fakebin"
    bin_dir.mkdir()
    systemctl = bin_dir / "systemctl"
    systemctl.write_text(
        f'#!/bin/sh\nexec {sys.executable} {Path(setup_guide.__file__)} systemctl "$@"\n'
    )
    useradd = bin_dir / "useradd"
    # The service user is played by an existing account: check the call, add nobody.
    useradd.write_text(
        f'#!/bin/sh\necho "$@" >> {root}/useradd.log\n'
        'for last in "$@"; do :; done\nexec id "$last" >/dev/null\n'
    )
    for path in (systemctl, useradd):
        path.chmod(0o755)
    return bin_dir


def a_fresh_machine(root: Path) -> None:
    """What a Debian machine with Jellyfin has before the guide starts."""
    for path in ("etc/systemd/system", "var/lib", "var/cache", "srv/media"):
        (root / path).mkdir(parents=True)
    transcodes = root / "var/cache/jellyfin/transcodes"
    transcodes.mkdir(parents=True)
    # Jellyfin's directory, writable by the worker's user (the guide's usermod -aG).
    shutil.chown(transcodes, setup_guide.SERVICE_USER, setup_guide.SERVICE_GROUP)


def stop_services(root: Path) -> None:
    """Stop what the stand-in systemctl started (by process group), as systemd would."""
    started = setup_guide.pids(root)
    for pid in started.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 15
    for pid in started.values():
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def machine() -> Iterator[Path]:
    require(os.geteuid() == 0, "root (the guide is run as root)")
    require(DEBIAN_PYTHON.exists(), "Debian's /usr/bin/python3")
    same = subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    require(same == str(sys.version_info[:2]), "Debian's python3 of this Python's version")
    for tool in ("setpriv", "runuser", "curl", "ffmpeg", "ffprobe"):
        require(shutil.which(tool) is not None, tool)
    # Not under pytest's tmp_path: that is private to root, the service user must enter.
    root = Path(tempfile.mkdtemp(prefix="guide-", dir="/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        stop_services(root)
        shutil.rmtree(root, ignore_errors=True)


def owner(path: Path) -> tuple[str, int]:
    info = path.stat()
    return pwd.getpwuid(info.st_uid).pw_name, stat.S_IMODE(info.st_mode)


@pytest.mark.timeout(300)
def test_the_setup_guide_works_when_followed_literally(machine: Path) -> None:
    root = machine
    port = free_port()
    a_fresh_machine(root)
    fake_install(root)
    fakebin = stand_ins(root)
    guide = (REPO / "docs" / "setup.md").read_text()
    commands = setup_guide.script(guide, root, port)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{fakebin}:{env['PATH']}",
        # The drop-in looks for /etc/dffmpeg/client.yaml; here that is under the root.
        DFFMPEG_CLIENT_CONFIG=str(root / "etc/dffmpeg/client.yaml"),
        **{setup_guide.ROOT_ENV: str(root), setup_guide.PORT_ENV: str(port)},
    )
    result = subprocess.run(
        ["bash", "-c", commands],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=root,
        env=env,
    )
    logs = "\n".join(p.read_text() for p in (root / "run/fake-systemd").glob("*.log"))
    assert result.returncode == 0, (result.stdout, result.stderr, logs)

    # The transcode ran on the worker, as the service user, and probes as two seconds.
    assert re.search(r"^2\.0+$", result.stdout, re.M), result.stdout
    output = root / "var/cache/jellyfin/transcodes/dffmpeg-check.mp4"
    assert owner(output)[0] == setup_guide.SERVICE_USER
    assert "worker1" in result.stdout and "online" in result.stdout

    # Directories, key files and their modes are what the guide promises.
    assert owner(root / "var/lib/dffmpeg") == (setup_guide.SERVICE_USER, 0o750)
    assert owner(root / "var/lib/dffmpeg/dffmpeg.db")[0] == setup_guide.SERVICE_USER
    assert owner(root / "etc/dffmpeg") == ("root", 0o755)
    assert owner(root / "etc/dffmpeg/worker1.key") == (setup_guide.SERVICE_USER, 0o600)
    assert owner(root / "etc/dffmpeg/jellyfin.key") == ("root", 0o600)
    assert owner(root / "etc/dffmpeg/operator.key") == ("root", 0o600)
    for config in ("coordinator", "worker", "client", "operator"):
        assert owner(root / f"etc/dffmpeg/{config}.yaml")[1] == 0o644
    assert (root / "opt/dffmpeg/bin/ffmpeg").resolve() == (
        root / "opt/dffmpeg/.venv/bin/dffmpeg-proxy"
    )
    calls = (root / "useradd.log").read_text()
    assert "--system" in calls and f"--home-dir {root}/var/lib/dffmpeg" in calls

    # The jobs went through the cluster: run by worker1 for the media server's identity.
    operator_key = (root / "etc/dffmpeg/operator.key").read_text().strip()
    api = Api(f"http://127.0.0.1:{port}", "operator", operator_key)
    try:
        jobs = api.call("GET", "/jobs")["jobs"]
    finally:
        api.close()
    assert {(j["requester"], j["worker_id"], j["state"], j["exit_code"]) for j in jobs} == {
        ("jellyfin", "worker1", "completed", 0)
    }
    assert sorted(j["binary"] for j in jobs) == ["ffmpeg", "ffprobe"]


def test_every_shell_block_of_the_guide_is_marked() -> None:
    found = setup_guide.blocks((REPO / "docs" / "setup.md").read_text())
    assert [m for m, _ in found].count("run") >= 6
    assert all(m == "run" or m.startswith("skip: ") for m, _ in found)


def test_the_readme_links_the_drop_in_into_a_directory_it_creates() -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"^ln -sf? \S+ (\S+)/ffmpeg", readme, re.M)
    assert links, "the README shows where the drop-in goes"
    for directory in links:
        made = re.search(rf"^(mkdir -p|install -d)( -m \d+)? {re.escape(directory)}$", readme, re.M)
        assert made, f"the README never creates {directory}"
