"""Users and keys (admin only)."""

from __future__ import annotations

from flask import Blueprint, current_app, g, jsonify
from flask.typing import ResponseReturnValue

from coordinator import grants, users
from coordinator.api.parse import field, json_body, str_list
from coordinator.auth import requires
from coordinator.errors import Conflict
from dffmpeg.wire import Role

bp = Blueprint("users", __name__, url_prefix="/users")


@bp.get("")
@requires(Role.ADMIN)
def list_users() -> ResponseReturnValue:
    return jsonify({"users": [u.to_dict() for u in users.list_users()]})


@bp.post("")
@requires(Role.ADMIN)
def add_user() -> ResponseReturnValue:
    data = json_body()
    created = users.add_user(
        field(data, "client_id", str),
        field(data, "role", str),
        allowed_networks=str_list(data, "allowed_networks", []),
    )
    return jsonify({"user": created}), 201


@bp.get("/<client_id>")
@requires(Role.ADMIN)
def show_user(client_id: str) -> ResponseReturnValue:
    return jsonify({"user": users.get_user(client_id).to_dict()})


@bp.delete("/<client_id>")
@requires(Role.ADMIN)
def delete_user(client_id: str) -> ResponseReturnValue:
    if client_id == g.user.client_id:
        # Deleting the identity in use would lock the operator out mid-session.
        raise Conflict("you cannot delete the identity you are signed in as")
    users.delete_user(client_id)
    return jsonify({"deleted": client_id})


@bp.post("/<client_id>/rotate-key")
@requires(Role.ADMIN)
def rotate_key(client_id: str) -> ResponseReturnValue:
    return jsonify({"user": users.rotate_key(client_id)})


@bp.put("/<client_id>/networks")
@requires(Role.ADMIN)
def set_networks(client_id: str) -> ResponseReturnValue:
    """Replace the CIDRs the identity may connect from; an empty list allows any."""
    networks = str_list(json_body(), "allowed_networks")
    return jsonify({"user": users.set_networks(client_id, networks)})


@bp.get("/<client_id>/quota")
@requires(Role.ADMIN)
def show_quota(client_id: str) -> ResponseReturnValue:
    """Every limit of the identity (``quota``) and those set for it (``overrides``)."""
    defaults = current_app.config["DFFMPEG"].default_quotas
    return jsonify(users.get_quota(client_id, defaults))


@bp.put("/<client_id>/quota")
@requires(Role.ADMIN)
def set_quota(client_id: str) -> ResponseReturnValue:
    """Set limits: ``{name: value}``; a value of null goes back to the default."""
    defaults = current_app.config["DFFMPEG"].default_quotas
    return jsonify(users.set_quota(client_id, json_body(), defaults))


@bp.get("/<client_id>/grant")
@requires(Role.ADMIN)
def show_grant(client_id: str) -> ResponseReturnValue:
    """What a worker identity is granted (coordinator/grants.py)."""
    return jsonify({"client_id": client_id, "grant": users.get_grant(client_id).to_dict()})


@bp.put("/<client_id>/grant")
@requires(Role.ADMIN)
def set_grant(client_id: str) -> ResponseReturnValue:
    """Replace the grant: ``{labels, max_slots, clients, trust_probes}``, each optional
    (null: not restricted)."""
    return jsonify(users.set_grant(client_id, grants.parse(json_body())))


@bp.delete("/<client_id>/grant")
@requires(Role.ADMIN)
def clear_grant(client_id: str) -> ResponseReturnValue:
    """No grant: the worker is believed for what it registers."""
    return jsonify(users.set_grant(client_id, None))
