"""What an admin grants a worker identity: a registration is believed only that far.

A worker says how many slots it has, which labels it carries and what its binaries
print. A worker identity whose key was stolen, or whose operator is not to be trusted
with everything, would otherwise take every client's jobs (with their env and stdin)
and answer every drop-in's fast probes. A grant, set per worker identity by an admin
(``dffmpeg-admin worker grant``, ``PUT /api/v1/users/ID/grant``), fixes:

- ``labels``: the labels it may carry (a registration's others are dropped, and logged);
- ``max_slots``: at most this many slots;
- ``clients``: whose jobs it may run (others never go to it);
- ``trust_probes``: whether its captured ``-version``/``-encoders``/... outputs may be
  served to drop-ins. Fast probes for a client come only from an online worker that is
  trusted for them *and* may run that client's jobs: a worker can show a client no
  more than the jobs it runs for it already do.

No grant (``None`` everywhere, probes trusted) is the default: an identity an admin made
is believed. ``None`` in a field means "not restricted".
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from coordinator.errors import BadRequest

log = logging.getLogger(__name__)

MAX_ENTRIES = 256


@dataclass(frozen=True)
class Grant:
    labels: list[str] | None = None
    max_slots: int | None = None
    clients: list[str] | None = None
    trust_probes: bool = True

    @classmethod
    def of(cls, stored: dict[str, Any] | None) -> Grant:
        """The grant as stored (a JSON column; None: no grant)."""
        if not stored:
            return cls()
        return cls(
            labels=stored.get("labels"),
            max_slots=stored.get("max_slots"),
            clients=stored.get("clients"),
            trust_probes=bool(stored.get("trust_probes", True)),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cut(self, worker_id: str, slots: int, labels: list[str]) -> tuple[int, list[str]]:
        """A registration's slots and labels, cut to the grant (what was cut is logged)."""
        granted_slots = slots if self.max_slots is None else min(slots, self.max_slots)
        granted_labels = labels if self.labels is None else [x for x in labels if x in self.labels]
        if granted_slots != slots or granted_labels != labels:
            log.warning(
                "worker %s registered %d slots and labels %s; granted %d slots and %s",
                worker_id,
                slots,
                sorted(labels),
                granted_slots,
                sorted(granted_labels),
            )
        return granted_slots, granted_labels


def parse(data: dict[str, Any]) -> Grant:
    """A grant from an admin's request body; 400 for anything else."""
    unknown = set(data) - {"labels", "max_slots", "clients", "trust_probes"}
    if unknown:
        raise BadRequest(f"unknown grant field {sorted(unknown)[0]!r}")
    labels = _names(data, "labels")
    clients = _names(data, "clients")
    max_slots = data.get("max_slots")
    if max_slots is not None and (
        isinstance(max_slots, bool) or not isinstance(max_slots, int) or not 1 <= max_slots <= 4096
    ):
        raise BadRequest("max_slots must be an integer from 1 to 4096, or null")
    trust = data.get("trust_probes", True)
    if not isinstance(trust, bool):
        raise BadRequest("trust_probes must be true or false")
    return Grant(labels=labels, max_slots=max_slots, clients=clients, trust_probes=trust)


def _names(data: dict[str, Any], key: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) > MAX_ENTRIES
        or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value)
    ):
        raise BadRequest(f"{key} must be a list of at most {MAX_ENTRIES} names, or null")
    return sorted(set(value))
