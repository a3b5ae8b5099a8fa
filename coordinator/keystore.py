"""Identity keys at rest: encrypted with the coordinator's secret.

The database holds every identity's HMAC key as ``f1:`` + a Fernet token made with the
coordinator's secret (``secret_key_file``): a copy of the database alone yields no key.
The secret file holds one Fernet key per line, the newest first: tokens are made with
the first and read with any of them (MultiFernet), so a secret is rotated in steps that
never lock out an identity (docs/security-model.md#keys-at-rest):

1. ``dffmpeg-admin secret rotate`` puts a new key first (the old ones stay);
2. the file is copied to every coordinator instance, which reloads it on restart;
3. ``dffmpeg-admin secret reencrypt --retire`` re-encrypts every identity key with the
   new key and drops the old ones from the file.

A key stored before encryption existed (no prefix) is still accepted, and encrypted by
the next ``db upgrade`` or ``secret reencrypt``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

PREFIX = "f1:"


class SecretError(Exception):
    """The secret is missing, unreadable or does not open a stored key."""


def write_private(path: Path, text: str) -> None:
    """Create or replace ``path`` with mode 0600 from the first byte on."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


class Keystore:
    """Encrypts identity keys for storage and opens them again (with a small cache:
    every request opens its caller's key)."""

    def __init__(self, keys: list[bytes], path: str | None = None) -> None:
        if not keys:
            raise SecretError("the secret has no keys")
        self.path = path
        self.keys = keys
        self._fernet = MultiFernet([Fernet(k) for k in keys])
        self._opened: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str) -> Keystore:
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise SecretError(
                f"secret_key_file {path} does not exist (dffmpeg-admin secret create makes one)"
            ) from None
        except OSError as exc:
            raise SecretError(f"cannot read secret_key_file {path}: {exc.strerror}") from exc
        keys = [line.strip().encode() for line in text.splitlines() if line.strip()]
        try:
            return cls(keys, path)
        except ValueError as exc:
            raise SecretError(f"secret_key_file {path} is not a list of Fernet keys") from exc

    @staticmethod
    def create(path: str) -> Keystore:
        target = Path(path)
        if target.exists():
            raise SecretError(f"secret_key_file {path} exists already")
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = Fernet.generate_key()
        write_private(target, key.decode() + "\n")
        return Keystore([key], path)

    def rotated(self) -> Keystore:
        """A new key first, the current ones after it; written to the file."""
        keys = [Fernet.generate_key(), *self.keys]
        self._save(keys)
        return Keystore(keys, self.path)

    def retired(self) -> Keystore:
        """Only the newest key kept (every stored key must be re-encrypted first)."""
        keys = self.keys[:1]
        self._save(keys)
        return Keystore(keys, self.path)

    def _save(self, keys: list[bytes]) -> None:
        if self.path is None:
            raise SecretError("this secret has no file")
        write_private(Path(self.path), "".join(k.decode() + "\n" for k in keys))

    def seal(self, key: str) -> str:
        return PREFIX + self._fernet.encrypt(key.encode()).decode()

    def open(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # stored before encryption: encrypted by the next upgrade
        with self._lock:
            opened = self._opened.get(stored)
        if opened is not None:
            return opened
        try:
            opened = self._fernet.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise SecretError("a stored key does not open with this secret") from None
        with self._lock:
            if len(self._opened) > 10_000:
                self._opened.clear()
            self._opened[stored] = opened
        return opened

    def reseal(self, stored: str) -> str:
        """``stored`` encrypted with the newest key (a plain key encrypted at all)."""
        return self.seal(self.open(stored))


# -- the app's keystore -------------------------------------------------------------------


def stored_keys_encrypted(rows: list[str]) -> bool:
    return any(value.startswith(PREFIX) for value in rows)


def open_or_create(path: str, encrypted_exist: bool) -> tuple[Keystore, bool]:
    """The secret at ``path``; made (mode 0600) when missing and nothing is encrypted
    yet -- a fresh install. Returns (keystore, created)."""
    if Path(path).exists():
        return Keystore.load(path), False
    if encrypted_exist:
        raise SecretError(
            f"secret_key_file {path} does not exist, but the database holds keys "
            "encrypted with a secret: copy that secret file here (every coordinator "
            "and dffmpeg-admin of one database must share it)"
        )
    return Keystore.create(path), True


class KeystoreHolder:
    """The app's keystore, opened at first use (a fresh install makes its secret then).

    Kept in ``app.extensions["dffmpeg.keystore"]``; ``current()`` is the request's view.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._keystore: Keystore | None = None
        self._lock = threading.Lock()

    def get(self) -> Keystore:
        keystore = self._keystore
        if keystore is not None:
            return keystore
        with self._lock:
            if self._keystore is None:
                self._keystore, _ = open_or_create(self.path, any_encrypted())
            return self._keystore


def any_encrypted() -> bool:
    """Whether the database holds a key encrypted with some secret."""
    from coordinator.db import db
    from coordinator.models import User

    stmt = db.select(User.client_id).where(User.hmac_key.like(PREFIX + "%")).limit(1)
    return db.session.execute(stmt).first() is not None


def current() -> Keystore:
    from flask import current_app

    holder: KeystoreHolder = current_app.extensions["dffmpeg.keystore"]
    return holder.get()


def reencrypt_all(store: Keystore) -> int:
    """Every stored identity key sealed with the newest key of ``store`` (plain ones
    encrypted for the first time); returns how many rows changed. One transaction."""
    from coordinator.db import db
    from coordinator.models import User

    changed = 0
    for user in db.session.execute(db.select(User)).scalars():
        resealed = store.reseal(user.hmac_key)
        if resealed != user.hmac_key:
            user.hmac_key = resealed
            changed += 1
    db.session.commit()
    return changed
