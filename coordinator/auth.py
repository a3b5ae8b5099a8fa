"""Request authentication (HMAC signatures, replay window) and per-route roles.

The headers are checked before the body is read: a request with malformed headers, an
unknown identity or a stale timestamp is refused without its body being read (and, under
``dffmpeg-coordinator``, before it is even received: see ``precheck``). Only then is the
body read and the signature over it verified.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, has_request_context, request
from sqlalchemy import bindparam, event, insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from coordinator import keystore, quotas
from coordinator.body import request_body
from coordinator.db import core, db, now_utc
from coordinator.errors import Forbidden, Unauthorized
from coordinator.models import Nonce, User
from coordinator.observe import instruments
from coordinator.remote import client_address
from coordinator.users import address_allowed
from dffmpeg import signing

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Caller:
    """Who sent the current request: what the views need of the identity.

    A plain value rather than the ``User`` row, so that committing the nonce does not
    expire it and every later use would reload it from the database.
    """

    client_id: str
    role: str
    # Every limit of the identity (coordinator/quotas.py), read with the identity.
    limits: Mapping[str, int] = field(default_factory=dict)


# Built once: statement construction costs more than running them on every request.
_USERS = User.__table__.c
_FIND_USER = select(_USERS.role, _USERS.hmac_key, _USERS.allowed_networks, _USERS.quotas).where(
    _USERS.client_id == bindparam("client_id")
)
_SEE_NONCE = insert(Nonce.__table__)
_NONCE_SEEN = select(Nonce.__table__.c.nonce).where(
    Nonce.__table__.c.client_id == bindparam("client_id"),
    Nonce.__table__.c.nonce == bindparam("nonce"),
)

# What well-formed signature headers look like. Anything else (non-ASCII bytes
# included, which werkzeug hands over decoded as latin-1) is refused with the one 401.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class SignatureHeaders:
    client_id: str
    timestamp: str
    nonce: str
    signature: str


def signature_headers(headers: Any) -> SignatureHeaders | None:
    """The four signature headers if all are present and well-formed, else None.

    ``headers`` is looked up by the canonical names, or by lower-case ones (what the
    request loop's pre-check has).
    """

    def get(name: str) -> str:
        return str(headers.get(name) or headers.get(name.lower()) or "")

    found = SignatureHeaders(
        get(signing.HEADER_CLIENT),
        get(signing.HEADER_TIMESTAMP),
        get(signing.HEADER_NONCE),
        get(signing.HEADER_SIGNATURE),
    )
    if not (
        _CLIENT_ID.fullmatch(found.client_id)
        and _TIMESTAMP.fullmatch(found.timestamp)
        and _NONCE.fullmatch(found.nonce)
        and _SIGNATURE.fullmatch(found.signature)
    ):
        return None
    return found


# Paths under /api/v1 that need no signature.
PUBLIC_PATHS = frozenset({"/api/v1/openapi.json"})


def precheck(app: Flask, method: str, target: str, headers: Mapping[str, str]) -> Any:
    """The request loop's question for a request whose body is still arriving: would it
    be refused anyway? (status, JSON) to refuse it now, None to go on reading.

    The identity must exist, the timestamp be fresh and the nonce unused; the signature
    itself needs the body and is checked once the whole request is there.
    """
    path = target.split("?", 1)[0]
    if not path.startswith("/api/v1/") or path in PUBLIC_PATHS:
        return None
    refused = (401, {"error": Unauthorized.code, "message": Unauthorized().message})
    found = signature_headers(headers)
    if found is None:
        return refused
    window = app.config["DFFMPEG"].auth_window_seconds
    if not signing.timestamp_fresh(found.timestamp, window):
        return refused
    with app.app_context():
        try:
            user = core(_FIND_USER, {"client_id": found.client_id}).first()
            seen = db.session.execute(
                _NONCE_SEEN, {"client_id": found.client_id, "nonce": found.nonce}
            ).first()
            db.session.commit()
        except SQLAlchemyError:
            # The database is unavailable: read the body, and the request itself is
            # answered 503 (coordinator/storage.py), which the party retries.
            return None
        finally:
            db.session.remove()
    if user is None or seen is not None:
        return refused
    return None


def signed_path() -> str:
    """The request path exactly as signed: path plus the raw query string."""
    query = request.query_string.decode("latin-1")
    return request.path + ("?" + query if query else "")


def _refused(reason: str) -> Unauthorized:
    """The uniform 401; only the metrics learn why (``dffmpeg_auth_refusals_total``)."""
    instruments().refused(reason)
    return Unauthorized()


def authenticate() -> Caller:
    """Verify the signature headers of the current request; raise Unauthorized otherwise."""
    found = signature_headers(request.headers)
    if found is None:
        raise _refused("missing_headers")
    window = current_app.config["DFFMPEG"].auth_window_seconds
    if not signing.timestamp_fresh(found.timestamp, window):
        raise _refused("stale_timestamp")
    # Core rows, not ORM objects: authentication runs on every request and the identity
    # map, flush and expiry machinery cost more than the query itself.
    user = core(_FIND_USER, {"client_id": found.client_id}).first()
    if user is None:
        # Refused before the body is read (docs/security-model.md: the answer is the same
        # as for a wrong signature, only sooner).
        raise _refused("unknown_identity")
    signed = signing.SignedRequest(found.client_id, found.timestamp, found.nonce, found.signature)
    body = request_body()
    key = keystore.current().open(user.hmac_key)  # stored encrypted (cached once opened)
    if not signing.verify(key, signed, request.method, signed_path(), body):
        raise _refused("bad_signature")
    # What the answer is signed with (``sign_answer``): never logged, never returned.
    g.answer_key = key
    g.answer_nonce = found.nonce
    # Checked only after the signature: a caller without the key learns nothing here.
    if user.allowed_networks and not address_allowed(client_address(), user.allowed_networks):
        instruments().refused("network")
        raise Forbidden("this identity may not connect from this network")
    # The nonce's primary key makes a replay inside the window fail to insert. The row
    # is inserted now, before the view runs (a concurrent replay's insert fails, or on
    # the server databases waits for this transaction), and committed with the view's
    # first commit: one transaction fewer per request. ``settle_nonce`` stores it on
    # its own when the view never committed or rolled back.
    seen = {
        "client_id": found.client_id,
        "nonce": found.nonce,
        "expires_at": now_utc() + timedelta(seconds=window * 2),
    }
    try:
        core(_SEE_NONCE, seen)
    except IntegrityError:
        db.session.rollback()
        g.pop("answer_key", None)  # a replay gets the same unsigned 401 as any failure
        raise _refused("replayed_nonce") from None
    g.nonce_pending = seen
    limits = quotas.effective(current_app.config["DFFMPEG"].default_quotas, user.quotas)
    return Caller(client_id=found.client_id, role=user.role, limits=limits)


def _nonce_committed(_session: Any) -> None:
    # A commit after a rollback does not carry the nonce (the rollback took it back):
    # it stays pending, and ``settle_nonce`` stores it.
    if has_request_context() and not g.get("nonce_lost"):
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
        core(_SEE_NONCE, seen)
        db.session.commit()
    except IntegrityError:
        # A replay of this failed request got in first; neither changed anything.
        db.session.rollback()
    except SQLAlchemyError:
        # The database failed the request (a 503) and fails this too. The request
        # changed nothing, so a replay of it could do no more than its own retry does.
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
                instruments().refused("role")
                raise Forbidden(f"this action needs the role {' or '.join(roles)}")
            return view(*args, **kwargs)

        return cast(F, wrapper)

    return decorator
