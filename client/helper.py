"""The local helper: a long-lived process that runs drop-in calls for the native launcher.

A media server starts a new ``ffmpeg``/``ffprobe`` for every call. A Python drop-in pays
the interpreter's start and its imports (tens of milliseconds of CPU) each time, more
than the rest of the call. The native launcher (``client/native/launcher.c``, installed
as ``dffmpeg-proxy``) instead hands the call to this helper over a Unix socket: its
arguments, environment, working directory, umask and the caller's own stdin, stdout and
stderr (passed as file descriptors). The helper, with every module already imported,
forks; the child takes the caller's descriptors, directory and environment and runs
``client.proxy.main`` exactly as the drop-in would. The launcher forwards the signals
it receives to that child and exits with the child's wait status (or dies of its
signal), so the caller sees what it would have seen.

Anything the child could not reproduce makes the helper refuse the call, and the
launcher then runs the Python drop-in itself: another user (the socket's peer
credentials), a loader or interpreter setting (``LD_PRELOAD``, ``PYTHONPATH``, ...) that
differs from the helper's own, or modules changed on disk since the helper started (it
then exits, and the next call starts a new one). A helper with no call for
``IDLE_SECONDS`` exits.

The protocol (the launcher's C mirrors it): the launcher sends ``DFH1``, a 4-byte
little-endian length and that many bytes: NUL-terminated fields ``cwd``, ``umask`` (octal),
``argc``, the ``argc`` arguments, then every environment entry; fds 0, 1 and 2 ride on
the first bytes. The helper answers the child's pid (4 bytes, little-endian), and when
the child has ended its raw wait status (4 bytes). A close without a pid is a refusal.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import errno
import fcntl
import gc
import hashlib
import os
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = b"DFH1"
IDLE_SECONDS = 120.0
MAX_REQUEST = 4 << 20  # arguments and environment together
REQUEST_SECONDS = 2.0  # a launcher sends its request at once
# What a forked child cannot take from the caller: where code is loaded from. A call
# whose values differ from the helper's own is run by the Python drop-in instead.
LOADER_ENV = (
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSAFEPATH",
    "PYTHONNOUSERSITE",
    "PYTHONUSERBASE",
    "PYTHONSTARTUP",
    "PYTHONWARNINGS",
    "PYTHONDEVMODE",
    "PYTHONMALLOC",
    "PYTHONTRACEMALLOC",
    "PYTHONFAULTHANDLER",
    "PYTHONPROFILEIMPORTTIME",
    "PYTHONEXECUTABLE",
)
# Imported before any call, so a child starts with them (the drop-in's paths: probes,
# jobs, every transport, the incident reports).
PRELOAD = (
    "client.proxy",
    "client.api",
    "client.probes",
    "client.submit",
    "client.job",
    "client.downlink",
    "client.early_stdin",
    "client.incidents",
    "client.reporting",
    "dffmpeg.config_cache",
    "dffmpeg.text",
    "dffmpeg.transport",
    "yaml",
    "ssl",
)
OPTIONAL_PRELOAD = ("paho.mqtt.client", "pika")
# Our own packages: a change in one of their files retires the helper.
OWN_PACKAGES = ("client", "dffmpeg")


class Unavailable(Exception):
    """No helper can be used (or started) here; the reason says why."""


def install_tag(prefix: str | None = None) -> str:
    """Names this installation's helper: one per virtual environment (the launcher has
    the same tag compiled in, so another installation's helper is never reached)."""
    real = os.path.realpath(prefix or sys.prefix)
    return hashlib.sha256(real.encode()).hexdigest()[:12]


def runtime_dir(env: Mapping[str, str]) -> str:
    """``$XDG_RUNTIME_DIR/dffmpeg``, else ``/tmp/dffmpeg-UID`` (a media server's system
    user seldom has a runtime directory)."""
    xdg = env.get("XDG_RUNTIME_DIR", "")
    if xdg.startswith("/"):
        return os.path.join(xdg, "dffmpeg")
    return f"/tmp/dffmpeg-{os.getuid()}"


def socket_path(env: Mapping[str, str], tag: str | None = None) -> str:
    return os.path.join(runtime_dir(env), f"helper-{tag or install_tag()}.sock")


def own_private_dir(path: str) -> None:
    """Create ``path`` 0700, or check that it is a directory of ours nobody else can use
    (in ``/tmp`` another user could have made it first)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        raise Unavailable(f"{path} is not a directory")
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise Unavailable(f"{path} is not private to this user")


@dataclass
class Call:
    """One launcher's request, parsed."""

    cwd: str
    umask: int
    argv: list[str]
    env: dict[str, str]


