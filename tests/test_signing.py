"""The signing scheme, including the worked example printed in docs/security-model.md."""

from __future__ import annotations

import re
from pathlib import Path

from dffmpeg import signing

DOC = Path(__file__).resolve().parent.parent / "docs" / "security-model.md"

KEY = "Zm9vYmFyLWV4YW1wbGUta2V5LWZvci1kb2NzLW9ubHk"
BODY = b'{"binary": "ffprobe", "args": ["-version"]}'
PATH = "/api/v1/jobs?x=1"
TIMESTAMP = "1764115200"
NONCE = "0123456789abcdef0123456789abcdef"


def test_worked_example_matches_the_document() -> None:
    canonical = signing.canonical_string("POST", PATH, TIMESTAMP, NONCE, BODY)
    sig = signing.signature(KEY, "POST", PATH, TIMESTAMP, NONCE, BODY)
    doc = DOC.read_text()
    # The document shows the key, the body, the canonical string and the signature.
    assert KEY in doc
    assert BODY.decode() in doc
    assert canonical.decode() in doc
    match = re.search(r"signature: `([0-9a-f]{64})`", doc)
    assert match is not None
    assert match.group(1) == sig


def test_any_change_breaks_the_signature() -> None:
    good = signing.SignedRequest(
        "alice", TIMESTAMP, NONCE, signing.signature(KEY, "POST", PATH, TIMESTAMP, NONCE, BODY)
    )
    assert signing.verify(KEY, good, "POST", PATH, BODY)
    assert not signing.verify(KEY, good, "GET", PATH, BODY)
    assert not signing.verify(KEY, good, "POST", "/api/v1/jobs?x=2", BODY)
    assert not signing.verify(KEY, good, "POST", PATH, BODY + b" ")
    assert not signing.verify(KEY + "x", good, "POST", PATH, BODY)
    other_nonce = signing.SignedRequest("alice", TIMESTAMP, "f" * 32, good.signature)
    assert not signing.verify(KEY, other_nonce, "POST", PATH, BODY)


def test_timestamp_window() -> None:
    assert signing.timestamp_fresh("1000", 30, now=1029)
    assert not signing.timestamp_fresh("1000", 30, now=1031)
    assert not signing.timestamp_fresh("1000", 30, now=969)
    assert not signing.timestamp_fresh("soon", 30, now=1000)


ANSWER_BODY = b'{"job": {"job_id": "0ee55e8392bc4f6d8a1b2c3d4e5f6a7b", "state": "pending"}}'


def test_worked_answer_example_matches_the_document() -> None:
    import hashlib

    body_hash = hashlib.sha256(ANSWER_BODY).hexdigest()
    canonical = signing.answer_canonical(201, NONCE, body_hash)
    sig = signing.answer_signature(KEY, 201, NONCE, ANSWER_BODY)
    doc = DOC.read_text()
    assert ANSWER_BODY.decode() in doc
    assert canonical.decode() in doc
    match = re.search(r"answer signature: `([0-9a-f]{64})`", doc)
    assert match is not None and match.group(1) == sig


def test_an_answer_is_valid_only_for_its_request_status_and_body() -> None:
    sig = signing.answer_signature(KEY, 200, NONCE, b"{}")
    assert signing.answer_valid(KEY, 200, NONCE, b"{}", sig)
    assert not signing.answer_valid(KEY, 201, NONCE, b"{}", sig)
    assert not signing.answer_valid(KEY, 200, "f" * 32, b"{}", sig)
    assert not signing.answer_valid(KEY, 200, NONCE, b"{ }", sig)
    assert not signing.answer_valid(KEY + "x", 200, NONCE, b"{}", sig)
    assert not signing.answer_valid(KEY, 200, NONCE, b"{}", None)
    streamed = signing.answer_signature(KEY, 200, NONCE, None)
    assert signing.answer_valid(KEY, 200, NONCE, None, streamed)
    assert not signing.answer_valid(KEY, 200, NONCE, b"", streamed)


def test_a_sealed_notification_opens_only_with_its_key_and_address() -> None:
    sealed = signing.seal(KEY, ("to", "w1", "ping"), b'{"key": "ping"}')
    assert signing.unseal(KEY, ("to", "w1", "ping"), sealed) == b'{"key": "ping"}'
    assert signing.unseal(KEY, ("to", "w2", "ping"), sealed) is None
    assert signing.unseal("other", ("to", "w1", "ping"), sealed) is None
    assert signing.unseal(KEY, ("to", "w1", "ping"), b'{"key": "ping"}') is None
