"""``dffmpeg-client``: submit jobs and look at them from the command line.

Job ids may be given as any unique prefix of 6 or more characters. Text output shows
what other parties wrote (labels, versions, arguments, error texts) with control
characters made visible; ``--json`` output is exact JSON; ``job logs`` relays the job's
own bytes unchanged.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from client import incidents, manage, reporting, status
from client.api import Api, ApiError, AuthError
from client.job import (
    OUTPUT_WAIT_SECONDS,
    RECONNECT_SECONDS,
    ClusterFailure,
    JobSession,
    explain,
    report,
    write_all,
)
from client.submit import build_request, run, submit
from dffmpeg.config import ConfigError, load_client
from dffmpeg.exitcodes import ExitCode
from dffmpeg.text import cell, printable, table
from dffmpeg.wire import FrameKind, decode_frames

# The exit status of a command interrupted by SIGINT (128 + 2), as shells report it.
INTERRUPTED = 130


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def cmd_submit(args: argparse.Namespace, api: Api) -> int:
    argv = list(args.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    request = build_request(args.config_obj, args.binary, argv)
    if args.priority is not None:
        request.priority = args.priority
    request.required_labels = sorted({*request.required_labels, *args.require_label})
    request.preferred_labels = sorted({*request.preferred_labels, *args.prefer_label})
    if args.queue_timeout is not None:
        request.queue_timeout = args.queue_timeout
    if args.wait:
        request.wait_for_worker = True
    if args.detach:
        request.mode = "background"
        job_id = submit(api, request)
        print(job_id)
        return 0
    return run(api, request, config=args.config_obj)


def cmd_job_list(args: argparse.Namespace, api: Api) -> int:
    params = {"state": args.state} if args.state else None
    jobs = api.call("GET", "/jobs", params=params)["jobs"]
    columns = ["job_id", "state", "binary", "worker_id", "exit_code", "created_at"]
    _emit(args, jobs, table(jobs, columns))
    return 0


def job_text(job: dict[str, Any]) -> str:
    """A job as ``key: value`` lines, then its history; every value made printable."""
    lines = [f"{k}: {printable(cell(v))}" for k, v in job.items() if k != "events"]
    for event in job.get("events", []):
        reason = printable(event.get("reason") or "")
        lines.append(f"  {event['at']}  {event['from'] or '-'} -> {event['to']}  {reason}")
    return "\n".join(lines)


def cmd_job_show(args: argparse.Namespace, api: Api) -> int:
    job = api.call("GET", f"/jobs/{args.job_id}")["job"]
    _emit(args, job, job_text(job))
    return 0


def cmd_job_cancel(args: argparse.Namespace, api: Api) -> int:
    job = api.call("POST", f"/jobs/{args.job_id}/cancel")["job"]
    _emit(args, job, f"{job['job_id']}: {job['state']}")
    return 0


def full_id(api: Api, job_id: str) -> str:
    """The job's full id: a prefix is resolved once, not on every read of its output."""
    found: str = api.call("GET", f"/jobs/{job_id}")["job"]["job_id"]
    return found


def cmd_job_attach(args: argparse.Namespace, api: Api) -> int:
    session = JobSession(api, full_id(api, args.job_id))
    outcome = session.follow()
    if outcome.message:
        report(outcome.message)
    return outcome.exit_code


def cmd_job_logs(args: argparse.Namespace, api: Api) -> int:
    """The job's output so far (stdout to stdout, stderr to stderr); ``-f`` follows it."""
    job_id = full_id(api, args.job_id)
    after = 0
    while True:
        response = api.request(
            "GET",
            f"/jobs/{job_id}/output",
            params={"after": after, "wait": OUTPUT_WAIT_SECONDS if args.follow else 0},
            timeout=OUTPUT_WAIT_SECONDS + 30,
            retry_for=RECONNECT_SECONDS if args.follow else 0,
        )
        frames = list(decode_frames(response.body))
        for frame in frames:
            if frame.kind == FrameKind.STATUS:
                return 0
            write_all(2 if frame.kind == FrameKind.STDERR else 1, frame.data)
            after = frame.seq
        if not frames and not args.follow:
            return 0


