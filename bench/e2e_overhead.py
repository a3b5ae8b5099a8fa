"""What the cluster adds to a local ffmpeg on one machine.

Measures, in one run: ffprobe round-trip (local vs through the drop-in), a 10 s
transcode (local vs through the drop-in), drop-in start-up, and resident memory of the
coordinator, an idle worker and the drop-in. Prints a Markdown table for
docs/performance.md.

    .venv/bin/python -m bench.e2e_overhead [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.dropin_latency import cluster, timed


def stats(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.95) - 1)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pids_of(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--transcode-runs", type=int, default=3)
    # Long enough that the local transcode takes about 10 s on the 2-core machine.
    parser.add_argument("--clip-seconds", type=int, default=60)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dffmpeg-bench-"))
    media = root / "media"
    media.mkdir()
    source = media / "source.avi"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=duration={args.clip_seconds}:size=1280x720:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=10",
            "-c:v",
            "mpeg4",
            "-q:v",
            "5",
            "-c:a",
            "mp2",
            str(source),
        ],
        check=True,
    )
    with cluster(root / "cluster", media) as c:
        env = c.env()
        clip_local = str(c.worker_media / "source.avi")
        clip_remote = str(c.client_media / "source.avi")
        probe = ["-v", "error", "-print_format", "json", "-show_format", "-show_streams"]
        local_probe = [timed(["ffprobe", *probe, clip_local]) for _ in range(args.runs)]
        remote_probe = [
            timed([c.dropin("ffprobe"), *probe, clip_remote], env) for _ in range(args.runs)
        ]
        encode = ["-v", "error", "-y", "-i"]
        tail = ["-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac"]
        local_tx = [
            timed(["ffmpeg", *encode, clip_local, *tail, str(media / "l.mp4")])
            for _ in range(args.transcode_runs)
        ]
        remote_tx = [
            timed(
                [c.dropin("ffmpeg"), *encode, clip_remote, *tail, str(c.client_media / "r.mp4")],
                env,
            )
            for _ in range(args.transcode_runs)
        ]
        bad_env = {**os.environ, "DFFMPEG_CLIENT_CONFIG": str(root / "nowhere.yaml")}
        startup = []
        for _ in range(args.runs):
            start = time.perf_counter()
            subprocess.run([c.dropin("ffprobe"), "-version"], env=bad_env, capture_output=True)
            startup.append(time.perf_counter() - start)
        dropin_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        coordinator_rss = max(rss_mb(p) for p in pids_of(f"coordinator.serve --config {c.root}"))
        worker_rss = max(rss_mb(p) for p in pids_of(f"worker.cli --config {c.root}"))

    lp, lp95 = stats(local_probe)
    rp, rp95 = stats(remote_probe)
    lt, rt = statistics.median(local_tx), statistics.median(remote_tx)
    su, su95 = stats(startup)
    print(
        f"| ffprobe JSON round-trip, median (p95) | {lp * 1000:.0f} ms ({lp95 * 1000:.0f}) | "
        f"{rp * 1000:.0f} ms ({rp95 * 1000:.0f}) | +{(rp - lp) * 1000:.0f} ms, {rp / lp:.2f}x |"
    )
    print(
        f"| {args.clip_seconds} s 720p clip to H.264, median of {args.transcode_runs} "
        f"| {lt:.2f} s | "
        f"{rt:.2f} s | +{(rt - lt) * 1000:.0f} ms, {rt / lt:.3f}x |"
    )
    print(
        f"| drop-in start to exit (no config), median (p95) | - | {su * 1000:.0f} ms "
        f"({su95 * 1000:.0f}) | |"
    )
    print(
        f"| resident memory | coordinator {coordinator_rss:.0f} MB | idle worker "
        f"{worker_rss:.0f} MB | largest child (ffmpeg or drop-in) {dropin_rss:.0f} MB |"
    )


if __name__ == "__main__":
    sys.exit(main())
