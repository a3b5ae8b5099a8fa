"""Where a trivial job's time goes: requests, SQL statements and coordinator CPU per job.

Starts the cluster of ``bench/dropin_calls.py`` (a real coordinator process on SQLite
over HTTP, one real worker with its sandbox on), runs trivial jobs through the drop-in
one after another, and reads the coordinator's statement log
(``DFFMPEG_STATEMENT_LOG``, coordinator/statement_log.py) to say, per job: which
requests each party made, how many SQL statements each route ran and how long they
took, and how much CPU the coordinator's processes used (/proc/PID/stat, the gunicorn
master and its workers). The CPU figure comes from a second cluster without the
statement log, which costs CPU of its own. Prints Markdown for docs/performance.md.
Not run by the tests.

    .venv/bin/python -m bench.job_breakdown [--jobs 50]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from bench.dropin_calls import TRIVIAL, call, cluster, cpu_of, own_cpu
from coordinator.statement_log import ENV


@dataclass
class RouteFigures:
    requests: Counter[str] = field(default_factory=Counter)  # by the caller's role
    statements: Counter[str] = field(default_factory=Counter)  # by kind
    sql_ms: float = 0.0
    cpu_ms: float = 0.0


def read_log(path: Path) -> dict[str, RouteFigures]:
    routes: dict[str, RouteFigures] = defaultdict(RouteFigures)
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if fields[0] == "SQL":
            figures = routes[fields[1]]
            figures.statements[fields[2]] += 1
            figures.sql_ms += float(fields[3])
        elif fields[0] == "REQUEST":
            figures = routes[fields[1]]
            figures.requests[fields[2]] += 1
            figures.cpu_ms += float(fields[4])
    return routes


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def table(routes: dict[str, RouteFigures], jobs: int) -> list[str]:
    lines = [
        "| route | requests per job (by role) | SQL statements per job (by kind) "
        "| SQL time per job | request-thread CPU per job |",
        "|---|---|---|---|---|",
    ]
    total_requests = total_statements = 0
    total_sql = total_cpu = 0.0

    def per_job(counter: Counter[str]) -> str:
        return ", ".join(f"{kind} {n / jobs:.2g}" for kind, n in counter.most_common())

    def verbs(counter: Counter[str]) -> Counter[str]:
        return Counter(kind.split()[0] for kind in counter.elements())

    for route, f in sorted(routes.items(), key=lambda item: -sum(item[1].statements.values())):
        requests, statements = sum(f.requests.values()), sum(f.statements.values())
        total_requests += requests
        total_statements += statements
        total_sql += f.sql_ms
        total_cpu += f.cpu_ms
        name = "(outside a request: pre-check, janitor, wake-ups)" if route == "-" else route
        lines.append(
            f"| `{name}` | {requests / jobs:.2f} ({per_job(f.requests) or '-'}) "
            f"| {statements / jobs:.1f} ({per_job(verbs(f.statements))}) "
            f"| {f.sql_ms / jobs:.2f} ms | {f.cpu_ms / jobs:.2f} ms |"
        )
    lines.append(
        f"| **total** | {total_requests / jobs:.2f} | {total_statements / jobs:.1f} "
        f"| {total_sql / jobs:.2f} ms | {total_cpu / jobs:.2f} ms |"
    )
    return lines


def details(routes: dict[str, RouteFigures], jobs: int) -> list[str]:
    """Each route's statements per job by verb and table, for finding repeated reads."""
    lines = []
    for route, f in sorted(routes.items(), key=lambda item: -sum(item[1].statements.values())):
        kinds = ", ".join(f"{kind} {n / jobs:.2g}" for kind, n in f.statements.most_common())
        lines.append(f"- `{'outside a request' if route == '-' else route}`: {kinds}")
    return lines


@dataclass
class Run:
    routes: dict[str, RouteFigures]
    coordinator_cpu: float  # seconds, all jobs
    idle_cpu: float  # seconds of it the coordinator would have used doing nothing
    idle_rate: float  # CPU seconds a second with nothing to do
    worker_cpu: float
    dropin_cpu: list[float]
    walls: list[float]


def run(root: Path, jobs: int, warmup: int, idle_seconds: float, logged: bool) -> Run:
    """One cluster, ``jobs`` trivial jobs; with ``logged`` the statement log is on."""
    log = root / "statements.log"
    media = root / "media"
    media.mkdir(parents=True)
    # Every process of the cluster inherits it; only the coordinator reads it.
    if logged:
        os.environ[ENV] = str(log)
    else:
        os.environ.pop(ENV, None)
    # The drop-ins' incident records (client/incidents.py) of this run only: what other
    # programs on this machine recorded would be reported by our jobs.
    os.environ["XDG_STATE_HOME"] = str(root / "state")
    with cluster(root / "c", media, "sqlite", "http", 1, True) as c:
        dropin = str(c.bin_dir / "ffmpeg")
        for _ in range(warmup):  # connections, caches, the worker's first jobs
            call([dropin, *TRIVIAL], c.env)
        time.sleep(0.5)  # let the last job's trailing requests land before the cut
        # What the coordinator burns with nothing to do (the worker's held poll, the
        # wake-up poll, the janitor): part of every job's figure, by its wall time.
        before = sum(cpu_of(p) for p in c.coordinators)
        idle_start = time.perf_counter()
        time.sleep(idle_seconds)
        idle_rate = (sum(cpu_of(p) for p in c.coordinators) - before) / (
            time.perf_counter() - idle_start
        )
        if logged:
            log.write_text("")
        started = time.perf_counter()
        coordinator_cpu = sum(cpu_of(p) for p in c.coordinators)
        worker_cpu = own_cpu(c.worker)
        walls, dropin_cpu = [], []
        for _ in range(jobs):
            wall, cpu, _ = call([dropin, *TRIVIAL], c.env)
            walls.append(wall)
            dropin_cpu.append(cpu)
        coordinator_cpu = sum(cpu_of(p) for p in c.coordinators) - coordinator_cpu
        elapsed = time.perf_counter() - started
        worker_cpu = own_cpu(c.worker) - worker_cpu
        routes = read_log(log) if logged else {}
    return Run(
        routes, coordinator_cpu, idle_rate * elapsed, idle_rate, worker_cpu, dropin_cpu, walls
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dffmpeg-bench-breakdown-"))
    jobs = options.jobs
    load_before = loadavg()
    # Counted with the statement log on; the CPU figure comes from a second cluster
    # without it (the log writes a line per statement, which costs CPU of its own).
    counted = run(root / "counted", jobs, options.warmup, options.idle_seconds, True)
    plain = run(root / "plain", jobs, options.warmup, options.idle_seconds, False)
    load_after = loadavg()
    shutil.rmtree(root, ignore_errors=True)
    print(
        f"{jobs} trivial jobs through the drop-in, one after another (SQLite, HTTP, one "
        f"worker, sandbox on), twice; load average {load_before} at the start, "
        f"{load_after} at the end, {os.cpu_count()} cores\n"
    )
    print("\n".join(table(counted.routes, jobs)))
    print("\nStatements per job, by route, verb and table:\n")
    print("\n".join(details(counted.routes, jobs)))
    ms = 1000 / jobs
    print(
        f"\nper job, statement log off: coordinator CPU {plain.coordinator_cpu * ms:.1f} ms "
        f"(every gunicorn process, /proc; of which idle {plain.idle_cpu * ms:.1f} ms: "
        f"{plain.idle_rate * 1000:.1f} ms of CPU a second with nothing to do), "
        f"worker CPU {plain.worker_cpu * ms:.1f} ms (the agent alone), "
        f"drop-in CPU {statistics.mean(plain.dropin_cpu) * 1000:.0f} ms, "
        f"wall {statistics.median(plain.walls) * 1000:.0f} ms (median); "
        f"with the log on: coordinator CPU {counted.coordinator_cpu * ms:.1f} ms"
    )


if __name__ == "__main__":
    main()
