"""What a confined job's child does between ``fork`` and ``exec`` of bubblewrap.

bubblewrap builds the sandbox, but it cannot mount a directory ``noexec``; without that,
a shared library one job writes into a mapped root could be loaded by the next job
(``-af ladspa=file=...``). So the child first enters a mount namespace of its own and
re-mounts every mapped root (and every mount below one) ``noexec,nosuid,nodev`` there;
bubblewrap then binds those mounts into the sandbox, keeping the flags. The host's mounts
are untouched: the namespace ends with the job.

A worker running as root enters the mount namespace directly (and may then switch to
``job_user``). An unprivileged worker first enters a user namespace that maps only its
own uid and gid, which grants the right to mount inside it; the capabilities that come
with it are lost at the ``exec`` of bubblewrap (the uid inside is not 0).

Everything is worked out in the worker before the fork; the child only makes system
calls, through functions looked up in the worker (see ``worker.process``).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
PR_SET_PDEATHSIG = 1

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


class PreludeError(Exception):
    """The child could not prepare its namespace; the message names the step."""


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def _function(name: str, argtypes: list[type]) -> Callable[..., int] | None:
    if _LIBC is None or not hasattr(_LIBC, name):
        return None
    function: Callable[..., int] = getattr(_LIBC, name)
    function.argtypes = argtypes  # type: ignore[attr-defined]
    return function


# Looked up once in the worker: never dlsym in a child forked from a threaded process.
_UNSHARE = _function("unshare", [ctypes.c_int])
_MOUNT = _function(
    "mount",
    [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p],
)
_PRCTL = _function(
    "prctl", [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
)


def available() -> str | None:
    """Why the prelude cannot run here, or None when it can."""
    if _UNSHARE is None or _MOUNT is None:
        return "the C library offers no unshare/mount"
    return None


def mounts_below(roots: Iterable[str], mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Every mount point at or below one of ``roots`` (resolved), parents first."""
    resolved = [os.path.realpath(r) for r in roots]
    found = set(resolved)
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                fields = line.split(" ")
                if len(fields) < 5:
                    continue
                point = _unescape(fields[4])
                if any(point == r or _below(point, r) for r in resolved):
                    found.add(point)
    except OSError:
        pass
    return sorted(found, key=lambda p: (p.count("/"), p))


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes.
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def _kept_flags(path: str) -> int:
    try:
        flags = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(mount for stat, mount in _KEPT_FLAGS if flags & stat)


@dataclass(frozen=True)
class Identity:
    """The unprivileged user a job runs as (``job_user``)."""

    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> Identity:
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except (KeyError, ValueError) as exc:
            raise PreludeError(f"job_user {name!r} does not exist") from exc
        if entry.pw_uid == 0:
            raise PreludeError("job_user must not be root")
        return cls(entry.pw_uid, entry.pw_gid)


class Prelude:
    """A ``preexec_fn``: die with the worker, then enter the job's mount namespace.

    Built per job in the worker (it reads the current mounts); called in the child.
    Raises ``PreludeError`` (the start fails) if any step is refused.
    """

    def __init__(self, roots: Iterable[str], job_user: Identity | None = None) -> None:
        self.worker_pid = os.getpid()
        self.privileged = os.geteuid() == 0
        if job_user is not None and not self.privileged:
            raise PreludeError("job_user needs a worker running as root")
        self.job_user = job_user
        self.uid = os.geteuid()
        self.gid = os.getegid()
        present = [os.path.realpath(r) for r in roots if os.path.isdir(r)]
        # Each outermost root is bound onto itself with what is mounted below it, so
        # that every mount point below can then be re-mounted on its own.
        self.binds = [p.encode() for p in present if not any(_below(p, o) for o in present)]
        self.remounts = [
            (point.encode(), _kept_flags(point) | MS_NOEXEC | MS_NOSUID | MS_NODEV)
            for point in mounts_below(present)
        ]

    def __call__(self) -> None:
        self._die_with_worker()
        self._enter_namespaces()
        self._remount_noexec()
        if self.job_user is not None:
            os.setgroups([])
            os.setresgid(self.job_user.gid, self.job_user.gid, self.job_user.gid)
            os.setresuid(self.job_user.uid, self.job_user.uid, self.job_user.uid)

    def _die_with_worker(self) -> None:
        # Linux sends it when the *thread* that forked us ends: the job's thread waits
        # for the process, so it lives as long as the job.
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != self.worker_pid:  # the worker died before prctl took effect
            os._exit(1)

    def _enter_namespaces(self) -> None:
        assert _UNSHARE is not None and _MOUNT is not None
        flags = CLONE_NEWNS if self.privileged else CLONE_NEWUSER | CLONE_NEWNS
        if _UNSHARE(flags) != 0:
            raise PreludeError(f"unshare: {os.strerror(ctypes.get_errno())}")
        if not self.privileged:
            _write("/proc/self/setgroups", b"deny")
            _write("/proc/self/uid_map", f"{self.uid} {self.uid} 1".encode())
            _write("/proc/self/gid_map", f"{self.gid} {self.gid} 1".encode())
        # Nothing mounted here may reach the host's namespace.
        if _MOUNT(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise PreludeError(f"private mounts: {os.strerror(ctypes.get_errno())}")

    def _remount_noexec(self) -> None:
        assert _MOUNT is not None
        for point in self.binds:
            if _MOUNT(point, point, None, MS_BIND | MS_REC, None) != 0:
                raise PreludeError(f"bind {point!r}: {os.strerror(ctypes.get_errno())}")
        for point, flags in self.remounts:
            if _MOUNT(None, point, None, MS_REMOUNT | MS_BIND | flags, None) != 0:
                raise PreludeError(f"noexec {point!r}: {os.strerror(ctypes.get_errno())}")


def _below(path: str, other: str) -> bool:
    """``path`` lies strictly inside ``other``."""
    return path != other and path.startswith(other.rstrip("/") + "/")


def _write(path: str, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PreludeError(f"{path}: {exc.strerror}") from exc
