"""What DR persists: the failover marker, the hand-back, and each site's record of its holdings.

These are stored as JSON on the object storage and in the site's own backup
directory, so their JSON is a format: :meth:`Record.to_dict` is
:func:`~cellvault.report.plain` of the value, without the ``ok`` a report adds.

What lives where on the object storage, beside the cells' folders::

    <root>/.dr/failover.json            the failover marker, while a failover is in effect
    <root>/.dr/history/<stamp>_*.json   markers of finished failovers and failbacks
    <root>/.dr/sites/<site>.json        what each site held at its last sync
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import DrError
from ..report import plain

__all__ = [
    "DR_FORMAT",
    "HISTORY_FOLDER",
    "MARKER_KEY",
    "SITES_FOLDER",
    "FailoverMarker",
    "Handback",
    "Holding",
    "Record",
    "SiteRecord",
    "parse_time",
]

#: Keys on the object storage (relative to each target's root).
MARKER_KEY = ".dr/failover.json"
HISTORY_FOLDER = ".dr/history"
SITES_FOLDER = ".dr/sites"
#: Version of the marker and site-record JSON.
DR_FORMAT = 1


def parse_time(text: Any) -> dt.datetime:
    """A time as records write it (ISO 8601, ``Z`` or an offset; naive means UTC), in UTC."""
    when = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _names(data: Mapping[str, Any], key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(data.get(key) or {}).items()}


class Record:
    """The base of DR's persisted values (and of the plain values inside its reports)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what is stored, and what ``--json`` prints)."""
        out: dict[str, Any] = plain(self)
        return out

    def to_json(self) -> bytes:
        """The stored form: sorted, indented JSON with a final newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n"


@attrs.frozen
class Handback(Record):
    """The active site's hand-back at the start of a failback: what it pushed, and when."""

    site_id: str
    host: str
    at: dt.datetime
    #: cell -> the archive the primary must restore (the newest the active site made).
    archives: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Handback:
        return cls(
            site_id=str(data["site_id"]),
            host=str(data.get("host", "")),
            at=parse_time(data["at"]),
            archives=_names(data, "archives"),
        )


@attrs.frozen
class FailoverMarker(Record):
    """Which site serves, since when, and with what data.

    Written to every object-storage target (``.dr/failover.json``) and to the
    site's ``<backup_dir>/.cellvault/dr/failover.json`` by a failover; while
    it exists, the site it names is the active one. *event* is ``failover``
    (a standby took over) or ``failback`` (the marker handed to the
    ``cellvault_failover`` hooks when the primary takes over again; that one
    is kept in the history only).
    """

    site_id: str
    at: dt.datetime
    host: str
    event: str = "failover"
    #: The site that was active before.
    previous_site: str | None = None
    #: cell -> archive restored into the cells' paths by cellvault (empty if none).
    restored: Mapping[str, str] = attrs.field(factory=dict)
    #: cell -> newest archive fully verified on the site at the switch.
    verified: Mapping[str, str] = attrs.field(factory=dict)
    #: Set by the active site when it hands back (the first step of a failback).
    handback: Handback | None = None
    forced: bool = False
    format: int = DR_FORMAT

    @property
    def history_name(self) -> str:
        """Its file name in the history: ``<stamp>_<event>_<site>.json``."""
        return f"{self.at.strftime('%Y%m%d_%H%M%S')}_{self.event}_{self.site_id}.json"

    @classmethod
    def from_json(cls, raw: bytes, *, where: str = "failover marker") -> FailoverMarker:
        """Parse a marker; :class:`DrError` when it is unusable."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return cls(
                site_id=str(data["site_id"]),
                at=parse_time(data["at"]),
                host=str(data.get("host", "")),
                event=str(data.get("event", "failover")),
                previous_site=data.get("previous_site"),
                restored=_names(data, "restored"),
                verified=_names(data, "verified"),
                handback=Handback.from_dict(data["handback"]) if data.get("handback") else None,
                forced=bool(data.get("forced", False)),
                format=int(data.get("format", DR_FORMAT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DrError(
                f"the {where} is unusable ({type(exc).__name__}: {exc})",
                hint="inspect it; delete it only if you know which site serves",
            ) from None


@attrs.frozen
class Holding(Record):
    """What one target holds of one cell: committed archives, their bytes, the newest."""

    count: int = 0
    bytes: int = 0
    newest: str | None = None
    newest_at: dt.datetime | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Holding:
        return cls(
            count=int(data.get("count", 0)),
            bytes=int(data.get("bytes", 0)),
            newest=data.get("newest"),
            newest_at=parse_time(data["newest_at"]) if data.get("newest_at") else None,
        )


@attrs.frozen
class SiteRecord(Record):
    """What a site held at its last DR step, as it recorded on the object storage."""

    site_id: str
    host: str
    at: dt.datetime
    #: The step that wrote it: push, pull, prepare, failover, handback, failback.
    action: str
    cells: Mapping[str, Holding] = attrs.field(factory=dict)

    @classmethod
    def from_json(cls, raw: bytes) -> SiteRecord:
        data = json.loads(raw)
        return cls(
            site_id=str(data["site_id"]),
            host=str(data.get("host", "")),
            at=parse_time(data["at"]),
            action=str(data.get("action", "")),
            cells={str(k): Holding.from_dict(v) for k, v in dict(data.get("cells") or {}).items()},
        )
