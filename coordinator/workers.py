"""What an operator does to a worker: drain, resume, remove.

Shared by the admin API (``coordinator.api.workers``) and ``dffmpeg-admin``, which
works on the database directly; a running coordinator learns of a change through its
database wake-ups (``coordinator.wakeups``).
"""

from __future__ import annotations

from flask import current_app

from coordinator import scheduler
from coordinator.db import db
from coordinator.errors import Conflict, NotFound
from coordinator.models import Worker


def find(worker_id: str) -> Worker:
    worker = db.session.get(Worker, worker_id)
    if worker is None:
        raise NotFound(f"no worker {worker_id}")
    return worker


def drain(worker_id: str) -> Worker:
    """Give the worker no new jobs; the ones it runs finish normally. Survives the
    worker restarting (``drained`` is separate from its state)."""
    worker = find(worker_id)
    worker.drained = True
    db.session.commit()
    return worker


def resume(worker_id: str) -> Worker:
    """Undo a drain; the worker's own poll looks at the queue again at once."""
    worker = find(worker_id)
    worker.drained = False
    db.session.commit()
    current_app.extensions["dffmpeg.notifier"].notify(f"worker:{worker_id}")
    return worker


def remove(worker_id: str) -> None:
    """Forget a worker that is gone for good. A live one registers again on its own;
    to keep it out, drain it or delete its user."""
    worker = find(worker_id)
    busy = scheduler.active_count(worker_id)
    if busy:
        raise Conflict(f"worker {worker_id} still holds {busy} job(s); drain it first")
    db.session.delete(worker)
    db.session.commit()