def parse_request(payload: bytes) -> Call:
    fields = payload.split(b"\0")
    if len(fields) < 4 or fields[-1] != b"":
        raise ValueError("truncated request")
    fields.pop()
    cwd, umask, argc = fields[0], int(fields[1], 8), int(fields[2])
    if argc < 1 or len(fields) < 3 + argc:
        raise ValueError("bad argument count")
    argv = [os.fsdecode(a) for a in fields[3 : 3 + argc]]
    env: dict[str, str] = {}
    for entry in fields[3 + argc :]:
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[os.fsdecode(name)] = os.fsdecode(value)
    return Call(os.fsdecode(cwd), umask, argv, env)


def encode_request(call: Call) -> bytes:
    """The launcher's side of ``parse_request`` (the tests speak the protocol with it)."""
    fields = [
        os.fsencode(call.cwd),
        f"{call.umask:o}".encode(),
        str(len(call.argv)).encode(),
        *(os.fsencode(a) for a in call.argv),
        *(os.fsencode(f"{k}={v}") for k, v in call.env.items()),
    ]
    payload = b"\0".join(fields) + b"\0"
    return MAGIC + struct.pack("<I", len(payload)) + payload


def loader_mismatch(env: Mapping[str, str], own: Mapping[str, str]) -> str | None:
    """The first loader setting in which the caller differs from the helper, if any."""
    for name in LOADER_ENV:
        if env.get(name) != own.get(name):
            return name
    return None