def cmd_status(args: argparse.Namespace, api: Api) -> int:
    """Your own jobs; with ``--all`` (admin role) the whole cluster, as the console shows it."""
    params = {"limit": args.limit}
    if not args.all:
        page = api.call("GET", "/jobs", params=params)
        rows = [status.job_row(j, None) for j in page["jobs"]]
        _emit(args, page, status.text_table(status.JOB_COLUMNS, rows))
        return 0
    summary = api.call("GET", "/cluster")
    workers = api.call("GET", "/workers")["workers"]
    page = api.call("GET", "/jobs", params=params)
    warnings = status.warnings(summary)
    data = {
        "summary": summary,
        "workers": workers,
        "jobs": page["jobs"],
        "jobs_total": page["total"],
        "dropin_last_day": summary.get("dropin_last_day"),
        "warnings": warnings,
    }
    text = status.render(summary, workers, page["jobs"], page["total"])
    _emit(args, data, "\n\n".join([*warnings, text]))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """Every check in order; exit 0 only when all of them pass."""
    from client import doctor

    # The marks are not ASCII: a terminal that cannot show them gets "?", not a crash.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="replace")

    def emit(result: doctor.Result) -> None:
        if not args.json:
            print(doctor.line(result), flush=True)

    results = doctor.run(args.config, emit)
    ok = all(r.ok is True for r in results)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [r.to_json() for r in results]}, indent=2))
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dffmpeg-client", description=__doc__)
    parser.add_argument("--config", help="client YAML config file")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("submit", help="run a job: dffmpeg-client submit -- -i in.mkv out.mp4")
    sp.add_argument("--binary", default="ffmpeg", help="ffmpeg (default) or ffprobe")
    sp.add_argument("--detach", action="store_true", help="print the job id and exit")
    sp.add_argument("--priority", type=int, help="higher runs first (default: config, 0)")
    sp.add_argument(
        "--require-label",
        action="append",
        default=[],
        metavar="LABEL",
        help="run only on a worker with this label (repeatable)",
    )
    sp.add_argument(
        "--prefer-label",
        action="append",
        default=[],
        metavar="LABEL",
        help="prefer a worker with this label when one is free (repeatable)",
    )
    sp.add_argument(
        "--queue-timeout",
        type=float,
        metavar="SECONDS",
        help="fail if no worker takes the job within this time",
    )
    sp.add_argument(
        "--wait",
        action="store_true",
        help="queue even when no online worker can run the job yet",
    )
    sp.add_argument("args", nargs=argparse.REMAINDER)
    sp.set_defaults(func=cmd_submit)

    job = sub.add_parser("job", help="your jobs").add_subparsers(dest="job_command", required=True)
    jl = job.add_parser("list", parents=[common])
    jl.add_argument("--state")
    jl.set_defaults(func=cmd_job_list)
    for name, func in (
        ("show", cmd_job_show),
        ("cancel", cmd_job_cancel),
        ("attach", cmd_job_attach),
    ):
        p = job.add_parser(name, parents=[common])
        p.add_argument("job_id")
        p.set_defaults(func=func)

    lg = job.add_parser("logs", help="the job's output; -f follows it to the end")
    lg.add_argument("job_id")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.set_defaults(func=cmd_job_logs)

    st = sub.add_parser("status", parents=[common], help="the cluster's workers and jobs")
    st.add_argument("--all", action="store_true", help="the whole cluster (admin role)")
    st.add_argument("--limit", type=int, default=50, help="how many of the newest jobs")
    st.set_defaults(func=cmd_status)
    manage.add_parsers(sub, common)

    dr = sub.add_parser(
        "doctor",
        parents=[common],
        help="check config, coordinator, clock, key, role, paths and workers (exit 0: all fine)",
    )
    dr.set_defaults(func=None)
    return parser


def failure_of(args: argparse.Namespace, exc: Exception) -> ClusterFailure:
    """What the caller is told. A job that was submitted and refused is "job rejected";
    a lookup or an action the coordinator refused says why in its own words (no such
    job, an ambiguous or too short id, the job's state)."""
    if isinstance(exc, ApiError) and not isinstance(exc, AuthError) and args.func is not cmd_submit:
        return ClusterFailure(ExitCode.JOB_REJECTED, exc.message)
    return explain(exc)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":  # it judges the config itself
        return cmd_doctor(args)
    try:
        args.config_obj = load_client(args.config)
        api = Api.from_config(args.config_obj)
    except (ConfigError, ValueError) as exc:
        report(str(exc))
        return int(ExitCode.CONFIG_ERROR)
    # Reaching the coordinator is the moment to report what earlier drop-in runs recorded
    # (before ``status --all`` reads the totals); one stat when there is nothing.
    directory = incidents.directory_of(args.config_obj)
    if incidents.pending(directory):
        reporting.report(api, directory)
    try:
        result: int = args.func(args, api)
        return result
    except KeyboardInterrupt:
        # Ctrl-C while watching (attach, logs -f): stop watching, as a shell expects of
        # an interrupted command. The job itself is left alone.
        return INTERRUPTED
    except Exception as exc:
        failure = failure_of(args, exc)
        report(failure.message)
        return int(failure.code)


if __name__ == "__main__":
    sys.exit(main())
