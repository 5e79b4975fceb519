"""Specs: the parsed configuration of one target and of one dumper.

A spec is a value: what a configuration (Python, TOML or the environment)
says about a target or a dumper, checked where it enters, before any plugin
turns it into a :class:`~cellvault.targets.Target` or a
:class:`~cellvault.dumpers.Dumper`. Cells and the configuration hold specs;
this module imports no plugin.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from .errors import ConfigError
from .log import redact_text

__all__ = [
    "DEFAULT_TTL",
    "DumperLike",
    "DumperSpec",
    "TargetSpec",
    "check_cell_dumpers",
    "is_dumper_name",
    "to_dumpers",
    "validate_dumper_name",
]

#: Seconds a lease on a cell at a target lasts without renewal (``Config.lock_ttl``).
#: It is renewed every third of that.
DEFAULT_TTL = 120.0

_DUMPER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


# -- targets ----------------------------------------------------------------------------


@attrs.frozen
class TargetSpec:
    """How a target was configured: a name, an fsspec-style URL, and options.

    *options* are passed untouched to the target type (for fsspec targets,
    they are the ``storage_options``). Names are what reports, alerts and
    ``--target`` use: ``local``, ``s3``, ``nas``, ...
    """

    name: str = attrs.field()
    url: str = attrs.field()
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @name.validator
    def _check_name(self, attribute: attrs.Attribute[str], value: str) -> None:
        if not value or not value.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"invalid target name {value!r}", hint="use letters, digits, '-' and '_'"
            )

    @property
    def scheme(self) -> str:
        """The URL scheme (``s3``, ``oss``, ``file``), or ``""`` for a plain path."""
        head, sep, _ = self.url.partition("://")
        return head.lower() if sep else ""

    def display(self) -> str:
        """The URL with any credential masked, for messages."""
        return redact_text(self.url)


# -- dumpers ----------------------------------------------------------------------------


def validate_dumper_name(name: str) -> str:
    """Return *name* if it can name a dumper (it becomes ``dumps/<name>/``)."""
    if not isinstance(name, str) or not _DUMPER_NAME.fullmatch(name) or len(name) > 64:
        raise ConfigError(
            f"invalid dumper name {name!r}",
            hint="a dumper name is 1-64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit",
        )
    return name


def is_dumper_name(name: str) -> bool:
    """Tell whether *name* is a valid dumper name (a staged ``dumps/<name>/`` folder)."""
    return bool(_DUMPER_NAME.fullmatch(name))


@attrs.frozen
class DumperSpec:
    """A dumper as a cell's configuration states it: a type, a name, options.

    ``type`` selects the plugin (``postgres``, ``mysql``, ``sqlite``,
    ``redis``, ``command``, or a third party's); ``name`` (default: the type)
    names the dump inside the archive and must be unique within the cell.
    """

    type: str
    name: str = attrs.field(validator=lambda _, __, v: validate_dumper_name(v))
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "dumper") -> DumperSpec:
        """Read ``{"type": ..., "name": ..., **options}`` (a TOML table)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: a dumper is a table with a type, not {data!r}")
        kind = data.get("type")
        if not isinstance(kind, str) or not kind:
            raise ConfigError(
                f"{where}: a dumper needs a type",
                hint='for example type = "postgres" (or mysql, sqlite, redis, command)',
            )
        name = data.get("name", kind)
        if not isinstance(name, str):
            raise ConfigError(f"{where}: dumper name must be a string, not {name!r}")
        options = {k: v for k, v in data.items() if k not in ("type", "name")}
        return cls(kind, name, options)

    def display(self) -> str:
        return f"{self.name} (type {self.type})"


@runtime_checkable
class DumperLike(Protocol):
    """What a cell holds of a built dumper (a :class:`~cellvault.dumpers.Dumper`).

    A cell accepts a dumper object as well as its spec; this is the part of
    the plugin's interface the cell relies on, so that values need not
    import the plugin module.
    """

    name: str
    type: str

    def dump(self, ctx: Any) -> None: ...

    def load(self, ctx: Any) -> None: ...


def to_dumpers(value: Any) -> tuple[Any, ...]:
    """Normalize a cell's ``dumpers``: mappings become :class:`DumperSpec`; dumpers stay."""
    if isinstance(value, Mapping | DumperSpec | DumperLike):
        value = [value]
    out: list[Any] = []
    for item in value:
        if isinstance(item, DumperSpec | DumperLike):
            out.append(item)
        elif isinstance(item, Mapping):
            out.append(DumperSpec.from_mapping(item))
        else:
            raise ConfigError(
                f"a dumper is a Dumper, a DumperSpec or a table with a type, not {item!r}"
            )
    return tuple(out)


def check_cell_dumpers(cell: Any, attribute: Any, value: tuple[Any, ...]) -> None:
    """attrs validator for :attr:`Cell.dumpers`: names are unique within the cell."""
    seen: set[str] = set()
    for item in value:
        if item.name in seen:
            raise ConfigError(
                f"cell {cell.name}: two dumpers are named {item.name!r}",
                hint="give each dumper of a cell its own name",
            )
        seen.add(item.name)
