"""Jobs per second through the whole lifecycle, per database.

Each trivial job (a tiny shell script offered by the workers) is submitted through the
API, claimed by a worker, accepted, run, its output relayed and its exit code reported,
and followed by its client to the final status. The figure is completed jobs divided
by the wall time from the first submission to the last final status.

    .venv/bin/python -m bench.db_throughput --databases sqlite,mariadb,postgresql

Not run by the test suite. Needs the database servers on 127.0.0.1 for those kinds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.db_wakeup import cpu_seconds
from tests import databases
from tests.multicluster import multi_cluster, run_jobs


def measure(kind: str, jobs: int, instances: int, processes: int, workers: int, slots: int) -> None:
    with tempfile.TemporaryDirectory(prefix=f"dffmpeg-bench-{kind}-") as tmp:
        root = Path(tmp)
        with (
            databases.fresh_database(kind, root) as url,
            multi_cluster(
                root, url, instances=instances, processes=processes, workers=workers, slots=slots
            ) as cluster,
        ):
            run_jobs(cluster, 20)  # warm-up: connections, pools, imports
            cpu_before = cpu_seconds(str(root))
            started = time.monotonic()
            results = run_jobs(cluster, jobs)
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(str(root)) - cpu_before
    ok = sum(1 for r in results if r.status.get("state") == "completed")
    latencies = sorted(r.done_at - r.submitted_at for r in results)
    print(
        f"{kind:10s} {instances}x{processes} coordinators, {workers}x{slots} slots: "
        f"{ok}/{jobs} jobs in {elapsed:.1f} s = {ok / elapsed:.1f} jobs/s; "
        f"submit->final median {statistics.median(latencies) * 1000:.0f} ms, "
        f"p95 {latencies[int(len(latencies) * 0.95) - 1] * 1000:.0f} ms; "
        f"coordinator CPU {cpu / jobs * 1000:.0f} ms per job; load {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--databases", default="sqlite,mariadb,postgresql")
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    for kind in databases.selected(args.databases):
        measure(kind, args.jobs, args.instances, args.processes, args.workers, args.slots)


if __name__ == "__main__":
    main()
