"""Request authentication (HMAC signatures, replay window) and per-route roles."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

from flask import Response, current_app, g, has_request_context, request
from sqlalchemy import bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError

from coordinator.db import db, now_utc
from coordinator.errors import Forbidden, Unauthorized
from coordinator.models import Nonce, User
from coordinator.users import address_allowed
from dffmpeg import signing

F = TypeVar("F", bound=Callable[..., Any])

# Used when the identity is unknown so that a miss costs the same HMAC as a hit.
_DUMMY_KEY = "dffmpeg-unknown-identity-dummy-key-000000000"


@dataclass(frozen=True)
class Caller:
    """Who sent the current request: what the views need of the identity.

    A plain value rather than the ``User`` row, so that committing the nonce does not
    expire it and every later use would reload it from the database.
    """

    client_id: str
    role: str


# Built once: statement construction costs more than running them on every request.
_USERS = User.__table__.c
_FIND_USER = select(_USERS.role, _USERS.hmac_key, _USERS.allowed_networks).where(
    _USERS.client_id == bindparam("client_id")
)
_SEE_NONCE = insert(Nonce.__table__)


def signed_path() -> str:
    """The request path exactly as signed: path plus the raw query string."""
    query = request.query_string.decode("latin-1")
    return request.path + ("?" + query if query else "")


def authenticate() -> Caller:
    """Verify the signature headers of the current request; raise Unauthorized otherwise."""
    headers = request.headers
    client_id = headers.get(signing.HEADER_CLIENT, "")
    timestamp = headers.get(signing.HEADER_TIMESTAMP, "")
    nonce = headers.get(signing.HEADER_NONCE, "")
    signature = headers.get(signing.HEADER_SIGNATURE, "")
    if not (client_id and timestamp and nonce and signature) or len(nonce) > 64:
        raise Unauthorized()
    # Core rows, not ORM objects: authentication runs on every request and the identity
    # map, flush and expiry machinery cost more than the query itself.
    user = (
        db.session.execute(_FIND_USER, {"client_id": client_id}).first()
        if len(client_id) <= 64
        else None
    )
    window = current_app.config["DFFMPEG"].auth_window_seconds
    signed = signing.SignedRequest(client_id, timestamp, nonce, signature)
    body = request.get_data(cache=True)
    valid = signing.verify(
        user.hmac_key if user else _DUMMY_KEY, signed, request.method, signed_path(), body
    )
    if user is None or not valid or not signing.timestamp_fresh(timestamp, window):
        raise Unauthorized()
    # What the answer is signed with (``sign_answer``): never logged, never returned.
    g.answer_key = user.hmac_key
    g.answer_nonce = nonce
    # Checked only after the signature: a caller without the key learns nothing here.
    if user.allowed_networks and not address_allowed(request.remote_addr, user.allowed_networks):
        raise Forbidden("this identity may not connect from this network")
    # The nonce's primary key makes a replay inside the window fail to insert. The row
    # is inserted now, before the view runs (a concurrent replay's insert fails, or on
    # the server databases waits for this transaction), and committed with the view's
    # first commit: one transaction fewer per request. ``settle_nonce`` stores it on
    # its own when the view never committed or rolled back.
    seen = {
        "client_id": client_id,
        "nonce": nonce,
        "expires_at": now_utc() + timedelta(seconds=window * 2),
    }
    try:
        db.session.execute(_SEE_NONCE, seen)
    except IntegrityError:
        db.session.rollback()
        g.pop("answer_key", None)  # a replay gets the same unsigned 401 as any failure
        raise Unauthorized() from None
    g.nonce_pending = seen
    return Caller(client_id=client_id, role=user.role)


def _nonce_committed(_session: Any) -> None:
    if has_request_context():
        g.pop("nonce_pending", None)


def _nonce_rolled_back(_session: Any) -> None:
    if has_request_context() and "nonce_pending" in g:
        g.nonce_lost = True


def install_nonce_tracking() -> None:
    """Follow the request session's commits and rollbacks (see ``settle_nonce``)."""
    if not event.contains(db.session, "after_commit", _nonce_committed):
        event.listen(db.session, "after_commit", _nonce_committed)
        event.listen(db.session, "after_rollback", _nonce_rolled_back)


def settle_nonce(response: Response) -> Response:
    """After the view: make sure the request's nonce is stored, whatever the view did.

    A successful view that never committed (a read) commits it now. After an error, or
    when the view rolled back before any commit, whatever the view left is discarded
    and the nonce is stored on its own.
    """
    seen = g.pop("nonce_pending", None)
    if seen is None:
        return response
    if response.status_code < 400 and not g.pop("nonce_lost", False):
        db.session.commit()
        return response
    db.session.rollback()
    try:
        db.session.execute(_SEE_NONCE, seen)
        db.session.commit()
    except IntegrityError:
        # A replay of this failed request got in first; neither changed anything.
        db.session.rollback()
    return response


def sign_answer(response: Response) -> Response:
    """Sign the answer to an authenticated request (``signing.HEADER_ANSWER``).

    Runs last, on the final body. A streamed answer is signed without its body: its
    lines carry sealed notifications (``signing.seal``).
    """
    key = g.pop("answer_key", None)
    if key is None:  # authentication failed: nothing to sign with
        return response
    body = None if response.is_streamed else response.get_data()
    response.headers[signing.HEADER_ANSWER] = signing.answer_signature(
        key, response.status_code, g.pop("answer_nonce"), body
    )
    return response


def requires(*roles: str) -> Callable[[F], F]:
    """Allow the decorated view only to identities with one of ``roles``."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user: Caller = g.user
            if user.role not in roles:
                raise Forbidden(f"this action needs the role {' or '.join(roles)}")
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorator
