"""Submit-to-first-output and status propagation latency, per transport.

For each transport a real coordinator process runs with it enabled. A worker (a thread
here, using the real ``Downlink`` and the same endpoints and loop shape as the worker
agent, but no child process) waits for jobs over the transport, accepts each one, writes
one output frame, waits until the client has it, then finishes the job. The client
submits, negotiates its own downlink like the drop-in does, and follows the job with
the real ``JobSession``.

- submit-to-first-output: client's submit call starts -> first output byte written
  by the client (worker notification, claim, accept, output, client notification, read;
  no ffmpeg start-up, which is measured separately for comparison).
- status propagation: the worker sends ``finish`` -> the client has the final status
  (the coordinator's handling of ``finish`` included).

    .venv/bin/python -m bench.transport_latency [--runs 50] [--transports http,mqtt]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import threading
import time
from typing import Any

from bench.transport_common import TRANSPORTS, Setup, coordinator
from client.api import Api
from client.downlink import open_downlink
from client.job import JobSession
from client.submit import JobRequest, submit
from dffmpeg.config import ClientConfig, WorkerConfig
from dffmpeg.wire import Frame, FrameKind, encode_frames

IDENTITIES = {"bench-worker": "worker", "bench-client": "client"}


class Worker(threading.Thread):
    def __init__(self, setup: Setup) -> None:
        super().__init__(daemon=True)
        config = WorkerConfig.from_dict(
            {**setup.party("bench-worker"), "binaries": {"ffmpeg": "ffmpeg"}, "slots": 4}
        )
        self.config = config
        self.api = Api.from_config(config)
        self.downlink = open_downlink(self.api, config, "worker")
        if self.downlink is not None:
            self.downlink.watch("worker")
        self.api.call(
            "POST", "/workers/register", json_body={"slots": 4, "binaries": {"ffmpeg": {}}}
        )
        self.seen_output: dict[str, threading.Event] = {}
        self.finished_at: dict[str, float] = {}
        self.stop = threading.Event()
        self.started: set[str] = set()

    def run(self) -> None:
        downlink = self.downlink
        while not self.stop.is_set():
            long_poll = downlink is None or downlink.long_poll
            if downlink is not None and not long_poll:
                downlink.arm("worker")
            work = self.api.call(
                "GET", "/workers/poll", params={"wait": 5 if long_poll else 0}, timeout=40
            )
            for job in work.get("jobs", []):
                if job["job_id"] in self.started:
                    continue  # still "assigned" until our accept lands
                self.started.add(job["job_id"])
                threading.Thread(target=self.run_job, args=(job["job_id"],), daemon=True).start()
            if downlink is not None and not long_poll and not work.get("jobs"):
                downlink.wait("worker", 1.0)

    def run_job(self, job_id: str) -> None:
        seen = self.seen_output.setdefault(job_id, threading.Event())
        self.api.call("POST", f"/jobs/{job_id}/accept")
        frames = encode_frames([Frame(FrameKind.STDOUT, 1, b"x")])
        self.api.request(
            "POST",
            f"/jobs/{job_id}/output",
            body=frames,
            content_type="application/x-dffmpeg-frames",
        )
        seen.wait(10)
        self.finished_at[job_id] = time.perf_counter()
        self.api.call("POST", f"/jobs/{job_id}/finish", json_body={"exit_code": 0})


class TimedSession(JobSession):
    first_output: float = 0.0

    def _write(self, frame: Frame) -> None:
        if not self.first_output:
            self.first_output = time.perf_counter()
            self.on_first()
        super()._write(frame)

    def on_first(self) -> None:
        pass


def one_job(setup: Setup, worker: Worker, devnull: int) -> tuple[float, float]:
    config = ClientConfig.from_dict(setup.party("bench-client"))
    api = Api.from_config(config)
    start = time.perf_counter()
    job_id = submit(api, JobRequest(binary="ffmpeg", args=["-version"]))
    seen = worker.seen_output.setdefault(job_id, threading.Event())
    downlink = open_downlink(api, config, "client")
    session = TimedSession(api, job_id, devnull, devnull, downlink=downlink)
    session.on_first = seen.set  # type: ignore[method-assign]
    session.follow()
    done = time.perf_counter()
    api.close()
    return session.first_output - start, done - worker.finished_at[job_id]


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95) - 1)]


def measure(name: str, runs: int) -> dict[str, Any]:
    with coordinator(name, IDENTITIES) as setup:
        worker = Worker(setup)
        worker.start()
        devnull = os.open(os.devnull, os.O_WRONLY)
        first: list[float] = []
        status: list[float] = []
        for _ in range(3):  # warm-up: connections, caches
            one_job(setup, worker, devnull)
        for _ in range(runs):
            a, b = one_job(setup, worker, devnull)
            first.append(a)
            status.append(b)
        worker.stop.set()
        os.close(devnull)
        return {"first": stats(first), "status": stats(status)}


def ffmpeg_startup(runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["ffmpeg", "-hide_banner", "-version"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    args = parser.parse_args()
    local = ffmpeg_startup(20)
    print("| transport | submit→first output median | p95 | status median | p95 |")
    print("|---|---|---|---|---|")
    for name in args.transports.split(","):
        result = measure(name, args.runs)
        f_med, f_p95 = result["first"]
        s_med, s_p95 = result["status"]
        print(
            f"| {name} | {f_med * 1000:.1f} ms | {f_p95 * 1000:.1f} ms "
            f"| {s_med * 1000:.1f} ms | {s_p95 * 1000:.1f} ms |",
            flush=True,
        )
    print(f"\nlocal `ffmpeg -version` start-up, median of 20: {local * 1000:.1f} ms")


if __name__ == "__main__":
    main()
