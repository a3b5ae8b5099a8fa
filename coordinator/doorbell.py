"""Same-host wake-ups: one datagram to every other coordinator process of a database.

The wake-up counters (coordinator/wakeups.py) reach every process, on any host, within
one poll (every 40 ms: 20 ms on average, twice per job when the worker and the caller
use different instances). Processes on one host (gunicorn's worker processes, two
instances side by side) need not wait for it: each binds a Unix datagram socket in a
directory named after the database, and a process that has just committed a bump sends
one byte to every other socket there, which makes the receiver poll at once.

A ring carries nothing but "read the counters now"; the counters stay the record. So a
ring that is lost (the receiver's queue full, a process that started after the sender
listed the directory, a process in another container) costs only the wait for the
receiver's next poll, never a wake-up.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import stat
import tempfile

from sqlalchemy.engine import URL

log = logging.getLogger(__name__)

# A socket's path must fit ``sun_path`` (108 bytes on Linux, with its terminating NUL).
MAX_PATH_BYTES = 107


def directory_for(url: URL) -> str | None:
    """The directory every process of this database on this host shares, or None for a
    database no other process can open (SQLite in memory)."""
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
            return None
        identity = "sqlite:" + os.path.realpath(url.database)
    else:
        identity = url.render_as_string(hide_password=True)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"dffmpeg-wake-{os.getuid()}-{digest}")


def sweep(directory: str | None, pid: int | None = None) -> None:
    """Remove sockets whose process is gone, then the directory if nothing is left.

    gunicorn's master calls it with the pid of each worker that exited (one killed
    before it could remove its own socket), and with None when it stops: then every
    socket that nobody is bound to goes (another instance's live ones stay).
    """
    if directory is None:
        return
    if pid is not None:
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                if name.startswith(f"{pid}-"):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
    else:
        # A ring finds the sockets nobody is bound to (and removes them); a live one
        # just polls once more.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.setblocking(False)
            _ring(probe, directory, None)
    with contextlib.suppress(OSError):
        os.rmdir(directory)


def _ring(sock: socket.socket, directory: str, own: str | None) -> int:
    """One byte from ``sock`` to every socket in ``directory`` but ``own``; how many
    were sent. A socket nobody is bound to any more (a process killed before it could
    remove it) is removed, so later rings skip it."""
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    sent = 0
    for name in names:
        path = os.path.join(directory, name)
        if path == own:
            continue
        try:
            sock.sendto(b"!", path)
            sent += 1
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                os.unlink(path)
        except OSError:
            pass  # its queue is full: it has rings to read already
    return sent


class Doorbell:
    """This process's socket in the database's directory, and the rings it sends.

    Only the wake-up thread receives on the socket (``fileno`` in its ``select``);
    ``ring`` runs on that thread too, after its bumps commit.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path: str | None = None
        self._sock: socket.socket | None = None

    def open(self) -> bool:
        """Bind this process's socket; False (and rings neither sent nor received) when
        the directory cannot be used safely."""
        for _ in range(2):
            try:
                return self._bind()
            except FileNotFoundError as exc:
                # The last process of another run removed the directory between this
                # one's makedirs and bind: once more.
                error: OSError = exc
            except OSError as exc:
                error = exc
                break
        log.info("same-host wake-ups off (%s); the counters' poll carries them", error)
        return False

    def _bind(self) -> bool:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        info = os.lstat(self.directory)
        # A directory another user made (or could write to) would let them inject
        # sockets; rings are harmless, but there is no reason to trust it.
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            log.info("same-host wake-ups off: %s is not this user's own", self.directory)
            return False
        # Named after the process: gunicorn's master removes a dead worker's socket.
        path = os.path.join(self.directory, f"{os.getpid()}-{os.urandom(4).hex()}")
        if len(os.fsencode(path)) > MAX_PATH_BYTES:
            log.info("same-host wake-ups off: %s is too long for a socket", path)
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        self._sock, self.path = sock, path
        return True

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def ring(self) -> int:
        """One byte to every other process's socket; how many were sent."""
        if self._sock is None:
            return 0
        return _ring(self._sock, self.directory, self.path)

    def drain(self) -> None:
        """Read every ring queued (one poll answers them all)."""
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                sock.recv(64)
            except OSError:  # BlockingIOError: the queue is empty
                return

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            self.path = None
            # The last one out removes the directory (a test run makes one per database).
            with contextlib.suppress(OSError):
                os.rmdir(self.directory)
