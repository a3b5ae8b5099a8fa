"""Limits per identity: what one client or worker may queue, store and hold.

Every identity has every limit: the value an admin set for it (``users.quotas``), else
the coordinator's ``default_quotas``, else the default here. A request past a limit is
refused before anything of it is stored, with a JSON body naming the limit::

    {"error": "limit_exceeded", "limit": "max_env_bytes", "allowed": 65536,
     "requested": 8388608, "message": "..."}

with 413 for sizes, 429 for counts (pending jobs, held requests) and 403 for a priority
above the identity's ``max_priority``. See docs/api.md#limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ApiError, BadRequest

MiB = 1024 * 1024
# Large enough for any real value, small enough for every integer column and for JSON.
MAX_LIMIT = 2**53


@dataclass(frozen=True)
class Limit:
    default: int
    status: int
    what: str
    minimum: int = 0


LIMITS: dict[str, Limit] = {
    "max_pending": Limit(200, 429, "pending jobs of the identity"),
    "max_stdin_bytes": Limit(256 * MiB, 413, "stdin bytes stored for one job"),
    # The drop-in submits its start-up probes at 100 (docs/dropin.md).
    "max_priority": Limit(100, 403, "highest priority a job may ask for", -(2**31)),
    "max_cwd_bytes": Limit(4096, 413, "bytes of a job's working directory"),
    "max_env_bytes": Limit(64 * 1024, 413, "bytes of a job's environment (names and values)"),
    "max_label_bytes": Limit(
        4096, 413, "bytes of a job's or worker's labels (required and preferred together)"
    ),
    "max_args_bytes": Limit(MiB, 413, "bytes of a job's arguments"),
    "max_registration_bytes": Limit(
        4 * MiB, 413, "bytes of a worker registration (probe outputs included)"
    ),
    "max_held_requests": Limit(
        16, 429, "long-polls and streams the identity may hold open at once (per process)", 1
    ),
}


class LimitExceeded(ApiError):
    code = "limit_exceeded"

    def __init__(self, name: str, allowed: int, requested: int | None = None) -> None:
        limit = LIMITS[name]
        super().__init__(
            f"{limit.what}: at most {allowed} allowed for this identity ({name})",
            limit=name,
            allowed=allowed,
            **({"requested": requested} if requested is not None else {}),
        )
        self.status = limit.status


def validate(values: Mapping[str, Any], allow_none: bool = False) -> dict[str, Any]:
    """Known names with integer values in range; 400 (ValueError for config) otherwise."""
    result: dict[str, Any] = {}
    for name, value in values.items():
        limit = LIMITS.get(name)
        if limit is None:
            raise BadRequest(f"unknown limit {name!r} (known: {', '.join(LIMITS)})")
        if value is None and allow_none:
            result[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequest(f"limit {name} must be an integer")
        if not limit.minimum <= value <= MAX_LIMIT:
            raise BadRequest(f"limit {name} must be between {limit.minimum} and {MAX_LIMIT}")
        result[name] = value
    return result


def effective(defaults: Mapping[str, int], own: Mapping[str, int] | None) -> dict[str, int]:
    """Every limit's value for an identity: its own, else the configured, else built-in."""
    values = {name: limit.default for name, limit in LIMITS.items()}
    values.update({k: v for k, v in defaults.items() if k in LIMITS})
    values.update({k: v for k, v in (own or {}).items() if k in LIMITS and isinstance(v, int)})
    return values


def check(limits: Mapping[str, int], name: str, requested: int) -> None:
    """Refuse ``requested`` (a size, count or priority) above the identity's limit."""
    allowed = limits[name]
    if requested > allowed:
        raise LimitExceeded(name, allowed, requested)


def size_of(value: Any) -> int:
    """Bytes of a string, or of the strings in a list or mapping (keys included)."""
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, Mapping):
        return sum(size_of(k) + size_of(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(size_of(v) for v in value)
    return len(str(value))
