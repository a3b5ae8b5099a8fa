"""``dffmpeg-admin``: manage users, jobs, workers and the schema on the database directly.

It needs no running coordinator, so the first identities can be made before one starts;
a running coordinator sees its changes through the database wake-ups. Every command
takes ``--json`` for scripts; job ids may be given as a unique prefix (6+ characters).
Remote text (labels, versions, arguments, error texts) is shown with control
characters made visible.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from coordinator import grants, jobs, keystore, quotas, scheduler, schema, users, workers
from coordinator.api.workers import admin_view
from coordinator.db import db
from coordinator.errors import ApiError, BadRequest
from coordinator.models import Job, JobEvent, Worker
from dffmpeg.config import ConfigError, load_coordinator
from dffmpeg.text import cell, printable, table


def _app(config_file: str | None) -> Flask:
    from coordinator import create_app

    settings = load_coordinator(config_file)
    schema.check_location(settings.database_url)
    return create_app(
        settings,
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
    """``key: value`` lines; values from other parties cannot drive the terminal."""
    return "\n".join(f"{key}: {printable(cell(value))}" for key, value in data.items())


def _ensure_schema() -> None:
    """Users can be added to a brand-new database; an outdated one must be upgraded."""
    schema.ensure_current(db.engine)
    schema.make_private(db.engine.url.render_as_string(hide_password=False))


def _holder() -> keystore.KeystoreHolder:
    holder: keystore.KeystoreHolder = current_app.extensions["dffmpeg.keystore"]
    return holder


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """The schema to the newest version, then every identity key encrypted with the
    secret (made now, mode 0600, on a fresh install)."""
    before, after = schema.upgrade(db.engine)
    schema.make_private(db.engine.url.render_as_string(hide_password=False))
    holder = _holder()
    store, created = keystore.open_or_create(holder.path, keystore.any_encrypted())
    encrypted = keystore.reencrypt_all(store)
    result = {
        "from": before,
        "to": after,
        "secret_key_file": holder.path,
        "secret_created": created,
        "keys_encrypted": encrypted,
    }

    def text(d: dict[str, Any]) -> str:
        lines = [f"schema upgraded: {d['from']} -> {d['to']}"]
        if d["secret_created"]:
            lines.append(
                f"secret created: {d['secret_key_file']} (keep it; copy it to every coordinator)"
            )
        if d["keys_encrypted"]:
            lines.append(f"keys encrypted: {d['keys_encrypted']}")
        return "\n".join(lines)

    _print(args, result, text)
    return 0


def cmd_secret_create(args: argparse.Namespace) -> int:
    path = _holder().path
    keystore.Keystore.create(path)
    _print(
        args,
        {"secret_key_file": path, "keys": 1},
        lambda d: f"secret created: {d['secret_key_file']}",
    )
    return 0


def cmd_secret_rotate(args: argparse.Namespace) -> int:
    """A new key first in the secret file, the old ones kept: copy the file to every
    coordinator, then ``secret reencrypt --retire``."""
    store = keystore.Keystore.load(_holder().path).rotated()
    _print(
        args,
        {"secret_key_file": store.path, "keys": len(store.keys)},
        lambda d: (
            f"{d['secret_key_file']}: a new key first, {d['keys']} keys in all; copy it "
            "to every coordinator, then run 'secret reencrypt --retire'"
        ),
    )
    return 0


def cmd_secret_reencrypt(args: argparse.Namespace) -> int:
    _ensure_schema()
    store = keystore.Keystore.load(_holder().path)
    changed = keystore.reencrypt_all(store)
    if args.retire:
        store = store.retired()
    _print(
        args,
        {"secret_key_file": store.path, "keys_reencrypted": changed, "keys": len(store.keys)},
        lambda d: (
            f"{d['keys_reencrypted']} identity keys re-encrypted; "
            f"{d['keys']} key(s) left in {d['secret_key_file']}"
        ),
    )
    return 0


def _key_or_fields(args: argparse.Namespace, user: dict[str, Any]) -> None:
    if args.key_only:
        print(user["hmac_key"])  # for ``> file``: the key and nothing else
    else:
        _print(args, user, _fields)


def cmd_user_add(args: argparse.Namespace) -> int:
    _ensure_schema()
    _key_or_fields(args, users.add_user(args.client_id, args.role))
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    _ensure_schema()
    rows = [u.to_dict() for u in users.list_users()]
    _print(args, rows, lambda r: table(r, ["client_id", "role", "allowed_networks", "created_at"]))
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
    _key_or_fields(args, users.rotate_key(args.client_id))
    return 0


def networks_text(user: dict[str, Any]) -> str:
    allowed = ", ".join(user["allowed_networks"]) or "any network"
    return f"{user['client_id']} may connect from {allowed}"


def cmd_user_networks(args: argparse.Namespace) -> int:
    """Show (no CIDRs), replace (CIDRs) or clear (``--any``) the allowed networks."""
    _ensure_schema()
    if args.any and args.networks:
        raise BadRequest("give networks or --any, not both")
    if args.any or args.networks:
        user = users.set_networks(args.client_id, args.networks)
    else:
        user = users.get_user(args.client_id).to_dict()
    _print(args, user, networks_text)
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


def job_text(job: dict[str, Any]) -> str:
    """A job as ``key: value`` lines, then its history, one line per event."""
    lines = [f"{k}: {printable(cell(v))}" for k, v in job.items() if k != "events"]
    for event in job.get("events", []):
        reason = printable(event.get("reason") or "")
        lines.append(f"  {event['at']}  {event['from'] or '-'} -> {event['to']}  {reason}")
    return "\n".join(lines)


def cmd_job_show(args: argparse.Namespace) -> int:
    _ensure_schema()
    job = jobs.find(args.job_id)
    events = db.session.execute(
        db.select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
    ).scalars()
    data = {**job.to_dict(), "events": [e.to_dict() for e in events]}
    _print(args, data, job_text)
    return 0


def cmd_job_cancel(args: argparse.Namespace) -> int:
    _ensure_schema()
    job = jobs.cancel(jobs.find(args.job_id), "dffmpeg-admin")
    _print(args, job, lambda j: f"job {j['job_id'][: jobs.SHOWN]} is {j['state']}")
    return 0


WORKER_COLUMNS = ["worker_id", "state", "drained", "slots", "labels", "version", "last_seen_at"]


def _worker_view(worker: Worker) -> dict[str, Any]:
    return admin_view(worker, scheduler.active_count(worker.worker_id))


def cmd_worker_list(args: argparse.Namespace) -> int:
    _ensure_schema()
    rows = [w.to_dict() for w in db.session.execute(db.select(Worker)).scalars()]
    _print(args, rows, lambda r: table(r, [*WORKER_COLUMNS, "path_variables"]))
    return 0


def worker_text(view: dict[str, Any]) -> str:
    """A worker as ``key: value`` lines; each binary as its version line, not the raw
    probe outputs (hundreds of KB) that ``--json`` carries."""
    shown = {k: v for k, v in view.items() if k not in ("binaries", "binary_versions")}
    versions = view.get("binary_versions") or {}
    for name in sorted(versions):
        info = versions[name]
        version = info.get("version") if isinstance(info, dict) else info
        shown[f"binary {name}"] = str(version or "").split("\n", 1)[0] or "-"
    return _fields(shown)


def cmd_worker_show(args: argparse.Namespace) -> int:
    _ensure_schema()
    _print(args, _worker_view(workers.find(args.worker_id)), worker_text)
    return 0


def cmd_worker_drain(args: argparse.Namespace) -> int:
    _ensure_schema()
    view = _worker_view(workers.drain(args.worker_id))
    _print(args, view, lambda w: f"worker {printable(w['worker_id'])} drained: no new jobs")
    return 0


def cmd_worker_resume(args: argparse.Namespace) -> int:
    _ensure_schema()
    view = _worker_view(workers.resume(args.worker_id))
    _print(args, view, lambda w: f"worker {printable(w['worker_id'])} resumed")
    return 0


def cmd_worker_remove(args: argparse.Namespace) -> int:
    _ensure_schema()
    workers.remove(args.worker_id)
    _print(args, {"removed": args.worker_id}, lambda d: f"worker {d['removed']} removed")
    return 0


def _slots_or_any(text: str) -> int | str:
    if text == "any":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of slots or 'any'") from None


def cmd_worker_grant(args: argparse.Namespace) -> int:
    """Show or set what a worker identity is granted (coordinator/grants.py)."""
    _ensure_schema()
    current = users.get_grant(args.worker_id)
    changes: dict[str, Any] = {}
    if args.labels is not None:
        changes["labels"] = None if args.labels == ["any"] else args.labels
    if args.max_slots is not None:
        changes["max_slots"] = None if args.max_slots == "any" else args.max_slots
    if args.clients is not None:
        changes["clients"] = None if args.clients == ["any"] else args.clients
    if args.trust_probes is not None:
        changes["trust_probes"] = args.trust_probes
    if args.clear:
        result = users.set_grant(args.worker_id, None)
    elif changes:
        result = users.set_grant(args.worker_id, grants.parse({**current.to_dict(), **changes}))
    else:
        result = {"client_id": args.worker_id, "grant": current.to_dict()}

    def text(d: dict[str, Any]) -> str:
        grant = d["grant"]
        shown = {k: ("any" if v is None else v) for k, v in grant.items()}
        return _fields({"worker": d["client_id"], **shown})

    _print(args, result, text)
    return 0


def _with_id(parent: Any, name: str, func: Any, id_name: str, **kw: Any) -> Any:
    sub = parent.add_parser(name, **kw)
    sub.add_argument(id_name)
    sub.set_defaults(func=func)
    return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dffmpeg-admin", description=__doc__)
    parser.add_argument("--config", help="coordinator YAML config file")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    groups = parser.add_subparsers(dest="group", required=True)

    sec = groups.add_parser(
        "secret", help="the secret identity keys are stored encrypted with"
    ).add_subparsers(dest="cmd", required=True)
    sec.add_parser(
        "create", parents=[common], help="make the secret file (mode 0600)"
    ).set_defaults(func=cmd_secret_create)
    sec.add_parser(
        "rotate", parents=[common], help="put a new key first in the secret file (old ones kept)"
    ).set_defaults(func=cmd_secret_rotate)
    reenc = sec.add_parser(
        "reencrypt", parents=[common], help="encrypt every identity key with the newest key"
    )
    reenc.add_argument(
        "--retire", action="store_true", help="then drop the older keys from the secret file"
    )
    reenc.set_defaults(func=cmd_secret_reencrypt)
    dbp = groups.add_parser("db", help="database schema").add_subparsers(dest="cmd", required=True)
    dbp.add_parser("upgrade", parents=[common], help="create or upgrade the schema").set_defaults(
        func=cmd_db_upgrade
    )

    user = groups.add_parser("user", help="users and keys").add_subparsers(
        dest="cmd", required=True
    )
    key_only = argparse.ArgumentParser(add_help=False)
    key_only.add_argument(
        "--key-only", action="store_true", help="print only the key (to redirect into a key file)"
    )
    add = _with_id(
        user, "add", cmd_user_add, "client_id", parents=[common, key_only], help="create a user"
    )
    add.add_argument("--role", required=True, choices=["client", "worker", "admin"])
    user.add_parser("list", parents=[common]).set_defaults(func=cmd_user_list)
    _with_id(user, "show", cmd_user_show, "client_id", parents=[common])
    _with_id(user, "delete", cmd_user_delete, "client_id", parents=[common])
    _with_id(
        user,
        "rotate-key",
        cmd_user_rotate,
        "client_id",
        parents=[common, key_only],
        help="a new key; the old one stops working at once",
    )
    networks = _with_id(
        user,
        "networks",
        cmd_user_networks,
        "client_id",
        parents=[common],
        help="show or set the networks (CIDRs) the identity may connect from",
    )
    networks.add_argument("networks", nargs="*", metavar="CIDR", help="replaces the list")
    networks.add_argument("--any", action="store_true", help="allow every network again")

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
    _with_id(job, "show", cmd_job_show, "job_id", parents=[common])
    _with_id(job, "cancel", cmd_job_cancel, "job_id", parents=[common], help="cancel a job")

    worker = groups.add_parser("worker", help="workers").add_subparsers(dest="cmd", required=True)
    worker.add_parser("list", parents=[common]).set_defaults(func=cmd_worker_list)
    for name, func, text in (
        ("show", cmd_worker_show, "one worker, with its load and binaries"),
        ("drain", cmd_worker_drain, "give it no new jobs; running ones finish"),
        ("resume", cmd_worker_resume, "undo a drain"),
        ("remove", cmd_worker_remove, "forget a worker that is gone (drain it first)"),
    ):
        _with_id(worker, name, func, "worker_id", parents=[common], help=text)
    grant = _with_id(
        worker,
        "grant",
        cmd_worker_grant,
        "worker_id",
        parents=[common],
        help="show or set what a worker identity may claim (docs/security-model.md)",
    )
    grant.add_argument("--labels", nargs="+", metavar="LABEL", help="labels it may carry ('any')")
    grant.add_argument(
        "--max-slots", metavar="N", type=_slots_or_any, help="at most this many slots ('any')"
    )
    grant.add_argument(
        "--clients", nargs="+", metavar="CLIENT", help="whose jobs it may run ('any')"
    )
    trust = grant.add_mutually_exclusive_group()
    trust.add_argument(
        "--trust-probes", dest="trust_probes", action="store_true", default=None,
        help="its captured -version/-encoders/... may be served to drop-ins (default)",
    )  # fmt: skip
    trust.add_argument(
        "--no-trust-probes", dest="trust_probes", action="store_false",
        help="never serve its captured probe outputs",
    )  # fmt: skip
    grant.add_argument("--clear", action="store_true", help="no grant: believe its registration")
    return parser


def _database_error(exc: SQLAlchemyError) -> str:
    """The driver's own sentence (first line), without SQLAlchemy's statement dump."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return f"database error: {text.splitlines()[0] if text else type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Everything this tool creates (a SQLite file, the secret) is its owner's only.
    os.umask(0o077)
    try:
        app = _app(args.config)
        with app.app_context():
            result: int = args.func(args)
            # Wake the parties waiting on what changed, through a running coordinator.
            app.extensions["dffmpeg.wakeups"].flush()
            return result
    except (ConfigError, ApiError, schema.SchemaError, keystore.SecretError) as exc:
        message = exc.message if isinstance(exc, ApiError) else str(exc)
        print(f"dffmpeg-admin: {printable(message)}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"dffmpeg-admin: {printable(_database_error(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
