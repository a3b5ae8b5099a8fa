"""The job lifecycle with real processes: a coordinator, workers running real ffmpeg,
the drop-in and the client CLI.

One coordinator serves the module; each test starts its own workers with a label of its
own and its jobs require that label (see tests/lifecycle_cluster.py).
"""

from __future__ import annotations

import itertools
import json
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from dffmpeg.exitcodes import ExitCode
from tests.helpers import BIN, process_env, wait_until
from tests.lifecycle_cluster import (
    TERMINAL,
    Coordinator,
    coordinator,
    kill_all,
    processes_with,
    submit,
    wait_gone,
)

# Real processes on a shared machine: starting a worker (it probes its binaries) takes
# seconds under load, so these tests get more than the default timeout.
pytestmark = pytest.mark.timeout(240)

LEASE_SECONDS = 5  # shorter than the default 15 s so the worker-loss test is quick


@pytest.fixture(scope="module")
def coord(tmp_path_factory: pytest.TempPathFactory, ffmpeg: str) -> Iterator[Coordinator]:
    root = tmp_path_factory.mktemp("lifecycle")
    with coordinator(root, worker_lease_seconds=LEASE_SECONDS) as running:
        yield running


def quick_job(marker: str) -> list[str]:
    """A fraction of a second of work; ``marker`` makes its process findable."""
    return ["-v", "error", "-f", "lavfi", "-i", f"anullsrc=d=0.3,{marker}", "-f", "null", "-"]


def long_job(marker: str, seconds: int = 60) -> list[str]:
    """A job that runs in real time (``-re``) for ``seconds``, using almost no CPU."""
    return [
        "-v",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        f"anullsrc=d={seconds},{marker}",
        "-f",
        "null",
        "-",
    ]


def mark() -> str:
    # A filter with a unique label: harmless, and visible in the process's command line.
    return f"anull@m{uuid.uuid4().hex[:12]}"


def max_overlap(jobs: list[dict[str, object]]) -> int:
    """Most jobs between accept and finish at one instant (an upper bound on how many
    processes ran at once)."""
    points = []
    for job in jobs:
        points.append((datetime.fromisoformat(str(job["started_at"])), 1))
        points.append((datetime.fromisoformat(str(job["finished_at"])), -1))
    points.sort(key=lambda p: (p[0], p[1]))  # an end before a start at the same instant
    return max(itertools.accumulate(delta for _, delta in points))


def test_four_slots_forty_jobs_all_complete_never_more_than_four(coord: Coordinator) -> None:
    api, _ = coord.client("slots-client")
    with coord.worker("slots-worker", ["slots"], slots=4):
        ids = [submit(api, quick_job(mark()), required_labels=["slots"]) for _ in range(40)]
        jobs = [coord.wait_job(job_id, TERMINAL, timeout=240) for job_id in ids]
    assert [j["state"] for j in jobs] == ["completed"] * 40
    assert {j["exit_code"] for j in jobs} == {0}
    assert {j["worker_id"] for j in jobs} == {"slots-worker"}
    overlap = max_overlap(jobs)
    assert overlap <= 4
    assert overlap >= 2  # the slots were really used in parallel


