"""Drop-in latencies against a local ffmpeg, on one machine, in one run.

Measures: fast probes (``-version``, ``-encoders``) local vs drop-in; the time from
writing ``q`` to exit for a running HLS transcode, local vs drop-in; drop-in start-up
(to exit against an unreachable coordinator) and its resident memory; stderr delivery
latency (a byte written by the worker's child to the moment the caller reads it).
Prints a Markdown table for docs/performance.md. Not run by the test suite.

    .venv/bin/python -m bench.dropin_latency [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Cluster, start_cluster
from tests.helpers import free_port

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"

# A stand-in "ffmpeg" for the stderr measurement: answers the worker's start-up probes,
# otherwise writes its wall-clock time to stderr every 100 ms, unbuffered.
TICKER = """#!{python}
import os, sys, time
if len(sys.argv) > 1 and sys.argv[-1].startswith("-") and sys.argv[-1] != "-tick":
    print("ticker version 1")
    sys.exit(0)
for _ in range(int(os.environ.get("TICKS", "40"))):
    os.write(2, ("%.6f\\n" % time.time()).encode())
    time.sleep(0.1)
"""


@contextmanager
def cluster(root: Path, media: Path, **worker: object) -> Iterator[Cluster]:
    root.mkdir()
    generator = start_cluster(root, media, worker_extra=dict(worker) or None)
    try:
        yield next(generator)
    finally:
        generator.close()


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def med_p95(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"{statistics.median(ordered) * 1000:.0f} ms ({p95 * 1000:.0f})"


def hls_args(clip: Path, out: Path) -> list[str]:
    return ["-hide_banner", "-re", "-stream_loop", "-1", "-i", str(clip), "-t", "30",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-c:a", "aac", "-f", "hls",
            "-hls_time", "1", "-hls_segment_filename", str(out / "h%d.ts"),
            str(out / "h.m3u8")]  # fmt: skip


def q_to_exit(cmd: list[str], out: Path, env: dict[str, str] | None) -> float:
    out.mkdir(parents=True)
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    assert proc.stdin is not None
    deadline = time.monotonic() + 30
    while not (out / "h1.ts").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    start = time.perf_counter()
    proc.stdin.write(b"q")
    proc.stdin.flush()
    proc.wait(timeout=30)
    elapsed = time.perf_counter() - start
    proc.stdin.close()
    return elapsed


def child_usage(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """(wall s, CPU s, max resident MB) of one run. Measured by ``/usr/bin/time`` (a small
    process) so the benchmark's own memory, copied at fork, does not count."""
    start = time.perf_counter()
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%U %S %M", *cmd], env=env, capture_output=True, check=False
    )
    wall = time.perf_counter() - start
    user, system, kb = out.stderr.split(b"\n")[-2].split()
    return wall, float(user) + float(system), int(kb) / 1024


def stderr_latency(c: Cluster) -> list[float]:
    proc = subprocess.Popen(
        [c.dropin("ffmpeg"), "-tick"],
        env=c.env(TICKS="40"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    delays = []
    buffered = b""
    while True:
        data = os.read(proc.stderr.fileno(), 65536)
        now = time.time()
        if not data:
            break
        buffered += data
        *lines, buffered = buffered.split(b"\n")
        delays += [now - float(line) for line in lines if line.strip()]
    proc.wait()
    proc.stderr.close()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--q-runs", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dffmpeg-bench-dropin-"))
    media = root / "media"
    media.mkdir()
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=duration=2:size=320x240:rate=25", "-f", "lavfi", "-i",
                    "sine=duration=2", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
                    "-shortest", str(media / "clip.mp4")], check=True)  # fmt: skip
    rows: list[tuple[str, str, str]] = []
    with cluster(root / "c1", media) as c:
        env = c.env()
        for option in ("-version", "-encoders"):
            loc = [timed([FFMPEG, option]) for _ in range(args.runs)]
            rem = [timed([c.dropin("ffmpeg"), option], env) for _ in range(args.runs)]
            rows.append((f"`ffmpeg {option}`, median (p95)", med_p95(loc), med_p95(rem)))
        probe_args = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                      str(c.client_media / "clip.mp4")]  # fmt: skip
        loc_p = [timed(["ffprobe", *probe_args]) for _ in range(args.runs)]
        rem_p = [timed([c.dropin("ffprobe"), *probe_args], env) for _ in range(args.runs)]
        overhead = statistics.median(rem_p) - statistics.median(loc_p)
        rows.append(("ffprobe JSON round-trip, median (p95)", med_p95(loc_p),
                     f"{med_p95(rem_p)}, +{overhead * 1000:.0f} ms"))  # fmt: skip
        loc_q = [
            q_to_exit([FFMPEG, *hls_args(c.client_media / "clip.mp4", out)], out, None)
            for out in (c.client_media / f"ql{i}" for i in range(args.q_runs))
        ]
        rem_q = [
            q_to_exit([c.dropin("ffmpeg"), *hls_args(c.client_media / "clip.mp4", out)], out, env)
            for out in (c.client_media / f"qr{i}" for i in range(args.q_runs))
        ]
        rows.append(("`q` written to exit (HLS), median (p95)", med_p95(loc_q), med_p95(rem_q)))
        bad = {**env, "DFFMPEG_CLIENT_CONFIG": str(root / "unreachable.yaml")}
        (root / "unreachable.yaml").write_text(
            c.client_config.read_text().replace(c.url, f"http://127.0.0.1:{free_port()}")
        )
        runs = [child_usage([c.dropin("ffprobe"), "-v", "error", "x.mkv"], bad)
                for _ in range(args.runs)]  # fmt: skip
        bare = [child_usage([sys.executable, "-c", "pass"], env) for _ in range(args.runs)]
        probe = [child_usage([c.dropin("ffmpeg"), "-version"], env) for _ in range(args.runs)]
        rows.append(
            ("drop-in start to exit (unreachable), wall", "-", med_p95([r[0] for r in runs]))
        )
        rows.append(
            ("drop-in start to exit (unreachable), CPU", "-", med_p95([r[1] for r in runs]))
        )
        rows.append(("drop-in `-version` (fast probe), CPU", "-", med_p95([r[1] for r in probe])))
        rows.append(("bare `python -c pass`, wall", "-", med_p95([r[0] for r in bare])))
        rows.append(("bare `python -c pass`, CPU", "-", med_p95([r[1] for r in bare])))
        rows.append(
            ("drop-in resident memory (max)", "-", f"{max(r[2] for r in runs + probe):.1f} MB")
        )
    ticker = root / "ticker"
    # The system's interpreter: a job sees only /usr and the mapped roots (the sandbox).
    ticker.write_text(TICKER.format(python=shutil.which("python3", path="/usr/bin") or "python3"))
    ticker.chmod(0o755)
    with cluster(root / "c2", media, binaries={"ffmpeg": str(ticker)}) as c:
        delays = stderr_latency(c)
    rows.append(("stderr write (worker child) to caller, median (p95)", "-", med_p95(delays)))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| measure | local ffmpeg | drop-in |")
    print("|---|---|---|")
    for name, loc_value, rem_value in rows:
        print(f"| {name} | {loc_value} | {rem_value} |")


if __name__ == "__main__":
    sys.exit(main())
