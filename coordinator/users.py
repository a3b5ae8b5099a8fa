"""Identities and their keys; used by the admin API and by ``dffmpeg-admin``."""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from sqlalchemy import bindparam, delete, update
from sqlalchemy.exc import IntegrityError

from coordinator import keystore, lifecycle, quotas, scheduler
from coordinator.addresses import in_networks
from coordinator.db import db
from coordinator.errors import BadRequest, Conflict, NotFound
from coordinator.grants import Grant
from coordinator.models import Job, Nonce, User, Worker
from dffmpeg import signing
from dffmpeg.wire import JobState, Role

ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


def validate_client_id(client_id: str) -> str:
    if not client_id or len(client_id) > 64 or not set(client_id) <= ID_CHARS:
        raise BadRequest("client_id must be 1-64 characters of letters, digits and ._-@")
    return client_id


def validate_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise BadRequest(f"role must be one of {', '.join(r.value for r in Role)}") from None


MAX_NETWORKS = 64


def validate_networks(networks: list[str]) -> list[str]:
    """Normalised CIDRs (``10.0.0.7`` becomes ``10.0.0.7/32``); 400 on anything else."""
    if len(networks) > MAX_NETWORKS:
        raise BadRequest(f"at most {MAX_NETWORKS} networks")
    result = []
    for text in networks:
        try:
            result.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise BadRequest(f"{text!r} is not an IP network such as 10.0.0.0/24") from None
    return result


def address_allowed(address: str | None, networks: list[str]) -> bool:
    """Whether ``address`` lies in one of ``networks`` (an empty list allows any)."""
    return not networks or in_networks(address, networks)


def add_user(
    client_id: str,
    role: str,
    hmac_key: str | None = None,
    allowed_networks: list[str] | None = None,
) -> dict[str, Any]:
    """Create an identity; the returned dict is the only place its key is shown."""
    key = hmac_key or signing.new_key()
    user = User(
        client_id=validate_client_id(client_id),
        role=validate_role(role).value,
        hmac_key=keystore.current().seal(key),
        allowed_networks=validate_networks(allowed_networks or []),
    )
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(f"user {client_id} already exists") from None
    return {**user.to_dict(), "hmac_key": key}


def get_user(client_id: str) -> User:
    user = db.session.get(User, client_id)
    if user is None:
        raise NotFound(f"no user {client_id}")
    return user


def list_users() -> list[User]:
    return list(db.session.execute(db.select(User).order_by(User.client_id)).scalars())


def tombstone(client_id: str) -> str:
    """The name a deleted identity's jobs are kept under. ``#`` is not allowed in an
    identity, so no identity made later, of any name, can own them."""
    return f"#{secrets.token_hex(6)}:{client_id}"[:64]


def _fail_held_jobs(worker_id: str) -> None:
    """What a deleted worker identity holds will never be reported: lost now."""
    held = db.select(Job.id).where(
        Job.worker_id == worker_id, Job.state.in_(scheduler.ACTIVE_STATES)
    )
    for job_id in list(db.session.execute(held).scalars()):
        lifecycle.transition(
            job_id,
            [JobState.ASSIGNED, JobState.RUNNING, JobState.CANCELING],
            JobState.FAILED,
            "worker lost (its identity was deleted)",
            failure="worker_lost",
        )


def delete_user(client_id: str) -> None:
    """Forget the identity. Its jobs stay in the history (admins see them) under a
    tombstone name: a new identity of the same name never sees them, nor their output.
    Its nonces and, for a worker, its worker row go with it."""
    user = get_user(client_id)
    if user.role == Role.WORKER.value:
        _fail_held_jobs(client_id)
    gone = tombstone(client_id)
    db.session.execute(update(Job).where(Job.requester == client_id).values(requester=gone))
    db.session.execute(update(Job).where(Job.worker_id == client_id).values(worker_id=gone))
    db.session.execute(delete(Nonce).where(Nonce.client_id == client_id))
    worker = db.session.get(Worker, client_id)
    if worker is not None:
        db.session.delete(worker)
    db.session.delete(user)
    db.session.commit()


def rotate_key(client_id: str) -> dict[str, Any]:
    user = get_user(client_id)
    key = signing.new_key()
    user.hmac_key = keystore.current().seal(key)
    db.session.commit()
    return {**user.to_dict(), "hmac_key": key}


_FIND_KEY = db.select(User.hmac_key).where(User.client_id == bindparam("client_id"))


def key_for(client_id: str) -> str | None:
    """An identity's key, to seal what is sent to it (None: no such identity)."""
    stored = db.session.execute(_FIND_KEY, {"client_id": client_id}).scalar()
    return keystore.current().open(str(stored)) if stored is not None else None


def set_networks(client_id: str, networks: list[str]) -> dict[str, Any]:
    user = get_user(client_id)
    user.allowed_networks = validate_networks(networks)
    db.session.commit()
    return user.to_dict()


def get_quota(client_id: str, defaults: dict[str, int]) -> dict[str, Any]:
    """Every limit of an identity, and which of them an admin set for it."""
    user = get_user(client_id)
    own = dict(user.quotas or {})
    return {
        "client_id": user.client_id,
        "quota": quotas.effective(defaults, own),
        "overrides": {k: v for k, v in own.items() if k in quotas.LIMITS},
    }


def set_quota(
    client_id: str, changes: dict[str, int | None], defaults: dict[str, int]
) -> dict[str, Any]:
    """Set limits of an identity (None: back to the default); the result as ``get_quota``."""
    checked = quotas.validate(changes, allow_none=True)
    user = get_user(client_id)
    own = dict(user.quotas or {})
    for name, value in checked.items():
        if value is None:
            own.pop(name, None)
        else:
            own[name] = value
    user.quotas = own or None
    db.session.commit()
    return get_quota(client_id, defaults)


def get_grant(client_id: str) -> Grant:
    return Grant.of(get_user(client_id).worker_grant)


def set_grant(client_id: str, grant: Grant | None) -> dict[str, Any]:
    """What the worker identity is granted (None: no grant). A registered worker of it
    follows at once; its slots and labels are cut at its next registration."""
    user = get_user(client_id)
    if user.role != Role.WORKER.value:
        raise BadRequest(f"{client_id} is not a worker identity")
    user.worker_grant = grant.to_dict() if grant is not None else None
    effective = grant if grant is not None else Grant()
    worker = db.session.get(Worker, client_id)
    if worker is not None:
        worker.allowed_clients = effective.clients
        worker.probe_trusted = effective.trust_probes
        worker.slots, worker.labels = effective.cut(client_id, worker.slots, list(worker.labels))
    db.session.commit()
    return {"client_id": client_id, "grant": effective.to_dict()}
