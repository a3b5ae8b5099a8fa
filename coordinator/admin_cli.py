"""``dffmpeg-admin``: manage users, jobs, workers and the schema on the database directly.

It needs no running coordinator, so the first identities can be made before one starts.
Every list/show command takes ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from flask import Flask

from coordinator import quotas, schema, users
from coordinator.db import db
from coordinator.errors import ApiError
from coordinator.models import Job, JobEvent, Worker
from dffmpeg.config import ConfigError, load_coordinator
from dffmpeg.text import table


def _app(config_file: str | None) -> Flask:
    from coordinator import create_app

    return create_app(
        load_coordinator(config_file),
        start_janitor=False,
        check_schema=False,
        start_transports=False,
    )


def _print(args: argparse.Namespace, data: Any, text: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(text(data))


def _fields(data: dict[str, Any]) -> str:
    return "\n".join(f"{key}: {value}" for key, value in data.items())


def _ensure_schema() -> None:
    """Users can be added to a brand-new database; an outdated one must be upgraded."""
    schema.ensure_current(db.engine)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    before, after = schema.upgrade(db.engine)
    _print(
        args, {"from": before, "to": after}, lambda d: f"schema upgraded: {d['from']} -> {d['to']}"
    )
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    _ensure_schema()
    created = users.add_user(args.client_id, args.role)
    _print(args, created, _fields)
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    _ensure_schema()
    rows = [u.to_dict() for u in users.list_users()]
    _print(args, rows, lambda r: table(r, ["client_id", "role", "created_at"]))
    return 0


def cmd_user_show(args: argparse.Namespace) -> int:
    _ensure_schema()
    _print(args, users.get_user(args.client_id).to_dict(), _fields)
    return 0


def cmd_user_delete(args: argparse.Namespace) -> int:
    _ensure_schema()
    users.delete_user(args.client_id)
    _print(args, {"deleted": args.client_id}, lambda d: f"deleted {d['deleted']}")
    return 0


def cmd_user_rotate(args: argparse.Namespace) -> int:
    _ensure_schema()
    _print(args, users.rotate_key(args.client_id), _fields)
    return 0


def cmd_user_quota(args: argparse.Namespace) -> int:
    _ensure_schema()
    defaults = load_coordinator(args.config).default_quotas
    changes = {
        name: getattr(args, name) for name in quotas.LIMITS if getattr(args, name) is not _UNSET
    }
    if changes:
        result = users.set_quota(args.client_id, changes, defaults)
    else:
        result = users.get_quota(args.client_id, defaults)

    def text(data: dict[str, Any]) -> str:
        rows = [
            {"limit": name, "value": value, "set": "yes" if name in data["overrides"] else ""}
            for name, value in data["quota"].items()
        ]
        return table(rows, ["limit", "value", "set"])

    _print(args, result, text)
    return 0


_UNSET = object()


def _limit_value(text: str) -> int | None:
    """A limit on the command line: an integer, or ``default`` to clear it."""
    if text == "default":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("an integer, or 'default'") from None


def cmd_job_list(args: argparse.Namespace) -> int:
    _ensure_schema()
    stmt = db.select(Job).order_by(Job.created_at.desc()).limit(args.limit)
    if args.state:
        stmt = stmt.where(Job.state == args.state)
    rows = [j.to_dict() for j in db.session.execute(stmt).scalars()]
    _print(
        args,
        rows,
        lambda r: table(
            r, ["job_id", "state", "binary", "requester", "worker_id", "exit_code", "created_at"]
        ),
    )
    return 0


def cmd_job_show(args: argparse.Namespace) -> int:
    _ensure_schema()
    job = db.session.get(Job, args.job_id)
    if job is None:
        raise ApiError(f"no job {args.job_id}")
    events = db.session.execute(
        db.select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
    ).scalars()
    data = {**job.to_dict(), "events": [e.to_dict() for e in events]}
    _print(args, data, _fields)
    return 0


def cmd_worker_list(args: argparse.Namespace) -> int:
    _ensure_schema()
    rows = [w.to_dict() for w in db.session.execute(db.select(Worker)).scalars()]
    _print(
        args,
        rows,
        lambda r: table(
            r, ["worker_id", "state", "slots", "labels", "path_variables", "last_seen_at"]
        ),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dffmpeg-admin", description=__doc__)
    parser.add_argument("--config", help="coordinator YAML config file")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    groups = parser.add_subparsers(dest="group", required=True)

    dbp = groups.add_parser("db", help="database schema").add_subparsers(dest="cmd", required=True)
    dbp.add_parser("upgrade", parents=[common], help="create or upgrade the schema").set_defaults(
        func=cmd_db_upgrade
    )

    user = groups.add_parser("user", help="users and keys").add_subparsers(
        dest="cmd", required=True
    )
    add = user.add_parser("add", parents=[common], help="create a user and print its key")
    add.add_argument("client_id")
    add.add_argument("--role", required=True, choices=["client", "worker", "admin"])
    add.set_defaults(func=cmd_user_add)
    user.add_parser("list", parents=[common]).set_defaults(func=cmd_user_list)
    for name, func in (
        ("show", cmd_user_show),
        ("delete", cmd_user_delete),
        ("rotate-key", cmd_user_rotate),
    ):
        sub = user.add_parser(name, parents=[common])
        sub.add_argument("client_id")
        sub.set_defaults(func=func)

    quota = user.add_parser(
        "quota",
        parents=[common],
        help="show an identity's limits; set them with the options (docs/api.md#limits)",
    )
    quota.add_argument("client_id")
    for name, limit in quotas.LIMITS.items():
        quota.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=_limit_value,
            default=_UNSET,
            metavar="N",
            help=f"{limit.what} (default {limit.default}; 'default' clears it)",
        )
    quota.set_defaults(func=cmd_user_quota)

    job = groups.add_parser("job", help="jobs").add_subparsers(dest="cmd", required=True)
    jl = job.add_parser("list", parents=[common])
    jl.add_argument("--state")
    jl.add_argument("--limit", type=int, default=100)
    jl.set_defaults(func=cmd_job_list)
    js = job.add_parser("show", parents=[common])
    js.add_argument("job_id")
    js.set_defaults(func=cmd_job_show)

    worker = groups.add_parser("worker", help="workers").add_subparsers(dest="cmd", required=True)
    worker.add_parser("list", parents=[common]).set_defaults(func=cmd_worker_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        app = _app(args.config)
        with app.app_context():
            result: int = args.func(args)
            return result
    except (ConfigError, ApiError, schema.SchemaError) as exc:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        print(f"dffmpeg-admin: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
