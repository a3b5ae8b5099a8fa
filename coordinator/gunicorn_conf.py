"""A gunicorn config for serving ``coordinator:create_app()`` with plain gunicorn.

``dffmpeg-coordinator`` does all of this itself. With gunicorn directly and more than
one worker process, use ``gunicorn -c python:coordinator.gunicorn_conf
'coordinator:create_app()'`` so that ``/metrics`` merges every process (see
coordinator/metrics_dir.py): the master makes the metrics directory when it reads this
file, forgets dead processes' gauges and removes the directory when it stops.
"""

from __future__ import annotations

from typing import Any

from coordinator.metrics_dir import MetricsDirectory

worker_class = "gthread"
threads = 32

_metrics = MetricsDirectory.create()


def child_exit(_arbiter: Any, worker: Any) -> None:
    _metrics.process_dead(worker.pid)


def on_exit(_arbiter: Any) -> None:
    _metrics.remove()
