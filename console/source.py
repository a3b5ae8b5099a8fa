"""The console's only way to the coordinator: its admin API, through a signed client.

:class:`ClusterSource` turns API calls into :class:`~console.model.Snapshot` and plain
results, and every failure into :class:`SourceError` with a sentence an operator can
act on. It takes any object with the ``call()`` method of :class:`client.api.Api`, so
tests can hand it a real ``Api`` or, for screenshots, a fixed-data stand-in.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from client.api import ApiError, AuthError, Unreachable
from console.filters import JobFilter
from console.model import JOB_PAGE, Snapshot

F = TypeVar("F", bound=Callable[..., Any])
# Network calls of the console never wait long: a slow coordinator shows as a banner.
TIMEOUT = 10.0


class CallsApi(Protocol):
    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]: ...

    def close(self) -> None:
        """Close the connections this client opened."""


class SourceError(Exception):
    """A failed call; ``kind`` is ``unreachable``, ``auth`` or ``refused``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def describe(exc: Exception) -> SourceError:
    if isinstance(exc, Unreachable):
        return SourceError("unreachable", f"cannot reach the coordinator ({exc})")
    if isinstance(exc, AuthError) and exc.status == 401:
        return SourceError(
            "auth", "the coordinator refused our credentials (check client_id and hmac_key)"
        )
    if isinstance(exc, AuthError):
        return SourceError("auth", f"not allowed: {exc.message}")
    if isinstance(exc, ApiError):
        return SourceError("refused", exc.message)
    return SourceError("refused", str(exc))


def _exclusive(method: F) -> F:
    """Run one public operation at a time, then close its connection.

    Every Textual thread worker is a new thread, and the API client keeps one
    connection per thread; closing after each operation keeps sockets from piling up.
    The lock makes that close safe (the client closes every thread's connection) and
    keeps a refresh and an action from racing; each is a few milliseconds.
    """

    @functools.wraps(method)
    def wrapper(self: ClusterSource, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            try:
                return method(self, *args, **kwargs)
            finally:
                self.api.close()

    return cast(F, wrapper)


class ClusterSource:
    def __init__(self, api: CallsApi, timeout: float = TIMEOUT) -> None:
        self.api = api
        self.timeout = timeout
        self._lock = threading.Lock()

    def abort(self) -> None:
        """Break off a call in flight (the console is quitting); safe from any thread."""
        abort = getattr(self.api, "abort", None)
        if abort is not None:
            abort()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self.api.call(method, path, **kwargs)
        except (ApiError, Unreachable) as exc:
            raise describe(exc) from exc

    @_exclusive
    def snapshot(
        self, job_filter: JobFilter | None = None, offset: int = 0, page: int = JOB_PAGE
    ) -> Snapshot:
        """One refresh: four requests, each a bounded query on the coordinator.

        A filter the coordinator refuses (400) is not an outage: the snapshot carries
        the reason in ``filter_error``, and no jobs.
        """
        params: list[tuple[str, Any]] = [("limit", page), ("offset", offset)]
        if job_filter is not None:
            params += job_filter.params()
        summary = self._call("GET", "/cluster")
        workers = self._call("GET", "/workers")["workers"]
        try:
            jobs = self._call("GET", "/jobs", params=params)
        except SourceError as exc:
            if not isinstance(exc.__cause__, ApiError) or exc.__cause__.status != 400:
                raise
            jobs = {"jobs": [], "total": 0}
            filter_error: str | None = exc.message
        else:
            filter_error = None
        users = self._call("GET", "/users")["users"]
        total = int(jobs.get("total", 0))
        return Snapshot(summary, workers, jobs["jobs"], total, users, offset, filter_error)

    @_exclusive
    def worker(self, worker_id: str) -> dict[str, Any]:
        """One worker's details and its ten newest jobs (``recent_jobs``)."""
        worker: dict[str, Any] = self._call("GET", f"/workers/{worker_id}")["worker"]
        params = {"worker": worker_id, "limit": 10}
        worker["recent_jobs"] = self._call("GET", "/jobs", params=params)["jobs"]
        return worker

    @_exclusive
    def change_worker(self, worker_id: str, **changes: Any) -> str:
        """Slots and/or labels (None: back to the worker's own config)."""
        worker = self._call("PATCH", f"/workers/{worker_id}", json_body=changes)["worker"]
        labels = ",".join(worker["labels"]) or "none"
        return f"worker {worker_id}: {worker['slots']} slots, labels {labels}"

    @_exclusive
    def job(self, job_id: str) -> dict[str, Any]:
        job: dict[str, Any] = self._call("GET", f"/jobs/{job_id}")["job"]
        return job

    @_exclusive
    def stderr(self, job_id: str, kb: int = 16) -> str:
        return str(self._call("GET", f"/jobs/{job_id}/stderr", params={"kb": kb})["stderr"])

    @_exclusive
    def cancel_job(self, job_id: str) -> str:
        job = self._call("POST", f"/jobs/{job_id}/cancel")["job"]
        return f"job {job_id[:12]} is {job['state']}"

    @_exclusive
    def add_user(self, client_id: str, role: str, networks: list[str]) -> dict[str, Any]:
        body = {"client_id": client_id, "role": role, "allowed_networks": networks}
        user: dict[str, Any] = self._call("POST", "/users", json_body=body)["user"]
        return user

    @_exclusive
    def rotate_key(self, client_id: str) -> dict[str, Any]:
        user: dict[str, Any] = self._call("POST", f"/users/{client_id}/rotate-key")["user"]
        return user

    @_exclusive
    def set_networks(self, client_id: str, networks: list[str]) -> str:
        body = {"allowed_networks": networks}
        user = self._call("PUT", f"/users/{client_id}/networks", json_body=body)["user"]
        allowed = ", ".join(user["allowed_networks"]) or "any network"
        return f"{client_id} may connect from {allowed}"

    @_exclusive
    def delete_user(self, client_id: str) -> str:
        self._call("DELETE", f"/users/{client_id}")
        return f"user {client_id} deleted"

    @_exclusive
    def drain_worker(self, worker_id: str) -> str:
        self._call("POST", f"/workers/{worker_id}/drain")
        return f"worker {worker_id} drained: it gets no new jobs"

    @_exclusive
    def resume_worker(self, worker_id: str) -> str:
        self._call("POST", f"/workers/{worker_id}/resume")
        return f"worker {worker_id} resumed"

    @_exclusive
    def remove_worker(self, worker_id: str) -> str:
        self._call("DELETE", f"/workers/{worker_id}")
        return f"worker {worker_id} removed"
