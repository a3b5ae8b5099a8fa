"""``dffmpeg-client worker ...`` and ``user networks``: administration through the admin API.

The same operations as ``dffmpeg-admin`` (which works on the database directly), for
an operator who holds an admin identity but not the coordinator's database. Each
prints one JSON object with ``--json``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from client import status
from client.api import Api
from client.job import report
from dffmpeg.text import cell, printable


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def fields_text(data: dict[str, Any]) -> str:
    """``key: value`` lines with every value made printable."""
    return "\n".join(f"{key}: {printable(cell(value))}" for key, value in data.items())


def cmd_worker_list(args: argparse.Namespace, api: Api) -> int:
    workers = api.call("GET", "/workers")["workers"]
    now = status.parse_time(api.call("GET", "/cluster").get("now"))
    rows = [status.worker_row(w, now) for w in workers]
    _emit(args, {"workers": workers}, status.text_table(status.WORKER_COLUMNS, rows))
    return 0


def worker_text(worker: dict[str, Any]) -> str:
    """A worker as ``key: value`` lines, its binaries as versions (``--json`` has the
    raw probe outputs too)."""
    shown = {k: v for k, v in worker.items() if k not in ("binaries", "binary_versions")}
    shown["binaries"] = status.capabilities(worker)
    return fields_text(shown)


def cmd_worker_show(args: argparse.Namespace, api: Api) -> int:
    worker = api.call("GET", f"/workers/{args.worker_id}")["worker"]
    _emit(args, worker, worker_text(worker))
    return 0


def cmd_worker_drain(args: argparse.Namespace, api: Api) -> int:
    worker = api.call("POST", f"/workers/{args.worker_id}/drain")["worker"]
    _emit(args, worker, f"worker {printable(worker['worker_id'])} drained: no new jobs")
    return 0


def cmd_worker_resume(args: argparse.Namespace, api: Api) -> int:
    worker = api.call("POST", f"/workers/{args.worker_id}/resume")["worker"]
    _emit(args, worker, f"worker {printable(worker['worker_id'])} resumed")
    return 0


def cmd_worker_remove(args: argparse.Namespace, api: Api) -> int:
    reply = api.call("DELETE", f"/workers/{args.worker_id}")
    _emit(args, reply, f"worker {printable(str(reply['removed']))} removed")
    return 0


def networks_text(user: dict[str, Any]) -> str:
    allowed = ", ".join(user["allowed_networks"]) or "any network"
    return printable(f"{user['client_id']} may connect from {allowed}")


def cmd_user_networks(args: argparse.Namespace, api: Api) -> int:
    """Show (no CIDRs), replace (CIDRs) or clear (``--any``) the allowed networks."""
    if args.any and args.networks:
        report("give networks or --any, not both")
        return 2
    if args.any or args.networks:
        body = {"allowed_networks": list(args.networks)}
        user = api.call("PUT", f"/users/{args.client_id}/networks", json_body=body)["user"]
    else:
        user = api.call("GET", f"/users/{args.client_id}")["user"]
    _emit(args, user, networks_text(user))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``worker`` and ``user`` command groups (admin role)."""
    worker = sub.add_parser("worker", help="workers (admin role)").add_subparsers(
        dest="worker_command", required=True
    )
    worker.add_parser("list", parents=[common]).set_defaults(func=cmd_worker_list)
    for name, func, text in (
        ("show", cmd_worker_show, "one worker, with its load and binaries"),
        ("drain", cmd_worker_drain, "give it no new jobs; running ones finish"),
        ("resume", cmd_worker_resume, "undo a drain"),
        ("remove", cmd_worker_remove, "forget a worker that is gone (drain it first)"),
    ):
        p = worker.add_parser(name, parents=[common], help=text)
        p.add_argument("worker_id")
        p.set_defaults(func=func)

    user = sub.add_parser("user", help="users (admin role)").add_subparsers(
        dest="user_command", required=True
    )
    nets = user.add_parser(
        "networks",
        parents=[common],
        help="show or set the networks (CIDRs) an identity may connect from",
    )
    nets.add_argument("client_id")
    nets.add_argument("networks", nargs="*", metavar="CIDR", help="replaces the list")
    nets.add_argument("--any", action="store_true", help="allow every network again")
    nets.set_defaults(func=cmd_user_networks)
