"""Strict reading of config files: every key must be known, every value of the right type.

The known keys are not listed anywhere by hand: they are the fields of the config
dataclasses in ``dffmpeg.config``. A field is read from the YAML key of its own name,
unless its metadata (``yaml_keys(...)``) names other keys: several (``hmac_key`` is read
from ``hmac_key`` or ``hmac_key_file``), a block (``brokers`` from ``mqtt`` and
``rabbitmq``), or none (``source``, which comes from where the file was found). So a new
setting is one new field: its key is known, and its value is checked against the field's
annotation, without touching this module.

Values of the plain types (``int``, ``float``, ``bool``, ``str``, ``list[str]``, and
unions of these with ``None``) are checked here, before ``from_dict`` converts them, so a
wrong one is one line naming the key, the value and the type expected. Fields of other
types (mappings, dataclasses) are parsed by ``from_dict`` itself, which raises
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from typing import Any

# What ``yaml_keys`` stores in a field's metadata.
KEYS = "yaml_keys"
# Added by the loader: the file the settings came from. Never a key of the file itself.
PATH_KEY = "_path"


class ConfigError(Exception):
    """The configuration is missing or wrong; the message says what to fix."""


def yaml_keys(*names: str) -> dict[str, Any]:
    """Field metadata: the field is read from these YAML keys instead of its own name."""
    return {KEYS: names}


def known_keys(cls: type) -> list[str]:
    """Every YAML key the dataclass ``cls`` reads, in field order."""
    keys: list[str] = []
    for item in fields(cls):
        keys.extend(item.metadata.get(KEYS, (item.name,)))
    return keys


def check_keys(known: Iterable[str], data: Mapping[str, Any], block: str = "") -> None:
    """Refuse keys of ``data`` not in ``known``, suggesting the closest known one."""
    valid = list(known)
    unknown = [k for k in data if k not in valid and k != PATH_KEY]
    if not unknown:
        return
    import difflib  # only on this error path: the drop-in loads this module at every start

    problems = []
    for key in unknown:
        name = f"{block}{key}"
        close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
        if close:
            problems.append(f"unknown key {name!r} (did you mean {block + close[0]!r}?)")
        else:
            problems.append(f"unknown key {name!r} (known keys: {', '.join(valid)})")
    raise ConfigError("; ".join(problems))


def check_config(cls: type, data: Mapping[str, Any]) -> None:
    """Known keys only, and plain values of the type their field declares."""
    check_keys(known_keys(cls), data)
    for item in fields(cls):
        for key in item.metadata.get(KEYS, (item.name,)):
            if key in data:
                check_value(key, data[key], item.type)


def check_block(name: str, cls: type, data: Mapping[str, Any], strip: str = "") -> dict[str, Any]:
    """A nested block (``mqtt:``, a ``paths`` value): a mapping whose keys are the fields
    of ``cls`` (with the prefix ``strip`` taken off their names). Returns it as a dict."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {shown(data)}")
    own = {f.name[len(strip) :]: f for f in fields(cls) if f.name.startswith(strip)}
    check_keys(own, data, block=f"{name}.")
    for key, value in data.items():
        check_value(f"{name}.{key}", value, own[key].type)
    return dict(data)


def shown(value: Any) -> str:
    """A value as an error message quotes it: short, one line."""
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_value(key: str, value: Any, annotation: Any) -> None:
    """Raise ConfigError unless ``value`` fits ``annotation`` (plain types only)."""
    expected = _expected(annotation)
    if expected is None:
        return  # not a plain type: the field's own parser checks it
    description, accepts = expected
    if not accepts(value):
        raise ConfigError(f"{key}: expected {description}, got {shown(value)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_str_list(value: Any) -> bool:
    # A single string stands for a list of one.
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(x, str) for x in value)
    )


# The plain types, by how an annotation spells them.
_PLAIN: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "int": ("an integer", _is_int),
    "float": ("a number", _is_number),
    "str": ("a string", lambda v: isinstance(v, str)),
    "list[str]": ("a list of strings", _is_str_list),
}


def _expected(annotation: Any) -> tuple[str, Callable[[Any], bool]] | None:
    """(description, predicate) for a plain type or a union of them, else None.

    Read from the annotation's text (``int``, ``float | None``): the dataclasses use
    postponed annotations, and reading the text costs nothing at start-up, where
    resolving the annotations would (the drop-in loads its config at every start).
    """
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    members = [m.strip() for m in text.split("|")]
    optional = "None" in members
    parts = [_PLAIN.get(m) for m in members if m != "None"]
    plain = [p for p in parts if p is not None]
    if not plain or len(plain) < len(parts):
        return None
    if len(plain) == 1 and not optional:
        return plain[0]
    descriptions = [d for d, _ in plain] + (["nothing"] if optional else [])

    def accepts(value: Any) -> bool:
        return (optional and value is None) or any(test(value) for _, test in plain)

    return " or ".join(descriptions), accepts
