"""Dumper options from TOML and the environment: converters for attrs fields.

A dumper type's options are attrs fields; environment values are strings, so
each field takes a converter that accepts them (``autoload = "yes"``,
``tables = "a, b"``). See ``docs/plugins.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["to_args", "to_bool", "to_env", "to_float", "to_list", "to_optional_float"]


def to_bool(value: Any) -> bool:
    """``true``/``1``/``yes``/``on`` (any case) or a bool; :class:`ValueError` otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a yes/no value")


def to_float(value: Any) -> float:
    """A number of seconds, from a number or a string."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def to_optional_float(value: Any) -> float | None:
    """Like :func:`to_float`; ``None``, ``""`` and ``0`` mean no limit."""
    if value is None or value == "":
        return None
    number = to_float(value)
    return number if number > 0 else None


def to_list(value: Any) -> tuple[str, ...]:
    """A list of strings; a string is split on commas and white space (as env values are)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v for v in re.split(r"[,\s]+", value) if v)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{value!r} is not a list of strings")


def to_args(value: Any) -> tuple[str, ...]:
    """Extra command-line arguments: a list, or a string split on white space."""
    if isinstance(value, str):
        return tuple(value.split())
    return to_list(value)


def to_env(value: Any) -> dict[str, str]:
    """Extra environment variables: a table of strings."""
    if value is None:
        return {}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: str(v) for k, v in value.items()}
    raise ValueError(f"{value!r} is not a table of environment variables")
