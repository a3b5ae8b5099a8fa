"""What signing every answer costs the coordinator, per request, in one run.

The coordinator app in this process (SQLite in a temporary directory), driven through
Flask's test client with real signed requests; each kind of request is timed with the
answer signature on and, alternately, switched off (the after-request hook replaced by
a no-op), so the difference is the signature's own cost: hashing the body and one HMAC.
CPU time of this process (``time.process_time``), median of rounds. Prints a Markdown
table for docs/performance.md. Not run by the test suite.

    .venv/bin/python -m bench.answer_signing [--requests 300]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import coordinator.api as api_module
from coordinator import create_app, users
from dffmpeg.wire import Frame, FrameKind, encode_frames
from tests.helpers import SignedClient


def measure(call: Callable[[], Any], requests: int) -> float:
    start = time.process_time()
    for _ in range(requests):
        call()
    return (time.process_time() - start) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(
            {"database_url": f"sqlite:///{Path(folder) / 'c.db'}"},
            start_janitor=False,
            start_transports=False,
        )
        with app.app_context():
            keys = {name: users.add_user(name, role)["hmac_key"] for name, role in
                    (("client", "client"), ("worker", "worker"))}  # fmt: skip
        flask = app.test_client()
        client = SignedClient(flask, "client", keys["client"])
        worker = SignedClient(flask, "worker", keys["worker"])
        worker.post(
            "/api/v1/workers/register",
            json_body={"slots": 4, "binaries": {"ffmpeg": {"path": "/usr/bin/ffmpeg"}}},
        )
        sizes = {"small JSON (identity)": 0, "64 KiB of output": 64 * 1024,
                 "1 MiB of output": 1024 * 1024}  # fmt: skip
        reads: dict[str, Callable[[], Any]] = {}
        for label, size in sizes.items():
            if size == 0:
                reads[label] = lambda: client.get("/api/v1/doctor/identity")
                continue
            job = client.post("/api/v1/jobs", json_body={"binary": "ffmpeg", "args": ["-x"]})
            job_id = job.json["job"]["job_id"]
            worker.get("/api/v1/workers/poll?wait=0")
            worker.post(f"/api/v1/jobs/{job_id}/accept")
            frames = [Frame(FrameKind.STDOUT, i + 1, os.urandom(min(size, 65536)))
                      for i in range(max(1, size // 65536))]  # fmt: skip
            worker.post(
                f"/api/v1/jobs/{job_id}/output",
                data=encode_frames(frames),
                content_type="application/x-dffmpeg-frames",
            )
            path = f"/api/v1/jobs/{job_id}/output?after=0&wait=0"
            reads[label] = lambda path=path: client.get(path)
        signing_on = api_module.sign_answer
        results: dict[str, dict[str, list[float]]] = {k: {"on": [], "off": []} for k in reads}
        load = os.getloadavg()[0]
        for _ in range(options.rounds):
            for label, call in reads.items():
                api_module.sign_answer = signing_on  # type: ignore[attr-defined]
                results[label]["on"].append(measure(call, options.requests))
                api_module.sign_answer = lambda response: response  # type: ignore[attr-defined]
                results[label]["off"].append(measure(call, options.requests))
        api_module.sign_answer = signing_on  # type: ignore[attr-defined]
    print(f"{options.rounds} rounds of {options.requests} requests each, alternating; "
          f"load average {load:.2f}\n")  # fmt: skip
    print("| request | coordinator CPU, signed | unsigned | the signature's cost |")
    print("|---|---|---|---|")
    for label, times in results.items():
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        print(f"| {label} | {on * 1000:.2f} ms | {off * 1000:.2f} ms | "
              f"+{(on - off) * 1000:.3f} ms |")  # fmt: skip


if __name__ == "__main__":
    main()
