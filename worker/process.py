"""Keeping a job's processes bound to the job and to the worker.

Each job runs in its own session (so its own process group). Canceling signals the
whole group: SIGTERM, then SIGKILL after a grace period, so nothing the job started
outlives it. The child also asks the kernel to SIGKILL it when its parent dies
(``PR_SET_PDEATHSIG``), so even a SIGKILLed worker leaves no ffmpeg behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
        return prctl
    except (OSError, AttributeError):
        return None


# Looked up in the worker, never in a freshly forked child (dlopen after fork in a
# threaded process can deadlock).
_PRCTL = _load_prctl()


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for a job's child: SIGKILL it when this worker dies.

    Linux delivers the signal when the *thread* that forked the child ends, so the
    caller must keep that thread alive for as long as the process runs (the job's
    thread waits for it). Where prctl is unavailable the child runs unprotected.
    """
    worker_pid = os.getpid()
    prctl = _PRCTL

    def preexec() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != worker_pid:  # the worker died before prctl took effect
            os._exit(1)

    return preexec


def stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the process group of ``process``; SIGKILL it if it lingers past ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if wait is None:
            return
        try:
            process.wait(timeout=wait)
            # The leader is gone; anything else it started in its group goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


# util-linux's setpriv (essential on Debian) sets the parent-death signal and execs the
# job: the same guarantee as ``die_with_parent`` without Python code in the child.
SETPRIV = shutil.which("setpriv")


@dataclass(frozen=True)
class Identity:
    """The unprivileged user jobs run as (``job_user``)."""

    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> Identity:
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"job_user {name!r} does not exist") from exc
        if entry.pw_uid == 0:
            raise ValueError("job_user must not be root")
        return cls(entry.pw_uid, entry.pw_gid)


def with_parent_death(argv: Sequence[str], user: Identity | None = None) -> list[str]:
    """``argv`` run so that it is SIGKILLed when the worker's thread that started it ends
    (and, with ``user``, as that user: the uid changes first, since a change of uid
    clears the parent-death signal)."""
    if SETPRIV is None:
        raise OSError("setpriv (util-linux) is not installed")
    command = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
    if user is not None:
        switch = ["--reuid", str(user.uid), "--regid", str(user.gid), "--clear-groups"]
        command = [SETPRIV, *switch, "--", *command]
    return command


class Unconfined:
    """Starts jobs as plain children of the worker (``sandbox: off``).

    The same interface as ``worker.sandbox.Sandbox``; private files are written by the
    caller into the job's own temporary directory.
    """

    confined = False

    def launch(
        self,
        argv: Sequence[str],
        *,
        cwd: str,
        env: Mapping[str, str],
        files: Mapping[str, bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        if SETPRIV is not None:
            command, preexec = with_parent_death(argv), None
        else:
            command, preexec = list(argv), die_with_parent()
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
            preexec_fn=preexec,
            bufsize=0,
        )

    def deliver(self, process: subprocess.Popen[bytes], signum: int) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signum)

    def stop(self, process: subprocess.Popen[bytes], grace: float) -> None:
        stop_group(process, grace)
