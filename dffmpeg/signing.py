"""HMAC-SHA256 request signing, shared by every party.

The canonical string is five lines joined by ``\\n``::

    METHOD
    /path?query          (exactly as sent, query string included)
    TIMESTAMP            (unix seconds, decimal)
    NONCE                (32 hex characters, random per request)
    SHA256(body) in hex  (of the empty string when there is no body)

and the signature is ``hex(HMAC-SHA256(key, canonical))`` where the key is the UTF-8
bytes of the identity's ``hmac_key``. See docs/security-model.md for a worked example.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

HEADER_CLIENT = "X-Dffmpeg-Client"
HEADER_TIMESTAMP = "X-Dffmpeg-Timestamp"
HEADER_NONCE = "X-Dffmpeg-Nonce"
HEADER_SIGNATURE = "X-Dffmpeg-Signature"

DEFAULT_WINDOW_SECONDS = 30


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    return secrets.token_hex(16)


def canonical_string(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest()
    return "\n".join([method.upper(), path, timestamp, nonce, body_hash]).encode()


def signature(key: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    message = canonical_string(method, path, timestamp, nonce, body)
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sign_headers(
    client_id: str, key: str, method: str, path: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers that authenticate one request. ``path`` must include the query string."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = new_nonce()
    return {
        HEADER_CLIENT: client_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature(key, method, path, timestamp, nonce, body),
    }


@dataclass(frozen=True)
class SignedRequest:
    client_id: str
    timestamp: str
    nonce: str
    signature: str


def timestamp_fresh(timestamp: str, window: float, now: float | None = None) -> bool:
    try:
        value = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    return abs(current - value) <= window


def verify(key: str, request: SignedRequest, method: str, path: str, body: bytes) -> bool:
    expected = signature(key, method, path, request.timestamp, request.nonce, body)
    return hmac.compare_digest(expected, request.signature)


# -- answers ----------------------------------------------------------------------------
#
# Every answer to an authenticated request carries ``X-Dffmpeg-Answer``: the hex
# HMAC-SHA256, with the caller's key, of four lines joined by ``\n``::
#
#     ANSWER
#     STATUS               (the HTTP status code, decimal)
#     NONCE                (the nonce of the request this answers)
#     SHA256(body) in hex  (``stream`` for a streamed answer, whose lines carry sealed
#                           messages of their own)
#
# The nonce binds the answer to one request: an answer recorded earlier is refused, and
# so is a changed status or body. An unauthenticated answer (401) cannot be signed with
# a key the caller may not hold; it only ever makes a party stop. See
# docs/security-model.md for a worked example.

HEADER_ANSWER = "X-Dffmpeg-Answer"
STREAMED = "stream"


def answer_canonical(status: int, nonce: str, body_hash: str) -> bytes:
    return "\n".join(["ANSWER", str(status), nonce, body_hash]).encode()


def answer_signature(key: str, status: int, nonce: str, body: bytes | None) -> str:
    """``body`` None: a streamed answer."""
    body_hash = STREAMED if body is None else hashlib.sha256(body).hexdigest()
    message = answer_canonical(status, nonce, body_hash)
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def answer_valid(
    key: str, status: int, nonce: str, body: bytes | None, signature: str | None
) -> bool:
    if not signature:
        return False
    return hmac.compare_digest(answer_signature(key, status, nonce, body), signature)


# -- sealed notifications ------------------------------------------------------------------
#
# A transport notification meant for one identity (``to/ID/...``) travels sealed:
# ``{"m": PAYLOAD, "sig": hex HMAC-SHA256(key, "SEALED\n" + ADDRESS + "\n" + PAYLOAD)}``
# where ADDRESS is the address's segments joined by ``/``. Notifications only ever wake
# a party up to read over signed HTTP; sealing keeps a forged one (a broker, a proxy)
# from faking the reachability handshake.


def seal(key: str, address: tuple[str, ...], payload: bytes) -> bytes:
    text = payload.decode()
    return json.dumps({"m": text, "sig": _seal_signature(key, address, text)}).encode()


def unseal(key: str, address: tuple[str, ...], sealed: bytes) -> bytes | None:
    """The payload, or None when it is not sealed with ``key`` for ``address``."""
    try:
        outer = json.loads(sealed)
        text, sig = outer["m"], outer["sig"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(text, str) or not isinstance(sig, str):
        return None
    if not hmac.compare_digest(_seal_signature(key, address, text), sig):
        return None
    return text.encode()


def _seal_signature(key: str, address: tuple[str, ...], text: str) -> str:
    message = "\n".join(["SEALED", "/".join(address), text]).encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()
