"""``dffmpeg-client``: submit jobs and look at them from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from client.api import Api
from client.job import JobSession, explain, report
from client.submit import build_request, run, submit
from dffmpeg.config import ConfigError, load_client
from dffmpeg.exitcodes import ExitCode


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(_cell(r.get(c))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(_cell(r.get(c)).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if getattr(args, "json", False) else text)


def cmd_submit(args: argparse.Namespace, api: Api) -> int:
    argv = list(args.args)
    if argv and argv[0] == "--":
        argv = argv[1:]
    request = build_request(args.config_obj, args.binary, argv)
    request.priority = args.priority
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
    _emit(args, jobs, _table(jobs, columns))
    return 0


def cmd_job_show(args: argparse.Namespace, api: Api) -> int:
    job = api.call("GET", f"/jobs/{args.job_id}")["job"]
    lines = [f"{k}: {_cell(v)}" for k, v in job.items() if k != "events"]
    lines += [
        f"  {e['at']}  {e['from'] or '-'} -> {e['to']}  {e['reason'] or ''}" for e in job["events"]
    ]
    _emit(args, job, "\n".join(lines))
    return 0


def cmd_job_cancel(args: argparse.Namespace, api: Api) -> int:
    job = api.call("POST", f"/jobs/{args.job_id}/cancel")["job"]
    _emit(args, job, f"{job['job_id']}: {job['state']}")
    return 0


def cmd_job_attach(args: argparse.Namespace, api: Api) -> int:
    session = JobSession(api, args.job_id)
    outcome = session.follow()
    if outcome.message:
        report(outcome.message)
    return outcome.exit_code


def cmd_status(args: argparse.Namespace, api: Api) -> int:
    summary = api.call("GET", "/cluster")
    workers = api.call("GET", "/workers")["workers"]
    jobs = api.call("GET", "/jobs", params={"limit": 50})["jobs"]
    data = {"summary": summary, "workers": workers, "jobs": jobs}
    text = "\n\n".join(
        [
            "WORKERS\n"
            + _table(
                workers,
                [
                    "worker_id",
                    "state",
                    "slots",
                    "labels",
                    "path_variables",
                    "version",
                    "last_seen_at",
                ],
            ),
            "JOBS\n"
            + _table(
                jobs,
                ["job_id", "state", "binary", "requester", "worker_id", "exit_code", "created_at"],
            ),
        ]
    )
    _emit(args, data, text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dffmpeg-client", description=__doc__)
    parser.add_argument("--config", help="client YAML config file")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("submit", help="run a job: dffmpeg-client submit -- -i in.mkv out.mp4")
    sp.add_argument("--binary", default="ffmpeg", help="ffmpeg (default) or ffprobe")
    sp.add_argument("--detach", action="store_true", help="print the job id and exit")
    sp.add_argument("--priority", type=int, default=0)
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

    st = sub.add_parser("status", parents=[common], help="the cluster's workers and jobs")
    st.add_argument("--all", action="store_true", help="the whole cluster (admin role)")
    st.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.config_obj = load_client(args.config)
        api = Api.from_config(args.config_obj)
    except (ConfigError, ValueError) as exc:
        report(str(exc))
        return int(ExitCode.CONFIG_ERROR)
    try:
        result: int = args.func(args, api)
        return result
    except Exception as exc:
        failure = explain(exc)
        report(failure.message)
        return int(failure.code)


if __name__ == "__main__":
    sys.exit(main())
