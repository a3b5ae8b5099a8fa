"""The client config as last parsed, kept as JSON so the drop-in need not import PyYAML.

Importing PyYAML (its resolver compiles a few dozen regular expressions) costs the
drop-in about 14 ms of CPU at every call, a quarter of a fast probe. The parsed mapping
is stored in the caller's state directory, private to its user (0600 in a 0700
directory), keyed by the config file's path and checked against its device, inode,
size, modification and change times: any write to the file (also one that keeps its
size and sets its mtime back, which still moves its ctime) makes the next call parse it
again. The kernel's file times are coarse (a clock tick), so a file changed within
``RACY_NS`` before its copy was stored could change again without its times moving: such
a copy is never used ("racily clean", as git calls it). A cache that cannot be read or
written is simply not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

VERSION = 1
# Longer than a clock tick of the file times (4-10 ms), with room to spare.
RACY_NS = 100_000_000


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _entry(directory: Path, path: Path) -> Path:
    digest = hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:32]
    return directory / "config-cache" / f"{digest}.json"


def load(directory: Path, path: Path) -> dict[str, Any] | None:
    """The mapping parsed from ``path`` earlier, if the file has not changed since."""
    try:
        identity = _identity(path)
        entry = _entry(directory, path)
        if os.stat(entry).st_uid != os.getuid():
            return None  # only a cache this user wrote
        stored = json.loads(entry.read_bytes())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(stored, dict)
        or stored.get("version") != VERSION
        or stored.get("path") != str(path.absolute())
        or stored.get("identity") != identity
        or not isinstance(stored.get("data"), dict)
        or not isinstance(stored.get("written"), int)
        or identity[4] + RACY_NS > stored["written"]
    ):
        return None
    data: dict[str, Any] = stored["data"]
    return data


def store(directory: Path, path: Path, identity: list[int], data: dict[str, Any]) -> None:
    """Keep ``data`` as what ``path`` (as it was at ``identity``) holds; best effort."""
    entry = _entry(directory, path)
    record = {
        "version": VERSION,
        "path": str(path.absolute()),
        "identity": identity,
        "written": time.time_ns(),  # after the file was read
    }
    try:
        text = json.dumps({**record, "data": data})
    except (TypeError, ValueError):
        return  # a value JSON cannot hold (a YAML date): parse the file every time
    if json.loads(text)["data"] != data:
        return  # JSON would change it (a number as a key): the file is parsed every time
    try:
        entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, entry)
    except OSError:
        return


def identity_of(path: Path) -> list[int] | None:
    try:
        return _identity(path)
    except OSError:
        return None
