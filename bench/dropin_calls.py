"""What a remote call costs a media server: the drop-in called as separate processes.

A media server starts a new ``ffmpeg``/``ffprobe`` process for every call, often several
at once; this benchmark does the same, against a real cluster on this machine (one or
two coordinator processes, one worker with 4 slots, the drop-in symlinked as
``ffmpeg``/``ffprobe``), with the local binaries measured in the same run, alternating.
Every wall time is a blocking wait (no polling steps); CPU of each process comes from
the kernel (the drop-in's own rusage, plus the local helper's /proc counters with the
calls it ran as its children; the coordinator's and the worker's around a batch of jobs).
The first call starts the bench's own local helper, as a media server's first call would;
``--no-helper`` measures the Python drop-in alone (``local_helper: false``).

    .venv/bin/python -m bench.dropin_calls [--database sqlite|mariadb|postgresql]
        [--transport http|mqtt|rabbitmq] [--coordinators 1|2] [--runs 20] [--no-helper]

Prints a Markdown table for docs/performance.md. Not run by the test suite. Each row is
a median (the stdout rows: of 5 calls, with their range after it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import databases
from tests.helpers import admin, free_port, health, process_env, running, wait_until, write_yaml

REPO = Path(__file__).resolve().parent.parent
FFMPEG = shutil.which("ffmpeg") or "ffmpeg"
FFPROBE = shutil.which("ffprobe") or "ffprobe"
TICKS = os.sysconf("SC_CLK_TCK")
TRIVIAL = ["-v", "error", "-f", "lavfi", "-i", "nullsrc=s=16x16:d=0.04", "-f", "null", "-"]
BROKERS = {
    "mqtt": {"mqtt": {"url": "mqtt://127.0.0.1:1883", "prefix": f"bench{os.getpid()}"}},
    "rabbitmq": {"rabbitmq": {"url": "amqp://guest:guest@127.0.0.1:5672/%2F"}},
}


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    bin_dir: Path
    coordinators: list[int]  # pids
    worker: int
    client_media: Path


def cpu_of(pid: int) -> float:
    """CPU seconds of a process and its live descendants (a gunicorn master's workers)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def own_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def helper_cpu(env: dict[str, str]) -> float:
    """CPU seconds of the local helper and of every call it ran (its reaped children),
    0 when none runs (the Python drop-in then pays everything in its own process)."""
    from client import helper

    try:
        pid = int(Path(helper.socket_path(env) + ".lock").read_text())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError):
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICKS


def descendants(pid: int) -> list[int]:
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in descendants(k)]


