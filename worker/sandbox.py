"""Every job's process confined by bubblewrap: it sees its media and nothing else.

What a confined job sees (docs/security-model.md has the threat model):

* ``/usr`` read-only (the binary and its libraries; Debian's merged ``/bin``, ``/lib``...
  as the same symlinks), the few files of ``/etc`` the dynamic loader and fontconfig
  read, a minimal ``/dev``, its own ``/proc``, a private ``/tmp`` and ``/run/dffmpeg``
  (private copies the worker made for it, such as mapped concat lists);
* the worker's mapped roots at their own paths, read-only where ``writable: false``,
  every one ``noexec`` (see ``worker.namespaces``);
* the devices of ``devices`` (and, for them, ``/sys``'s device tree read-only).

It runs with no capabilities, in its own user, pid, ipc, uts, cgroup and network
namespaces (no network at all unless ``allow_network``), optionally as ``job_user``. The
worker's config and key files are hidden even when they lie inside something visible.

bubblewrap does not forward signals to the process it starts, so the worker signals
that process directly (its pid in the worker's namespace is found through ``/proc``);
the exit status bubblewrap returns is the process's own (128+N for death by signal N).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from worker.namespaces import MountGuard, NamespaceError
from worker.process import Identity, with_parent_death

log = logging.getLogger(__name__)

# Debian and most distributions keep everything below /usr and link the rest to it.
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# What the dynamic loader, fontconfig (subtitles) and the time zone need of /etc.
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "fonts", "localtime")
# What name resolution and TLS need, given only with ``allow_network``.
NETWORK_ETC = (
    "resolv.conf",
    "hosts",
    "nsswitch.conf",
    "gai.conf",
    "host.conf",
    "services",
    "ssl",
    "ca-certificates",
)
# Read-only and harmless: the font cache, and the CPU list thread pools size themselves by.
EXTRA = ("/var/cache/fontconfig", "/sys/devices/system/cpu")
# The device tree drivers (libdrm, CUDA) walk to find the nodes they were given.
DEVICE_SYS = ("/sys/dev", "/sys/devices", "/sys/bus", "/sys/class")
PRIVATE_DIR = "/run/dffmpeg"
TMP_BYTES = 1024 * 1024 * 1024
CHECK_TIMEOUT = 30.0


class SandboxError(Exception):
    """The sandbox cannot be built on this host; the message says why, in one line."""


@dataclass(frozen=True)
class Policy:
    """What a worker's jobs may see and do (the worker's config keys)."""

    roots: Mapping[str, str]  # path variable -> root
    read_only: frozenset[str] = frozenset()
    allow_network: bool = False
    devices: Sequence[str] = ()
    job_user: str | None = None
    # Files the job must never see (the worker's config and key files).
    hidden: Sequence[str] = ()
    binaries: Sequence[str] = field(default_factory=tuple)


class Sandbox:
    """Starts, signals and stops confined processes under one ``Policy``."""

    confined = True

    def __init__(
        self, policy: Policy, bwrap: str = "bwrap", mounts: MountGuard | None = None
    ) -> None:
        """Check what the sandbox needs. Without ``mounts`` (made by the caller before it
        started any thread) this moves the process into its mount namespace
        (``worker.namespaces``): then it must be called before any thread starts."""
        path = shutil.which(bwrap)
        if path is None:
            raise SandboxError(
                "bubblewrap (bwrap) is not installed: install it, or set sandbox: off "
                "to run jobs unconfined"
            )
        self.bwrap = path
        self.policy = policy
        try:
            self.job_user = Identity.lookup(policy.job_user) if policy.job_user else None
        except ValueError as exc:
            raise SandboxError(str(exc)) from exc
        if self.job_user is not None and os.geteuid() != 0:
            raise SandboxError("job_user needs a worker running as root")
        try:
            self.mounts = mounts if mounts is not None else MountGuard(policy.roots.values())
        except NamespaceError as exc:
            raise SandboxError(f"cannot confine jobs: {exc}") from exc
        self._system = self._system_args()

    # -- building the command ---------------------------------------------------------

    def _system_args(self) -> list[str]:
        """The part of the command that is the same for every job."""
        policy = self.policy
        args = ["--unshare-all", "--die-with-parent", "--cap-drop", "ALL"]
        if policy.allow_network:
            args.append("--share-net")
        args += ["--ro-bind", "/usr", "/usr"]
        for name in TOP_LEVEL:
            host = f"/{name}"
            if os.path.islink(host):
                args += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):
                args += ["--ro-bind", host, host]
        # A tmpfs hides what was bound below it before: /tmp comes first.
        args += ["--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
        etc = ETC + (NETWORK_ETC if policy.allow_network else ())
        for name in etc:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for path in EXTRA:
            args += ["--ro-bind-try", path, path]
        # A binary outside /usr is shown alone, read-only, not its whole directory (which
        # may hold anything); its own libraries, if any, go in ``devices``.
        for binary in policy.binaries:
            real = os.path.realpath(binary)
            if not _inside(real, "/usr"):
                args += ["--ro-bind", real, real]
                if binary != real and not _inside(binary, "/usr"):
                    args += ["--symlink", real, binary]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for device in policy.devices:
            if _inside(device, "/dev"):
                args += ["--dev-bind-try", device, device]
            else:  # a driver directory or file (e.g. /etc/OpenCL/vendors)
                args += ["--ro-bind-try", device, device]
        if any(_inside(d, "/dev") for d in policy.devices):
            for path in DEVICE_SYS:
                args += ["--ro-bind-try", path, path]
        # Parents before children: a root inside another root is bound over it.
        for name, root in sorted(policy.roots.items(), key=lambda item: len(item[1])):
            kind = "--ro-bind-try" if name in policy.read_only else "--bind-try"
            # A root reached through a symlink is shown where the link leads too (first:
            # the link may lie in something visible and lead there), so absolute links
            # inside it keep working.
            real = os.path.realpath(root)
            if real != root:
                args += [kind, real, real]
            args += [kind, root, root]
        visible = ["/usr", "/etc", *policy.roots.values(), *policy.devices]
        for hidden in policy.hidden:
            if any(_inside(os.path.abspath(hidden), v) for v in visible):
                args += ["--ro-bind", "/dev/null", hidden]
        return args

    def command(self, argv: Sequence[str], cwd: str, files: Mapping[str, int]) -> list[str]:
        """The bubblewrap command line for one job. ``files``: name -> readable fd."""
        args = [self.bwrap, *self._system]
        if files:
            args += ["--dir", PRIVATE_DIR]
        for name, fd in files.items():
            args += ["--ro-bind-data", str(fd), private_path(name)]
        args += ["--chdir", cwd, "--", *argv]
        return args

    # -- running ----------------------------------------------------------------------

    def launch(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        files: Mapping[str, bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` confined, with pipes for its stdin, stdout and stderr.

        ``files`` (name -> content) appear read-only at ``private_path(name)``.
        """
        fds = {name: _memfd(name, data) for name, data in (files or {}).items()}
        try:
            self.mounts.ensure()
            # No Python code runs in the child (no preexec_fn), so the process can be
            # started with vfork: the worker's memory is not copied for every job.
            return subprocess.Popen(
                with_parent_death(self.command(argv, cwd, fds), self.job_user),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(env),
                start_new_session=True,
                pass_fds=tuple(fds.values()),
                bufsize=0,
            )
        except NamespaceError as exc:
            raise OSError(f"sandbox: {exc}") from exc
        finally:
            for fd in fds.values():
                os.close(fd)

    def deliver(self, process: subprocess.Popen[bytes], signum: int) -> None:
        """Send ``signum`` to the confined process itself (not to bubblewrap)."""
        if process.poll() is not None:
            return
        target = confined_pid(process.pid)
        if target is None:
            # Not started yet or already gone: bubblewrap's monitor takes it instead
            # (a terminating signal then ends the whole sandbox).
            target = process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signum)

    def stop(self, process: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM the confined process; SIGKILL the whole sandbox after ``grace``."""
        self.deliver(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def close(self) -> None:
        """Release the worker's hold on its roots (``MountGuard.close``)."""
        self.mounts.close()

    def check(self, binary: str) -> None:
        """Run ``binary -version`` confined once; raise SandboxError saying why not."""
        try:
            process = self.launch(
                [binary, "-hide_banner", "-version"], cwd="/tmp", env={"PATH": "/usr/bin:/bin"}
            )
            _, err = process.communicate(timeout=CHECK_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxError(f"cannot confine jobs: {exc}") from exc
        if process.returncode != 0:
            first = (err.decode(errors="replace").strip().splitlines() or ["no output"])[0]
            raise SandboxError(
                f"cannot confine jobs ({binary} exited {process.returncode}): {first}"
            )


def private_path(name: str) -> str:
    """Where a private file given to ``launch`` appears inside the sandbox."""
    return f"{PRIVATE_DIR}/{name}"


def confined_pid(bwrap_pid: int, wait: float = 0.2) -> int | None:
    """The pid of the process bubblewrap started, as the worker's namespace sees it.

    bubblewrap's monitor has one child, the new pid namespace's init; the job's process
    is that init's child. Both appear within milliseconds of the start.
    """
    deadline = time.monotonic() + wait
    while True:
        for init in _children(bwrap_pid):
            for child in _children(init):
                return child
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(p) for p in listing.read().split()]
    except (OSError, ValueError):
        return []


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(f"dffmpeg-{name}", 0)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _inside(path: str, tree: str) -> bool:
    tree = tree.rstrip("/") or "/"
    return tree == "/" or path == tree or path.startswith(tree + "/")
