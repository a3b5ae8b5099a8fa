"""Following docs/setup.md in a temporary root: its command blocks, paths moved, and a
stand-in ``systemctl`` that runs the installed unit files' commands as their ``User=``.

Run as a script (``setup_guide.py systemctl ARGS...``) it *is* that stand-in; it uses
the standard library only, so it runs without the project on ``sys.path``. What is moved
or stood in for, and why:

* paths: the guide's system directories (``/etc/dffmpeg``, ``/var/lib/dffmpeg``,
  ``/opt/dffmpeg``, ``/etc/systemd/system``, the media and transcode directories) are
  moved under the root, in the commands and in the unit files;
* the port: 8000 becomes a free one;
* users: the service user ``dffmpeg`` is played by ``nobody``/``nogroup`` (a real
  unprivileged account, so ownership and modes are tested for real without adding users
  to the machine), the media server's user ``jellyfin`` by root; ``useradd`` is a
  stand-in that checks its arguments;
* ``systemctl``: there is no systemd here; the stand-in starts ``ExecStartPre`` and
  ``ExecStart`` of the installed unit with the unit's user and group, a clean
  environment and a session of their own, and records the process ids. The units'
  other settings (restart policy, the coordinator's sandboxing options) are not
  emulated.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT_ENV = "GUIDE_ROOT"
PORT_ENV = "GUIDE_PORT"
GUIDE_PORT = 8000
MOVED = (
    "/etc/dffmpeg",
    "/var/lib/dffmpeg",
    "/opt/dffmpeg",
    "/etc/systemd/system",
    "/srv/media",
    "/var/cache/jellyfin",
)
SERVICE_USER, SERVICE_GROUP = "nobody", "nogroup"
MARKER = re.compile(r"<!-- guide-test: (run|skip: .+?) -->")
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def blocks(markdown: str) -> list[tuple[str, str]]:
    """Every ``sh`` block as (marker, text); a block without a marker is an error."""
    found = []
    for match in BLOCK.finditer(markdown):
        before = markdown[: match.start()].rstrip().rsplit("\n", 1)[-1]
        marker = MARKER.fullmatch(before.strip())
        if marker is None:
            raise ValueError(f"sh block without a guide-test marker: {match.group(1)[:60]!r}")
        found.append((marker.group(1), match.group(1)))
    return found


def reroot(text: str, root: Path, port: int) -> str:
    """The guide's text with paths, port and users as the test plays them."""
    paths = "|".join(re.escape(p) for p in MOVED)
    text = re.sub(rf"(?<![\w.-])({paths})(?=[/\s'\"]|$)", lambda m: f"{root}{m.group(1)}", text)
    text = re.sub(rf"(?<=:){GUIDE_PORT}\b", str(port), text)
    text = re.sub(rf"\bport: {GUIDE_PORT}\b", f"port: {port}", text)
    for pattern, replacement in (
        (r"\bdffmpeg:dffmpeg\b", f"{SERVICE_USER}:{SERVICE_GROUP}"),
        (r"\bjellyfin:jellyfin\b", "root:root"),
        (r"-u jellyfin\b", "-u root"),
        (r"-g dffmpeg\b", f"-g {SERVICE_GROUP}"),
        (r"\bGroup=dffmpeg\b", f"Group={SERVICE_GROUP}"),
        # The user name alone: not a path component, not part of a command's name.
        (r"(?<![\w/.-])dffmpeg(?![\w/.:-])", SERVICE_USER),
    ):
        text = re.sub(pattern, replacement, text)
    return text


def script(markdown: str, root: Path, port: int) -> str:
    """The guide's runnable blocks as one shell session, as a reader would type them."""
    body = [reroot(text, root, port) for marker, text in blocks(markdown) if marker == "run"]
    return "set -euo pipefail\n" + "\n".join(body)


# -- the stand-in systemctl --------------------------------------------------------


def _state(root: Path) -> Path:
    path = root / "run" / "fake-systemd"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _unit(root: Path, port: int, name: str) -> dict[str, list[str]]:
    """The [Service] settings of an installed unit, paths moved like the guide's."""
    name = name if name.endswith(".service") else name + ".service"
    text = reroot((root / "etc/systemd/system" / name).read_text(), root, port)
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        key, _, value = line.partition("=")
        if section == "[Service]":
            settings.setdefault(key, []).append(value)
    return settings


def _credentials(settings: dict[str, list[str]]) -> tuple[str, str, str]:
    user = settings.get("User", ["root"])[-1]
    entry = pwd.getpwnam(user)
    group = settings.get("Group", [grp.getgrgid(entry.pw_gid).gr_name])[-1]
    return user, group, entry.pw_dir


def _as(user: str, group: str, command: str) -> list[str]:
    return [
        "setpriv",
        f"--reuid={user}",
        f"--regid={group}",
        "--clear-groups",
        *shlex.split(command),
    ]


def start(root: Path, port: int, name: str) -> None:
    settings = _unit(root, port, name)
    user, group, home = _credentials(settings)
    # What systemd gives a service: no inherited environment, the unit's user, cwd /.
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": home,
        "USER": user,
        "LANG": "C.UTF-8",
    }
    log = (_state(root) / f"{name}.log").open("ab")
    for command in settings.get("ExecStartPre", []):
        done = subprocess.run(
            _as(user, group, command),
            env=env,
            cwd="/",
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
        if done.returncode != 0:
            sys.exit(f"{name}: ExecStartPre failed ({done.returncode}); see {log.name}")
    (command,) = settings["ExecStart"]
    proc = subprocess.Popen(
        _as(user, group, command),
        env=env,
        cwd="/",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (_state(root) / f"{name}.pid").write_text(str(proc.pid))


def pids(root: Path) -> dict[str, int]:
    """The services the stand-in started, by name."""
    return {p.stem: int(p.read_text()) for p in _state(root).glob("*.pid")}


def systemctl(args: list[str]) -> int:
    root, port = Path(os.environ[ROOT_ENV]), int(os.environ[PORT_ENV])
    if args[:1] == ["daemon-reload"]:
        return 0
    if args[:2] == ["enable", "--now"] or args[:1] == ["start"]:
        for name in args[2:] if args[0] == "enable" else args[1:]:
            start(root, port, name.removesuffix(".service"))
        return 0
    print(f"fake systemctl: {' '.join(args)} is not supported", file=sys.stderr)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] != ["systemctl"]:
        sys.exit("usage: setup_guide.py systemctl ARGS...")
    sys.exit(systemctl(sys.argv[2:]))
