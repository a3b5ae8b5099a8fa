"""Coordinator CPU for 100 idle workers, per transport.

For each transport a real coordinator runs with it enabled; a separate load process runs
100 real ``WorkerAgent``s (ffmpeg probed once and shared) as threads, each
negotiating the transport, passing the handshake, registering, heartbeating and
waiting for jobs exactly as a worker does. After a warm-up the coordinator's CPU time
(gunicorn master and workers, from /proc) is sampled over a window and shown as a
percentage of one core. The load process's own CPU is not counted.

    .venv/bin/python -m bench.transport_idle [--workers 100] [--seconds 30] [--heartbeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.transport_common import TRANSPORTS, coordinator
from tests.helpers import process_env

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and its children (gunicorn workers), in seconds."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def load(setup_json: str, heartbeat: float) -> None:
    """The load process: N worker agents as threads, until stdin closes."""
    import shutil

    import worker.agent
    from client.api import Api
    from dffmpeg.config import WorkerConfig
    from worker.agent import WorkerAgent

    # Every agent would probe the same ffmpeg; probe it once and hand out the result.
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    probed = worker.agent.probe_binaries({"ffmpeg": ffmpeg})
    worker.agent.probe_binaries = lambda _binaries: probed  # type: ignore[assignment]
    parties = json.loads(setup_json)
    agents = []
    for party in parties:
        config = WorkerConfig.from_dict(
            # Many agents in one process, no jobs: nothing to confine.
            {
                **party,
                "binaries": {"ffmpeg": ffmpeg},
                "heartbeat_seconds": heartbeat,
                "sandbox": False,
            }
        )
        agent = WorkerAgent(config, Api.from_config(config))
        agent.start()
        agents.append(agent)
    names = {a.downlink.name if a.downlink else "http" for a in agents}
    print(json.dumps({"ready": len(agents), "transports": sorted(names)}), flush=True)
    sys.stdin.read()
    for agent in agents:
        agent.stop()


def measure(name: str, workers: int, seconds: float, heartbeat: float) -> tuple[float, str]:
    identities = {f"idle-{i:03d}": "worker" for i in range(workers)}
    lease = {"worker_lease_seconds": max(15, int(heartbeat * 3))}
    with coordinator(name, identities, threads=workers + 64, extra=lease) as setup:
        parties = [setup.party(i) for i in identities]
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "bench.transport_idle"),
                *("--load", json.dumps(parties), "--heartbeat", str(heartbeat)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=process_env(),
        )
        assert proc.stdout is not None and proc.stdin is not None
        ready = json.loads(proc.stdout.readline())
        time.sleep(10)  # warm-up: registrations and handshakes are not idle work
        before = cpu_seconds(setup.coordinator_pid)
        start = time.monotonic()
        time.sleep(seconds)
        used = cpu_seconds(setup.coordinator_pid) - before
        elapsed = time.monotonic() - start
        proc.stdin.close()
        proc.wait(60)
        return 100.0 * used / elapsed, ",".join(ready["transports"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load(args.load, args.heartbeat)
        return
    print(f"| transport | coordinator CPU, {args.workers} idle workers | used by the workers |")
    print("|---|---|---|")
    for name in args.transports.split(","):
        percent, used = measure(name, args.workers, args.seconds, args.heartbeat)
        print(f"| {name} | {percent:.1f} % of one core | {used} |", flush=True)


if __name__ == "__main__":
    main()
