"""Burst benchmark: 20 one-second jobs on one 4-slot worker.

Ideal makespan is 5 s (20 jobs / 4 slots x 1 s). Measures the cluster's makespan (first
submit to last job finished, from the coordinator's own timestamps and as the caller saw
it) and the same 20 jobs run locally 4 at a time, for the ratio.

Run: .venv/bin/python -m bench.burst   (not part of the test suite)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from tests.lifecycle_cluster import TERMINAL, coordinator, submit

JOBS = 20
SLOTS = 4
# One second of real time (-re) with next to no CPU: the benchmark measures scheduling,
# not the machine's encoding speed.
ARGS = ["-v", "error", "-re", "-f", "lavfi", "-i", "anullsrc=d=1", "-f", "null", "-"]


def local_makespan(ffmpeg: str) -> float:
    start = time.monotonic()
    with ThreadPoolExecutor(SLOTS) as pool:
        list(pool.map(lambda _: subprocess.run([ffmpeg, *ARGS], check=True), range(JOBS)))
    return time.monotonic() - start


def cluster_makespan() -> tuple[float, float, float]:
    """(caller-seen makespan, coordinator-recorded makespan, mean queue wait)."""
    with tempfile.TemporaryDirectory() as tmp, coordinator(Path(tmp)) as coord:
        api, _ = coord.client("bench-client")
        with coord.worker("bench-worker", ["bench"], slots=SLOTS):
            begin = time.monotonic()
            ids = [submit(api, ARGS, required_labels=["bench"]) for _ in range(JOBS)]
            done = [coord.wait_job(j, TERMINAL, timeout=120) for j in ids]
            seen = time.monotonic() - begin
        assert all(d["state"] == "completed" and d["exit_code"] == 0 for d in done), done
        created = min(datetime.fromisoformat(d["created_at"]) for d in done)
        finished = max(datetime.fromisoformat(d["finished_at"]) for d in done)
        waits = [
            (datetime.fromisoformat(d["started_at"]) - datetime.fromisoformat(d["created_at"]))
            for d in done
        ]
        recorded = (finished - created).total_seconds()
        # Queue wait includes waiting for a free slot, which is most of it by design.
        mean_wait = sum(w.total_seconds() for w in waits) / len(waits)
        return seen, recorded, mean_wait


def main() -> int:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("ffmpeg not found", file=sys.stderr)
        return 1
    ideal = JOBS / SLOTS * 1.0
    local = local_makespan(ffmpeg)
    seen, recorded, mean_wait = cluster_makespan()
    print(f"jobs={JOBS} slots={SLOTS} ideal={ideal:.2f}s")
    print(f"local 4-parallel makespan: {local:.2f}s ({local / ideal:.2f}x ideal)")
    print(
        f"cluster makespan (coordinator timestamps): {recorded:.2f}s "
        f"({recorded / ideal:.2f}x ideal, {recorded / local:.2f}x local)"
    )
    print(f"cluster makespan (as the caller saw it): {seen:.2f}s ({seen / ideal:.2f}x ideal)")
    print(f"mean time from submit to start: {mean_wait:.2f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
