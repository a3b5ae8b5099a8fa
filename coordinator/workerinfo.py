"""What the coordinator keeps about a worker for operators: details, load, overrides.

A worker's registration and heartbeats carry text and numbers of its own choosing.
Only known fields are kept, numbers must be finite and in range, strings are cut to a
length; so what every console refresh reads stays small and well-formed whatever a
worker sends. Strings are kept as sent: whoever shows them makes them printable
(``dffmpeg.text.printable``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from coordinator.errors import BadRequest

MAX_GPUS = 16
MAX_MOUNTS = 64
MAX_TEXT = 255
LOAD_NUMBERS = ("cpu_percent", "cpus", "load_1m", "memory_percent", "memory_total_mib")
GPU_NUMBERS = (
    "index",
    "utilization",
    "encoder",
    "decoder",
    "memory_used_mib",
    "memory_total_mib",
    "encoder_sessions",
)
GPU_TEXT = ("vendor", "name")
# Hardware checks shown per binary: names are short, reasons are cut.
MAX_CHECKS = 256
MAX_REASON = 200


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or abs(value) > 1e12:
        return None
    return value


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def clean_load(raw: Any, now: datetime) -> dict[str, Any] | None:
    """A load sample as stored: known numbers, up to 16 GPUs, and when it arrived."""
    if not isinstance(raw, dict):
        return None
    load: dict[str, Any] = {}
    for key in LOAD_NUMBERS:
        value = _number(raw.get(key))
        if value is not None:
            load[key] = value
    gpus: list[dict[str, Any]] = []
    for gpu in raw.get("gpus") or []:
        if not isinstance(gpu, dict) or len(gpus) >= MAX_GPUS:
            continue
        kept: dict[str, Any] = {}
        for key in GPU_NUMBERS:
            value = _number(gpu.get(key))
            if value is not None:
                kept[key] = value
        for key in GPU_TEXT:
            text = _text(gpu.get(key), 64)
            if text is not None:
                kept[key] = text
        gpus.append(kept)
    if gpus:
        load["gpus"] = gpus
    load["at"] = now.isoformat()
    return load


def registration_info(data: dict[str, Any], binaries: dict[str, Any]) -> dict[str, Any]:
    """The details of a registering worker that an operator reads (``workers.info``)."""
    summary: dict[str, Any] = {}
    for name, entry in binaries.items():
        entry = entry if isinstance(entry, dict) else {}
        summary[name[:64]] = {
            "path": _text(entry.get("path")),
            "version": _text(entry.get("version")),
        }
    mounts = data.get("mounts")
    mounts = mounts if isinstance(mounts, dict) else {}
    kept_mounts: dict[str, Any] = {}
    for variable, root in list(mounts.items())[:MAX_MOUNTS]:
        if isinstance(root, dict):  # {path: /root, writable: false}
            root = root.get("path")
        if isinstance(root, str):
            kept_mounts[str(variable)[:64]] = root[:MAX_TEXT]
    return {
        "binaries": summary,
        "mounts": kept_mounts,
        "os": _text(data.get("os")),
    }


def hardware_checks(binaries: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{binary: {name: "ok" or why not}}`` from a probe report, cut to size (the
    details view shows them; the listing does not carry them)."""
    result: dict[str, dict[str, str]] = {}
    for name, entry in binaries.items():
        checks = entry.get("hardware") if isinstance(entry, dict) else None
        if isinstance(checks, dict):
            result[name[:64]] = {
                str(k)[:64]: str(v)[:MAX_REASON] for k, v in list(checks.items())[:MAX_CHECKS]
            }
    return result


def versions(info: dict[str, Any] | None, binaries: dict[str, Any] | None) -> dict[str, Any]:
    """``{binary: {"path", "version"}}`` for listings; from the probe report for a
    worker registered before ``workers.info`` existed."""
    if info and isinstance(info.get("binaries"), dict):
        return {
            name: {"path": entry.get("path"), "version": entry.get("version")}
            for name, entry in info["binaries"].items()
        }
    result = {}
    for name, entry in (binaries or {}).items():
        entry = entry if isinstance(entry, dict) else {}
        result[name] = {"path": entry.get("path"), "version": entry.get("version")}
    return result


def parse_overrides(data: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """An admin's change: ``slots`` (a count, or null for the worker's own) and
    ``labels`` (a list of strings, or null); keys left out stay as they were."""
    overrides = dict(current or {})
    if not data or not set(data) <= {"slots", "labels"}:
        raise BadRequest("give 'slots' and/or 'labels' (null returns to the worker's config)")
    if "slots" in data:
        slots = data["slots"]
        if slots is None:
            overrides.pop("slots", None)
        elif isinstance(slots, bool) or not isinstance(slots, int) or not 1 <= slots <= 1024:
            raise BadRequest("field 'slots' must be a whole number from 1 to 1024, or null")
        else:
            overrides["slots"] = slots
    if "labels" in data:
        labels = data["labels"]
        if labels is None:
            overrides.pop("labels", None)
        elif not isinstance(labels, list) or not all(
            isinstance(x, str) and 0 < len(x) <= 64 for x in labels
        ):
            raise BadRequest("field 'labels' must be a list of names (1-64 characters), or null")
        elif len(labels) > 64:
            raise BadRequest("field 'labels' may hold at most 64 labels")
        else:
            overrides["labels"] = list(dict.fromkeys(labels))
    return overrides


def effective(
    configured_slots: int, configured_labels: list[str], overrides: dict[str, Any] | None
) -> tuple[int, list[str]]:
    """The slots and labels the scheduler uses: an admin's override wins."""
    overrides = overrides or {}
    slots = overrides.get("slots", configured_slots)
    labels = overrides.get("labels", configured_labels)
    return int(slots), list(labels)