@contextmanager
def cluster(
    root: Path, media: Path, database: str, transport: str, count: int, local_helper: bool
) -> Iterator[Cluster]:
    root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = stack.enter_context(databases.fresh_database(database, root))
        ports = [free_port() for _ in range(count)]
        extra = BROKERS.get(transport, {})
        transports = ["http"] if transport == "http" else [transport, "http"]
        configs = [
            write_yaml(
                root / f"coordinator{i}.yaml",
                {
                    "host": "127.0.0.1",
                    "port": port,
                    "database_url": url,
                    "secret_key_file": str(root / "secret.key"),
                    "transports": transports,
                    **extra,
                },
            )
            for i, port in enumerate(ports)
        ]
        admin(configs[0], "db", "upgrade")
        keys = {
            name: admin(configs[0], "user", "add", name, "--role", role)["hmac_key"]
            for name, role in (("worker1", "worker"), ("client1", "client"))
        }
        env = process_env()
        pids = []
        for i, config in enumerate(configs):
            proc = stack.enter_context(
                running(
                    [sys.executable, "-m", "coordinator.serve", "--config", str(config)],
                    root / f"coordinator{i}.log",
                    env=env,
                )
            )
            pids.append(proc.pid)
        for port in ports:
            wait_until(lambda port=port: health(f"http://127.0.0.1:{port}") == 200, timeout=30)
        (root / "worker-media").symlink_to(media)
        (root / "client-media").symlink_to(media)
        worker_config = write_yaml(
            root / "worker.yaml",
            {"client_id": "worker1", "hmac_key": keys["worker1"],
             "coordinator_url": f"http://127.0.0.1:{ports[0]}",
             "paths": {"Media": str(root / "worker-media")},
             "binaries": {"ffmpeg": FFMPEG, "ffprobe": FFPROBE}, "slots": 4,
             "transports": transports, **extra},
        )  # fmt: skip
        client_config = write_yaml(
            root / "client.yaml",
            {"client_id": "client1", "hmac_key": keys["client1"],
             "coordinator_url": f"http://127.0.0.1:{ports[-1]}",
             "paths": {"Media": str(root / "client-media")}, "transports": transports,
             "local_helper": local_helper, **extra},
        )  # fmt: skip
        # The bench's own helper (client/helper.py), never one another program started.
        run_dir = root / "run"
        run_dir.mkdir(mode=0o700)
        worker = stack.enter_context(
            running(
                [sys.executable, "-m", "worker.cli", "--config", str(worker_config)],
                root / "worker.log",
                env=env,
            )
        )
        wait_until(lambda: _online(configs[0]), timeout=60)
        bin_dir = root / "bin"
        bin_dir.mkdir()
        for name in ("ffmpeg", "ffprobe"):
            (bin_dir / name).symlink_to(Path(sys.executable).parent / "dffmpeg-proxy")
        stack.callback(_stop_helper, run_dir)
        yield Cluster(
            root,
            process_env(DFFMPEG_CLIENT_CONFIG=str(client_config), XDG_RUNTIME_DIR=str(run_dir)),
            bin_dir,
            pids,
            worker.pid,
            root / "client-media",
        )


def _stop_helper(run_dir: Path) -> None:
    for lock in run_dir.glob("dffmpeg/*.lock"):
        with suppress(OSError, ValueError):
            os.kill(int(lock.read_text()), signal.SIGTERM)


def _online(config: Path) -> bool:
    rows: Any = admin(config, "worker", "list")
    return any(w["state"] == "online" for w in rows)