def test_kill_9_of_worker_fails_job_as_lost_and_leaves_no_ffmpeg(
    coord: Coordinator, tmp_path: Path
) -> None:
    _, config = coord.client("lost-client", require_labels=["lost"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ffmpeg").symlink_to(BIN / "dffmpeg-proxy")
    marker = mark()
    dropin: subprocess.Popen[bytes] | None = None
    try:
        with coord.worker("lost-worker", ["lost"]) as worker:
            dropin = subprocess.Popen(
                [str(bin_dir / "ffmpeg"), *long_job(marker)],
                env=process_env(DFFMPEG_CLIENT_CONFIG=str(config)),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            wait_until(lambda: processes_with(marker) and len(processes_with(marker)) > 1, 60)
            worker.kill()
            killed_at = time.monotonic()
            _, stderr = dropin.communicate(timeout=LEASE_SECONDS + 30)
            elapsed = time.monotonic() - killed_at
        assert dropin.returncode == ExitCode.WORKER_LOST, stderr
        assert stderr.startswith(b"dffmpeg: ") and b"worker lost" in stderr
        assert stderr.count(b"\n") == 1
        # Noticed once the lease ran out (plus a janitor sweep), not minutes later.
        assert elapsed < LEASE_SECONDS + 5, elapsed
        # The worker's ffmpeg died with it (PR_SET_PDEATHSIG): with its worker gone,
        # nothing else could stop it (the job's own 60 s are far off). Usually within a
        # second of the kill; a loaded machine tears the sandbox's namespaces down slowly.
        assert wait_gone(marker, timeout=20), processes_with(marker)
    finally:
        kill_all(processes_with(marker))
        if dropin is not None:  # its pipes closed even when the test failed early
            if dropin.poll() is None:
                dropin.kill()
            dropin.communicate(timeout=10)


NARROW_FFMPEG = """#!/bin/sh
# An ffmpeg that does not list libx264 among its encoders.
if [ "$1" = "-encoders" ]; then
    "{ffmpeg}" "$@" | grep -v ' libx264 '
    exit 0
fi
exec "{ffmpeg}" "$@"
"""


def test_capability_routing_between_two_workers(
    coord: Coordinator, tmp_path: Path, ffmpeg: str
) -> None:
    narrow = tmp_path / "narrow-ffmpeg"
    narrow.write_text(NARROW_FFMPEG.format(ffmpeg=ffmpeg))
    narrow.chmod(narrow.stat().st_mode | stat.S_IEXEC)
    api, _ = coord.client("caps-client")
    x264 = ["-v", "error", "-f", "lavfi", "-i", "testsrc=d=0.2:s=64x64", "-c:v", "libx264"]
    mpeg4 = [*x264[:-1], "mpeg4"]
    out = ["-f", "null", "-"]
    with (
        coord.worker("caps-full", ["caps", "full"], slots=2),
        coord.worker("caps-narrow", ["caps", "narrow"], slots=2, binaries={"ffmpeg": str(narrow)}),
    ):
        assert (
            "libx264"
            not in coord.worker_row("caps-narrow")["binaries"]["ffmpeg"]["capabilities"]["encoders"]
        )
        h264_jobs = [submit(api, [*x264, *out], required_labels=["caps"]) for _ in range(6)]
        any_jobs = [submit(api, [*mpeg4, *out], required_labels=["caps"]) for _ in range(6)]
        on_narrow = submit(api, [*mpeg4, *out], required_labels=["narrow"])
        impossible = coord.job(submit(api, [*x264, *out], required_labels=["narrow"]))
        done = {j: coord.wait_job(j, TERMINAL, 120) for j in [*h264_jobs, *any_jobs, on_narrow]}
    assert {done[j]["worker_id"] for j in h264_jobs} == {"caps-full"}
    assert all(d["state"] == "completed" and d["exit_code"] == 0 for d in done.values())
    assert done[on_narrow]["worker_id"] == "caps-narrow"
    assert impossible["state"] == "failed" and impossible["failure"] == "no_capable_worker"
    assert "caps-narrow lacks encoder libx264" in impossible["reason"]


def test_first_sigterm_drains_second_aborts(coord: Coordinator) -> None:
    api, _ = coord.client("drain-client")
    finishing, aborted = mark(), mark()
    try:
        with coord.worker("drain-worker", ["drain"]) as worker:
            running = submit(api, long_job(finishing, seconds=4), required_labels=["drain"])
            coord.wait_job(running, {"running"})
            worker.send_signal(signal.SIGTERM)
            wait_until(lambda: coord.worker_row("drain-worker")["state"] == "draining", 20)
            queued = submit(api, quick_job(mark()), required_labels=["drain"], wait_for_worker=True)
            done = coord.wait_job(running, TERMINAL, 60)
            assert worker.wait(timeout=30) == 0
            assert (done["state"], done["exit_code"]) == ("completed", 0)
            assert coord.worker_row("drain-worker")["state"] == "offline"
            # Nothing was handed to the draining worker.
            assert coord.job(queued)["state"] == "pending"
            coord.admin_api.call("POST", f"/jobs/{queued}/cancel")

        with coord.worker("drain-worker-2", ["drain2"]) as worker:
            job = submit(api, long_job(aborted), required_labels=["drain2"])
            coord.wait_job(job, {"running"})
            wait_until(lambda: processes_with(aborted), 20)
            worker.send_signal(signal.SIGTERM)
            wait_until(lambda: coord.worker_row("drain-worker-2")["state"] == "draining", 20)
            worker.send_signal(signal.SIGTERM)
            ended = coord.wait_job(job, TERMINAL, 30)
            assert worker.wait(timeout=30) == 0
        assert ended["state"] == "failed" and ended["failure"] == "worker_lost"
        assert "worker shutting down" in ended["reason"]
        assert wait_gone(aborted, timeout=5)
    finally:
        kill_all(processes_with(finishing) + processes_with(aborted))


CHILD_SPAWNING_FFMPEG = """#!/bin/sh
# For jobs (not the start-up probes) it starts a helper of its own, as some wrappers
# and hardware tools do, then ffmpeg.
if [ "$1" = "-v" ]; then
    sh -c 'sleep 300; :' {marker} </dev/null >/dev/null 2>&1 &
fi
exec "{ffmpeg}" "$@"
"""


def test_cancel_stops_the_whole_process_group(
    coord: Coordinator, tmp_path: Path, ffmpeg: str
) -> None:
    helper, job_marker = f"helper{uuid.uuid4().hex[:8]}", mark()
    wrapper = tmp_path / "ffmpeg-with-helper"
    wrapper.write_text(CHILD_SPAWNING_FFMPEG.format(ffmpeg=ffmpeg, marker=helper))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    api, config = coord.client("cancel-client")
    try:
        with coord.worker("cancel-worker", ["cancel"], binaries={"ffmpeg": str(wrapper)}):
            job = submit(api, long_job(job_marker), required_labels=["cancel"])
            wait_until(lambda: processes_with(helper) and processes_with(job_marker), 30)
            reply = subprocess.run(
                [str(BIN / "dffmpeg-client"), "--config", str(config), "job", "cancel", job],
                capture_output=True,
                timeout=60,
                env=process_env(),
            )
            assert reply.returncode == 0, reply.stderr
            ended = coord.wait_job(job, TERMINAL, 30)
            assert ended["state"] == "canceled"
            assert wait_gone(job_marker, timeout=10)
            assert wait_gone(helper, timeout=10)  # the helper died with its group
    finally:
        kill_all(processes_with(helper) + processes_with(job_marker))


def test_unmounted_path_variable_is_not_offered(coord: Coordinator, tmp_path: Path) -> None:
    media, spare = tmp_path / "media", tmp_path / "spare"
    media.mkdir()
    spare.mkdir()
    api, _ = coord.client("mounts-client")
    paths = {"Media": str(media), "Spare": str(spare)}
    with coord.worker("mounts-worker", ["mounts"], paths=paths, mount_check_seconds=0.5):
        assert coord.worker_row("mounts-worker")["path_variables"] == ["Media", "Spare"]
        spare.rmdir()  # the mount went away
        wait_until(lambda: coord.worker_row("mounts-worker")["path_variables"] == ["Media"], 20)
        job = coord.job(
            submit(api, ["-i", "$Spare/in.mkv", "-f", "null", "-"], required_labels=["mounts"])
        )
        assert job["state"] == "failed" and "mounts-worker lacks path $Spare" in job["reason"]
        spare.mkdir()  # and came back
        wait_until(
            lambda: coord.worker_row("mounts-worker")["path_variables"] == ["Media", "Spare"], 20
        )


def client_cli(config: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / "dffmpeg-client"), "--config", str(config), *args],
        capture_output=True,
        timeout=60,
        env=process_env(),
        **kwargs,  # type: ignore[arg-type]
    )


def test_background_job_detach_attach_list_show_logs(coord: Coordinator) -> None:
    _, config = coord.client("bg-client", require_labels=["bg"])
    with coord.worker("bg-worker", ["bg"]):
        args = ["-re", "-f", "lavfi", "-i", "sine=d=1", "-f", "null", "-"]
        detached = client_cli(config, "submit", "--detach", "--", *args)
        assert detached.returncode == 0, detached.stderr
        job_id = detached.stdout.decode().strip()
        assert len(job_id) == 32
        follow = client_cli(config, "job", "logs", "-f", job_id)
        assert follow.returncode == 0
        assert b"Output #0, null" in follow.stderr  # ffmpeg's own log, as it was written
        attach = client_cli(config, "job", "attach", job_id)
        assert attach.returncode == 0  # the job's exit code
        assert attach.stderr == follow.stderr
        logs = client_cli(config, "job", "logs", job_id)
        assert logs.stderr == follow.stderr
        listed = json.loads(client_cli(config, "job", "list", "--json").stdout)
        assert [j["job_id"] for j in listed] == [job_id]
        shown = json.loads(client_cli(config, "job", "show", job_id, "--json").stdout)
        assert [e["to"] for e in shown["events"]] == ["pending", "assigned", "running", "completed"]
        text = client_cli(config, "job", "show", job_id).stdout.decode()
        assert "pending -> assigned  assigned to bg-worker" in text
        # A relative name: absolute paths outside the mapped roots are refused (202).
        failing = client_cli(config, "submit", "--detach", "--", "-i", "nonexistent.mkv", "-")
        bad_id = failing.stdout.decode().strip()
        coord.wait_job(bad_id, TERMINAL)
        assert client_cli(config, "job", "attach", bad_id).returncode == 1  # ffmpeg's own code


def test_submit_flags_reach_the_job(coord: Coordinator) -> None:
    _, config = coord.client("flags-client", prefer_labels=["fast"], queue_timeout=30)
    with coord.worker("flags-worker", ["flags"]):
        reply = client_cli(
            config,
            "submit",
            "--detach",
            "--require-label",
            "nowhere",
            "--prefer-label",
            "ssd",
            "--priority",
            "5",
            "--",
            "-i",
            "x",
            "-c:v",
            "libx265",
            "y.mkv",
        )
        job = coord.job(reply.stdout.decode().strip())
        assert job["required_labels"] == ["nowhere"]
        assert job["preferred_labels"] == ["fast", "ssd"]
        assert job["priority"] == 5 and job["queue_deadline"] is not None
        assert job["needs"] == {"encoders": ["libx265"]}
        # Nobody has the label: it failed at once, and the caller is told why.
        assert job["state"] == "failed" and "label nowhere" in job["reason"]
        attach = client_cli(config, "job", "attach", job["job_id"])
        assert attach.returncode == ExitCode.NO_CAPABLE_WORKER
        assert b"label nowhere" in attach.stderr
        waiting = client_cli(
            config, "submit", "--detach", "--wait", "--queue-timeout", "1", "--require-label", "x"
        )
        queued = coord.wait_job(waiting.stdout.decode().strip(), TERMINAL, 20)
        assert queued["failure"] == "queue_timeout"
        timed_out = client_cli(config, "job", "attach", queued["job_id"])
        assert timed_out.returncode == ExitCode.NO_CAPABLE_WORKER
        assert b"queue timeout" in timed_out.stderr
