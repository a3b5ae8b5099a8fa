"""What the sandbox costs per job: the same jobs confined and unconfined, in one run.

Starts each job the way the worker does (``worker.sandbox.Sandbox`` and
``worker.process.Unconfined``, the same ``launch``), alternating confined and unconfined
runs so that noise from the shared machine falls on both alike. Measures each job's wall
time (start to exit, a blocking wait) and its CPU: the job's whole process tree (all
reaped descendants: bubblewrap, its init and the binary) plus the worker's own work to
start it. Prints a Markdown table for docs/performance.md. Not run by the test suite.

    .venv/bin/python -m bench.sandbox_cost [--runs 100]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path
from time import perf_counter

from worker.process import Unconfined
from worker.sandbox import Policy, Sandbox

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"
Runner = Sandbox | Unconfined
PR_SET_CHILD_SUBREAPER = 36


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return children.ru_utime + children.ru_stime + own.ru_utime + own.ru_stime


def become_subreaper() -> None:
    """Orphans of the job's tree (bubblewrap's monitor does not wait for its init) are
    reparented to us, so that reaping them counts their CPU in RUSAGE_CHILDREN."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def one(runner: Runner, argv: list[str], cwd: str) -> tuple[float, float]:
    """Wall and CPU seconds of one job, from launch to exit (the whole process tree)."""
    env = {"PATH": "/usr/bin:/bin"}
    cpu = cpu_seconds()
    start = perf_counter()
    process = runner.launch(argv, cwd=cwd, env=env)
    process.communicate()
    wall = perf_counter() - start
    reap_all()
    if process.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {process.returncode}")
    return wall, cpu_seconds() - cpu


def measure(
    jobs: dict[str, list[str]], runners: dict[str, Runner], runs: int, cwd: str
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    results: dict[tuple[str, str], list[tuple[float, float]]] = {
        (job, name): [] for job in jobs for name in runners
    }
    for _ in range(runs):
        for job, argv in jobs.items():
            for name, runner in runners.items():
                results[(job, name)].append(one(runner, argv, cwd))
    return results


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=100)
    options = parser.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clip = root / "clip.mp4"
        subprocess.run(
            [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=d=10:s=320x240:r=25",
             "-f", "lavfi", "-i", "sine=d=10", "-c:v", "libx264", "-c:a", "aac",
             "-shortest", str(clip)],
            check=True,
        )  # fmt: skip
        jobs = {
            "trivial ffmpeg job": [FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                                   "nullsrc=s=16x16:d=0.04", "-f", "null", "-"],
            "ffprobe JSON of a 10 s clip": [FFPROBE, "-v", "error", "-print_format", "json",
                                            "-show_format", "-show_streams", str(clip)],
        }  # fmt: skip
        sandbox = Sandbox(Policy(roots={"Media": str(root)}, binaries=(FFMPEG,)))
        runners: dict[str, Runner] = {"unconfined": Unconfined(), "confined": sandbox}
        measure(jobs, runners, 3, str(root))  # warm the page cache
        load = os.getloadavg()[0]
        results = measure(jobs, runners, options.runs, str(root))
        load_after = os.getloadavg()[0]
        sandbox.close()
    print(f"{options.runs} runs of each, alternating; load average {load:.2f} before, "
          f"{load_after:.2f} after\n")  # fmt: skip
    print(
        "| job | wall unconfined, median / p95 | wall confined, median / p95 "
        "| added wall, median | CPU unconfined | CPU confined | added CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for job in jobs:
        free = results[(job, "unconfined")]
        boxed = results[(job, "confined")]
        walls = [w for w, _ in free], [w for w, _ in boxed]
        cpus = [c for _, c in free], [c for _, c in boxed]
        added_wall = statistics.median(walls[1]) - statistics.median(walls[0])
        added_cpu = statistics.mean(cpus[1]) - statistics.mean(cpus[0])
        print(
            f"| {job} | {statistics.median(walls[0]) * 1000:.1f} / {p95(walls[0]) * 1000:.1f} ms "
            f"| {statistics.median(walls[1]) * 1000:.1f} / {p95(walls[1]) * 1000:.1f} ms "
            f"| +{added_wall * 1000:.1f} ms "
            f"| {statistics.mean(cpus[0]) * 1000:.1f} ms "
            f"| {statistics.mean(cpus[1]) * 1000:.1f} ms "
            f"| +{added_cpu * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