def call(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, bytes]:
    """Wall seconds (a blocking wait), the process's own CPU seconds, its stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}")
    return wall, usage.ru_utime + usage.ru_stime, out


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def concurrent(argv: list[str], env: dict[str, str] | None, jobs: int, callers: int) -> float:
    """Jobs per second for ``jobs`` calls made by ``callers`` threads at once."""
    left = list(range(jobs))
    lock = threading.Lock()

    def caller() -> None:
        while True:
            with lock:
                if not left:
                    return
                left.pop()
            call(argv, env)

    start = time.perf_counter()
    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return jobs / (time.perf_counter() - start)


def stdout_row(
    label: str,
    args: list[str],
    local_clip: str,
    remote_clip: str,
    dropin: str,
    env: Any,
    runs: int = 5,
) -> tuple[str, str, str, str]:
    """``runs`` calls of each, alternating, with ``CLIP`` in ``args`` replaced; the
    median rate of each, and whether every stdout was the same. ``{mb}`` in ``label``
    becomes the size in MB. Each call of the cluster follows a pause, as a media
    server's copy follows its other calls rather than the bench's batch of hundreds."""
    local_args = [local_clip if a == "CLIP" else a for a in args]
    remote_args = [remote_clip if a == "CLIP" else a for a in args]
    local_walls, remote_walls, outputs = [], [], []
    for _ in range(runs):
        wall, _, out = call([FFMPEG, *local_args])
        local_walls.append(wall)
        outputs.append(out)
        time.sleep(0.3)
        wall, _, out = call([dropin, *remote_args], env)
        remote_walls.append(wall)
        outputs.append(out)
    size = len(outputs[0])
    return (
        label.format(mb=size / 1e6),
        f"{size / statistics.median(local_walls) / 1e6:.0f} MB/s",
        f"{size / statistics.median(remote_walls) / 1e6:.0f} MB/s "
        f"({size / max(remote_walls) / 1e6:.0f}-{size / min(remote_walls) / 1e6:.0f})",
        "byte-identical" if all(out == outputs[0] for out in outputs) else "DIFFERENT",
    )


def startup_breakdown(env: dict[str, str], dropin: str, runs: int) -> list[tuple[str, str]]:
    """Mean CPU of each step of the drop-in's start, as separate processes: the
    interpreter alone, with ``site``, with the modules of the probe path, with those of
    the job path; then a whole fast probe and a whole trivial job for comparison."""
    python = sys.executable
    steps = [
        ("interpreter without site (`python -S -c pass`)", [python, "-S", "-c", "pass"]),
        ("interpreter with site (`python -c pass`)", [python, "-c", "pass"]),
        ("+ the probe path's modules (`import client.proxy, client.probes`)",
         [python, "-c", "import client.proxy, client.probes"]),
        ("+ the job path's modules (`client.submit`)",
         [python, "-c", "import client.proxy, client.probes, client.submit"]),
        ("a whole fast probe (`ffmpeg -hide_banner -version`; with its helper's child)",
         [dropin, "-hide_banner", "-version"]),
        ("a whole trivial job (with its helper's child)", [dropin, *TRIVIAL]),
    ]  # fmt: skip
    totals = [0.0] * len(steps)
    for _ in range(runs):  # interleaved, so that noise falls on every step alike
        for i, (_, argv) in enumerate(steps):
            before = helper_cpu(env)
            totals[i] += call(argv, env)[1] + helper_cpu(env) - before
    return [(label, ms(total / runs)) for (label, _), total in zip(steps, totals, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database", default="sqlite", choices=databases.KINDS)
    parser.add_argument("--transport", default="http", choices=["http", "mqtt", "rabbitmq"])
    parser.add_argument("--coordinators", type=int, default=1, choices=[1, 2])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--concurrent-jobs", type=int, default=200)
    parser.add_argument(
        "--no-helper",
        action="store_true",
        help="local_helper: false (every call runs the Python drop-in from its start)",
    )
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dffmpeg-bench-"))
    media = root / "media"
    media.mkdir()
    clip = media / "clip.mp4"
    # Noise keeps the encoder at its bitrate: ~9 MB, a real file's size for the copy case.
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=d=10:s=640x360:r=25",
                    "-f", "lavfi", "-i", "sine=d=10", "-vf", "noise=alls=20:allf=t",
                    "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "7M", "-maxrate", "7M",
                    "-bufsize", "2M", "-c:a", "aac", "-shortest", str(clip)],
                   check=True)  # fmt: skip
    # As scripts/install.sh leaves an install: every module compiled, so no call pays
    # for compiling (PYTHONDONTWRITEBYTECODE in a developer's shell would hide that).
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "dffmpeg", "client",
                    "coordinator", "worker", "console"], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    rows: list[tuple[str, str, str, str]] = []
    place = (options.database, options.transport, options.coordinators, not options.no_helper)
    with cluster(root / "c", media, *place) as c:
        dropin = {name: str(c.bin_dir / name) for name in ("ffmpeg", "ffprobe")}
        remote_clip = str(c.client_media / "clip.mp4")
        probe_args = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams"]
        for _ in range(3):  # warm caches, connections, the worker's first jobs
            call([dropin["ffprobe"], *probe_args, remote_clip], c.env)
            call([dropin["ffmpeg"], *TRIVIAL], c.env)
        load = os.getloadavg()[0]

        def pair(local: list[str], remote: list[str]) -> tuple[list[float], list[float]]:
            lw, rw = [], []
            for _ in range(options.runs):
                lw.append(call(local)[0])
                rw.append(call(remote, c.env)[0])
            return lw, rw

        lw, rw = pair(
            [FFPROBE, *probe_args, str(clip)], [dropin["ffprobe"], *probe_args, remote_clip]
        )
        rows.append(("ffprobe JSON of a 10 s clip, median", ms(statistics.median(lw)),
                     ms(statistics.median(rw)),
                     f"+{ms(statistics.median(rw) - statistics.median(lw))}"))  # fmt: skip
        lw, rw = pair(
            [FFMPEG, "-hide_banner", "-version"], [dropin["ffmpeg"], "-hide_banner", "-version"]
        )
        fast = "`ffmpeg -hide_banner -version` (fast probe), median"
        rows.append((fast, ms(statistics.median(lw)),
                     ms(statistics.median(rw)),
                     f"{statistics.median(rw) / statistics.median(lw):.2f}x"))  # fmt: skip
        # Trivial jobs in a row, with every process's CPU.
        coordinator_cpu = sum(cpu_of(p) for p in c.coordinators)
        worker_cpu = own_cpu(c.worker)
        served_cpu = helper_cpu(c.env)
        local_walls, local_cpu, walls, dropin_cpu = [], [], [], []
        for _ in range(options.runs):
            w, u, _ = call([FFMPEG, *TRIVIAL])
            local_walls.append(w)
            local_cpu.append(u)
            w, u, _ = call([dropin["ffmpeg"], *TRIVIAL], c.env)
            walls.append(w)
            dropin_cpu.append(u)
        coordinator_cpu = sum(cpu_of(p) for p in c.coordinators) - coordinator_cpu
        worker_cpu = own_cpu(c.worker) - worker_cpu
        served_cpu = helper_cpu(c.env) - served_cpu
        base = statistics.median(local_walls)
        over = [w - base for w in walls]
        rows.append(("trivial job, overhead over local: median / p95", ms(base),
                     f"{ms(statistics.median(walls))}",
                     f"+{ms(statistics.median(over))} / +{ms(p95(over))}"))  # fmt: skip
        runs = options.runs
        rows.append(("CPU per trivial job: ffmpeg / drop-in / coordinator / worker",
                     ms(statistics.mean(local_cpu)), "",
                     f"drop-in {ms(statistics.mean(dropin_cpu) + served_cpu / runs)} "
                     f"(the process the caller started {ms(statistics.mean(dropin_cpu))}), "
                     "coordinator "
                     f"{ms(coordinator_cpu / runs)}, worker {ms(worker_cpu / runs)}"))  # fmt: skip
        jobs = options.concurrent_jobs
        local_rate = concurrent([FFMPEG, *TRIVIAL], None, jobs, 8)
        remote_rate = concurrent([dropin["ffmpeg"], *TRIVIAL], c.env, jobs, 8)
        rows.append((f"{jobs} trivial jobs from 8 concurrent callers", f"{local_rate:.1f} jobs/s",
                     f"{remote_rate:.1f} jobs/s", f"{remote_rate / local_rate:.2f}x"))  # fmt: skip
        copy = ["-v", "error", "-i", "CLIP", "-map", "0", "-c", "copy", "-f", "mpegts", "-"]
        size = clip.stat().st_size
        rows.append(stdout_row(f"`-c copy -f mpegts -` of a {size / 1e6:.1f} MB file to stdout",
                               copy, str(clip), remote_clip, dropin["ffmpeg"], c.env))  # fmt: skip
        # The same file read 5 times over (``-stream_loop 4``): the job's fixed cost (its
        # start, ffmpeg's own start) spread over 5 times the bytes, nearer the rate at
        # which output flows once it does.
        rows.append(stdout_row("the same with `-stream_loop 4` ({mb:.0f} MB to stdout)",
                               ["-stream_loop", "4", *copy], str(clip), remote_clip,
                               dropin["ffmpeg"], c.env))  # fmt: skip
        breakdown = startup_breakdown(c.env, dropin["ffmpeg"], options.runs)
        load_after = os.getloadavg()[0]
    shutil.rmtree(root, ignore_errors=True)
    helper_state = "without" if options.no_helper else "with"
    print(f"{options.database}, {options.transport}, {options.coordinators} coordinator(s), "
          f"{helper_state} the local helper; "
          f"{options.runs} runs each, alternating; load average {load:.2f} before, "
          f"{load_after:.2f} after\n")  # fmt: skip
    print("| what | local | through the cluster | difference |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nThe drop-in's own CPU, step by step (mean of the runs):\n")
    print("| step | CPU |")
    print("|---|---|")
    for label, value in breakdown:
        print(f"| {label} | {value} |")


if __name__ == "__main__":
    main()
