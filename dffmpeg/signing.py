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
