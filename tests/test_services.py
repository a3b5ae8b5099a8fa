"""One owner starts and stops the coordinator's background services together
(coordinator/services.py), and a coordinator that starts judges no lease at once."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from coordinator.services import BackgroundServices


class Recorder:
    def __init__(self, name: str, log: list[str], fail_start: bool = False) -> None:
        self.name, self.log, self.fail_start = name, log, fail_start

    def start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")
        if self.name == "b":
            raise RuntimeError("b fails to stop")  # the others are still stopped


def test_started_together_and_stopped_in_reverse_each_one() -> None:
    log: list[str] = []
    services = BackgroundServices()
    for name in ("a", "b", "c"):
        services.add(name, Recorder(name, log))
    services.start()
    services.start()  # once only
    assert services.running
    with pytest.raises(RuntimeError):
        services.add("d", Recorder("d", log))
    services.stop()
    services.stop()  # idempotent
    assert log == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]


def test_a_service_that_fails_to_start_stops_the_others() -> None:
    log: list[str] = []
    services = BackgroundServices()
    services.add("a", Recorder("a", log))
    services.add("x", Recorder("x", log, fail_start=True))
    with pytest.raises(RuntimeError, match="x cannot start"):
        services.start()
    assert log == ["start a", "stop a"] and not services.running


def test_the_app_owns_its_threads_and_a_start_is_an_impairment(tmp_path: Path) -> None:
    from coordinator import create_app
    from coordinator.db import db

    before = {t.name for t in threading.enumerate()}
    app = create_app({"database_url": f"sqlite:///{tmp_path / 'c.db'}", "janitor_seconds": 60})
    services = app.extensions["dffmpeg.services"]
    assert services.names == ["database wake-ups", "janitor"]
    assert {"janitor", "wakeups"} <= {t.name for t in threading.enumerate()} - before
    # Started: no lease is judged before a whole lease has passed from now.
    with app.app_context():
        assert app.extensions["dffmpeg.serving"].latest() is not None
    services.stop()
    assert not {"janitor", "wakeups"} & ({t.name for t in threading.enumerate()} - before)
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