def _module_files() -> dict[str, tuple[int, int]]:
    """Identity (mtime, size) of every loaded file of our own packages."""
    import importlib.util

    roots = []
    for package in OWN_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            roots.append(os.path.dirname(spec.origin) + os.sep)
    files: dict[str, tuple[int, int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)  # ``__main__`` too: this very file
        if path and path.startswith(tuple(roots)):
            with contextlib.suppress(OSError):
                info = os.stat(path)
                files[path] = (info.st_mtime_ns, info.st_size)
    return files


def _changed(files: Mapping[str, tuple[int, int]]) -> bool:
    for path, identity in files.items():
        try:
            info = os.stat(path)
        except OSError:
            return True
        if (info.st_mtime_ns, info.st_size) != identity:
            return True
    return False


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    for name in OPTIONAL_PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    _warm_up()


def _warm_up() -> None:
    """Go once through what every call does first, with the helper's own environment
    (the first caller's): what that leaves in memory a child then shares instead of
    building it anew at every call (about 3 ms of CPU each): the regular expression that
    finds the config's roots in arguments (``re`` keeps compiled patterns by their
    text) and what a call imports or sets up on its first use. Each call still reads
    and checks its own config; nothing of this one is used in its place."""
    from client.submit import build_request
    from dffmpeg.config import load_client

    # A missing or broken config here only means no warm-up: each call reports its own.
    with contextlib.suppress(Exception):
        build_request(load_client(), "ffmpeg", ["-i", "/", "-f", "null", "-"])


def _receive(conn: socket.socket) -> tuple[Call, list[int]]:
    """Read one request and the three descriptors riding on it."""
    conn.settimeout(REQUEST_SECONDS)
    fds = array.array("i")
    data, ancillary, _flags, _addr = conn.recvmsg(65536, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    received = list(fds)
    try:
        while len(data) < 8:
            more = conn.recv(8 - len(data))
            if not more:
                raise ValueError("request cut short")
            data += more
        if data[:4] != MAGIC:
            raise ValueError("not a launcher request")
        (length,) = struct.unpack("<I", data[4:8])
        if length > MAX_REQUEST:
            raise ValueError("request too large")
        chunks = [data[8:]]
        have = len(chunks[0])
        while have < length:
            more = conn.recv(min(1 << 20, length - have))
            if not more:
                raise ValueError("request cut short")
            chunks.append(more)
            have += len(more)
        if len(received) != 3:
            raise ValueError("the caller's stdin, stdout and stderr did not come")
        return parse_request(b"".join(chunks)[:length]), received
    except BaseException:
        for fd in received:
            os.close(fd)
        raise


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _watch_caller(conn: socket.socket) -> None:
    """The launcher never writes after its request: the connection ending means it died
    without forwarding a signal (SIGKILL). Stop the call as a SIGTERM would."""
    try:
        data = conn.recv(1)
    except OSError:
        return  # not an end of the connection: nothing to judge by
    if not data:
        os.kill(os.getpid(), signal.SIGTERM)


def _run_child(conn: socket.socket, call: Call, fds: list[int]) -> int:
    """In the forked child: become the caller's drop-in process and run the call."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(call.cwd)
    os.umask(call.umask)
    os.environ.clear()
    os.environ.update(call.env)
    time.tzset()
    sys.argv = call.argv
    threading.Thread(target=_watch_caller, args=(conn,), name="caller", daemon=True).start()
    from client import proxy

    try:
        return proxy.main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        # As the interpreter itself does: die of the SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException:
        traceback.print_exc()
        return 1


class Helper:
    """The accept loop: one thread, forks a child per call and reports how each ended."""

    def __init__(self, path: str, idle_seconds: float = IDLE_SECONDS) -> None:
        self.path = path
        self.idle_seconds = idle_seconds
        self.own_env = dict(os.environ)
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.listener: socket.socket | None = None
        self.lock_fd = -1
        self.files: dict[str, tuple[int, int]] = {}
        self._inode = 0

    def bind(self) -> None:
        """Take the lock (one helper per socket) and listen; Unavailable if another
        helper holds it or the directory is not private."""
        directory = os.path.dirname(self.path)
        own_private_dir(directory)
        self.lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self.lock_fd)
            raise Unavailable("another helper serves this socket") from exc
        os.ftruncate(self.lock_fd, 0)
        os.write(self.lock_fd, f"{os.getpid()}\n".encode())
        # Ready before it listens: a call never waits for the imports, and the files
        # recorded are the ones the children run.
        preload()
        self.files = _module_files()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)
        listener.listen(64)
        self._inode = os.stat(self.path).st_ino
        self.listener = listener

    def serve(self) -> None:
        assert self.listener is not None
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._stop)
        gc.freeze()  # children share these pages instead of copying them at their first GC
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, "accept")
        selector.register(wake_read, selectors.EVENT_READ, "wake")
        last_call = time.monotonic()
        try:
            while self.children or not self.stopping:
                for key, _events in selector.select(timeout=1.0):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(wake_read, 512)
                    elif not self.stopping:
                        self._accept(wake_read, wake_write)
                        last_call = time.monotonic()
                self._reap()
                if not self.stopping and self._should_retire(last_call):
                    self._stop()
                if self.stopping and self.listener is not None:
                    selector.unregister(self.listener)
                    self._close_listener()
        finally:
            self._close_listener()

    def _should_retire(self, last_call: float) -> bool:
        if not self.children and time.monotonic() - last_call > self.idle_seconds:
            return True
        try:
            if os.stat(self.path).st_ino != self._inode:
                return True  # our socket was removed or replaced
        except OSError:
            return True
        return _changed(self.files)

    def _stop(self, *_args: object) -> None:
        self.stopping = True

    def _close_listener(self) -> None:
        if self.listener is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self.listener.close()
        self.listener = None

    def _accept(self, wake_read: int, wake_write: int) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            if _peer_uid(conn) != os.getuid():
                return conn.close()
            call, fds = _receive(conn)
        except (OSError, ValueError):
            return conn.close()
        if loader_mismatch(call.env, self.own_env) or _changed(self.files):
            for fd in fds:
                os.close(fd)
            conn.close()
            if _changed(self.files):
                self._stop()
            return
        # Blocking from here on, in both processes: a timeout is a flag of the descriptor
        # they share, so neither may change it after the fork (the child's watcher
        # would see EAGAIN where it waits for the launcher's end).
        conn.settimeout(None)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for fd in (wake_read, wake_write):
                    os.close(fd)
                if self.listener is not None:
                    self.listener.close()
                os.close(self.lock_fd)
                for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                gc.unfreeze()
                code = _run_child(conn, call, fds)
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
            finally:
                os._exit(code & 0xFF)
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):  # the launcher is gone; its child notices too
            conn.sendall(struct.pack("<i", pid))  # 4 bytes into an empty buffer
        self.children[pid] = conn

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            with contextlib.suppress(OSError):
                conn.sendall(struct.pack("<i", status))
            conn.close()


def start_in_background(env: Mapping[str, str]) -> None:
    """Start this installation's helper for the calls to come, detached from ours (a
    second start finds the lock taken and exits at once)."""
    pid = os.fork()
    if pid:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, 65536)
        os.chdir("/")
        os.execve(sys.executable, [sys.executable, "-m", "client.helper"], dict(env))
    finally:
        os._exit(127)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.helper",
        description="Serve the native launcher's drop-in calls (started by it on demand).",
    )
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS)
    args = parser.parse_args(argv)
    helper = Helper(socket_path(os.environ), args.idle_seconds)
    try:
        helper.bind()
    except Unavailable as exc:
        with contextlib.suppress(BrokenPipeError):
            print(f"dffmpeg helper: {exc}", file=sys.stderr)
        return 0 if "another helper" in str(exc) else 1
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EROFS, errno.ENOSPC):
            print(f"dffmpeg helper: cannot listen at {helper.path}: {exc}", file=sys.stderr)
            return 1
        raise
    helper.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
