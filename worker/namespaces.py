"""The worker's own mount namespace, in which every mapped root is ``noexec``.

bubblewrap builds each job's sandbox from the mounts of the process that starts it,
keeping their flags, but it cannot mount a directory ``noexec`` itself. Without that, a
shared library one job writes into a mapped root could be loaded by the next job
(``-af ladspa=file=...``). So a confined worker moves, once at start-up, into a mount
namespace of its own, and there re-mounts every mapped root (and every mount below one)
``noexec,nosuid,nodev``. The host's mounts are untouched; mounts the host makes later
still arrive (the namespace is a slave of the host's), and before each job the worker
re-checks the roots (``MountGuard.ensure``: one ``poll`` unless the mount table changed).

A worker running as root enters the mount namespace directly. An unprivileged worker
first enters a user namespace that maps only its own uid and gid, which grants the
right to mount inside it and changes nothing of what it may access.

Doing this once, in the worker, rather than in every job's child between ``fork`` and
``exec`` keeps a job's start free of Python code in the child, so it can use ``vfork``:
in a worker of tens of MB, a ``fork`` costs more than the whole sandbox.
"""

from __future__ import annotations

import ctypes
import os
import select
import threading
from collections.abc import Callable, Iterable

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 0x80000
MS_RELATIME = 0x200000
LOCKED = MS_NOEXEC | MS_NOSUID | MS_NODEV

# statvfs flag -> mount flag, for the flags a bind re-mount must keep (in a user
# namespace, dropping one the mount already has is refused).
_KEPT_FLAGS = (
    (os.ST_RDONLY, MS_RDONLY),
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
MOUNTINFO = "/proc/self/mountinfo"


class NamespaceError(Exception):
    """The mount namespace could not be set up; the message names the step."""


def _function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    function: Callable[..., int] | None = getattr(libc, name, None)
    if function is not None:
        function.argtypes = argtypes  # type: ignore[attr-defined]
    return function


_UNSHARE = _function("unshare", [ctypes.c_int])
_MOUNT = _function(
    "mount",
    [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p],
)
_UMOUNT2 = _function("umount2", [ctypes.c_char_p, ctypes.c_int])
MNT_DETACH = 2


def _failed(step: str) -> NamespaceError:
    return NamespaceError(f"{step}: {os.strerror(ctypes.get_errno())}")


def enter_own_namespace() -> None:
    """Move this process into a mount namespace of its own (must be single-threaded)."""
    if _UNSHARE is None or _MOUNT is None:
        raise NamespaceError("the C library offers no unshare/mount")
    if threading.active_count() > 1:
        raise NamespaceError("the worker must set up its namespace before starting threads")
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        if _UNSHARE(CLONE_NEWNS) != 0:
            raise _failed("unshare(mount namespace)")
    else:
        if _UNSHARE(CLONE_NEWUSER | CLONE_NEWNS) != 0:
            raise _failed("unshare(user and mount namespaces)")
        _write("/proc/self/setgroups", b"deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1".encode())
        _write("/proc/self/gid_map", f"{gid} {gid} 1".encode())
    # Our re-mounts stay ours; the host's later mounts still reach us.
    if _MOUNT(None, b"/", None, MS_REC | MS_SLAVE, None) != 0:
        raise _failed("mount --make-rslave /")


def mount_points(mountinfo: str = MOUNTINFO) -> list[str]:
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
            return [_unescape(f[4]) for line in lines if len(f := line.split(" ")) > 4]
    except OSError:
        return []


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def _flags(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(mount for stat, mount in _KEPT_FLAGS if flags & stat)


def _below(path: str, other: str) -> bool:
    """``path`` is ``other`` or lies inside it."""
    return path == other or path.startswith(other.rstrip("/") + "/")


class MountGuard:
    """Keeps the roots ``noexec,nosuid,nodev`` in this process's mount namespace.

    Construct it in the worker before any thread starts (it enters the namespace);
    ``ensure`` may then be called from any thread before each job.
    """

    def __init__(self, roots: Iterable[str]) -> None:
        self.roots = sorted({os.path.realpath(r) for r in roots})
        enter_own_namespace()
        self._lock = threading.Lock()
        self._bound: list[str] = []  # roots this guard made mount points
        self._table = open(MOUNTINFO, "rb")  # noqa: SIM115 -- polled for the guard's life
        self._poll = select.poll()
        self._poll.register(self._table, select.POLLPRI | select.POLLERR)
        self.apply()

    def ensure(self) -> None:
        """Re-apply the flags if the mount table changed since the last look."""
        with self._lock:
            changed = bool(self._poll.poll(0))  # a poll object is not for two threads
        if changed:
            self.apply()

    def apply(self) -> None:
        assert _MOUNT is not None
        with self._lock:
            self._table.seek(0)
            self._table.read()  # clears the change notification
            present = [r for r in self.roots if os.path.isdir(r)]
            outermost = [r for r in present if not any(_below(r, o) and o != r for o in present)]
            points = set(mount_points())
            # A root that is not a mount point is made one (with what is mounted below
            # it), so that its own flags can be set.
            unbound = [r for r in outermost if _flags(r) & LOCKED != LOCKED and r not in points]
            for root in unbound:
                if _MOUNT(root.encode(), root.encode(), None, MS_BIND | MS_REC, None) != 0:
                    raise _failed(f"bind {root}")
                self._bound.append(root)
            below = {p for p in mount_points() if any(_below(p, r) for r in outermost)}
            for point in sorted(below, key=len):
                flags = _flags(point)
                if flags & LOCKED == LOCKED:
                    continue
                wanted = MS_REMOUNT | MS_BIND | flags | LOCKED
                if _MOUNT(None, point.encode(), None, wanted, None) != 0:
                    raise _failed(f"remount {point} noexec")

    def close(self) -> None:
        """Undo the binds (in this namespace only): the roots can be removed again."""
        with self._lock:
            for root in reversed(self._bound):
                if _UMOUNT2 is not None:
                    _UMOUNT2(root.encode(), MNT_DETACH)
            self._bound.clear()
            self._table.close()


def _write(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise NamespaceError(f"{path}: {exc.strerror}") from exc
