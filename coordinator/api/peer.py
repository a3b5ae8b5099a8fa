"""Whether the caller of a held request is still connected."""

from __future__ import annotations

import socket

from flask import request


def caller_gone() -> bool:
    """True when the caller closed its connection (its process exited or was killed).

    A long-poll can be held for many seconds after the worker behind it died; one that
    claimed a job then would strand the job until the worker's lease ran out. The kernel
    closes a dead process's sockets, so a peek at ours sees the end of the stream. Only
    gunicorn hands the socket over; elsewhere (tests' in-process client) the caller is
    assumed present.
    """
    sock = request.environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:  # connected, nothing sent: the usual case
        return False
    except ValueError:  # TLS sockets take no flags: cannot tell, assume present
        return False
    except OSError:  # reset, timed out
        return True
