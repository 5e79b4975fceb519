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

from ..errors import ArchiveCorrupt, DrError
from ..report import plain
from ..trust import (
    check_archive_of,
    check_cell_archives,
    check_count,
    check_name,
    load_record,
)

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
        if not isinstance(data, Mapping):
            raise TypeError("the hand-back is not a JSON object")
        return cls(
            site_id=check_name(data["site_id"], "hand-back site"),
            host=str(data.get("host", "")),
            at=parse_time(data["at"]),
            archives=check_cell_archives(data.get("archives"), "hand-back archives"),
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
            data = load_record(raw, where)
            previous = data.get("previous_site")
            event = str(data.get("event", "failover"))
            if event not in ("failover", "failback"):
                raise ValueError(f"event {event!r} is neither failover nor failback")
            return cls(
                site_id=check_name(data["site_id"], "site"),
                at=parse_time(data["at"]),
                host=str(data.get("host", "")),
                event=event,
                previous_site=None if previous is None else check_name(previous, "previous site"),
                restored=check_cell_archives(data.get("restored"), "restored"),
                verified=check_cell_archives(data.get("verified"), "verified"),
                handback=Handback.from_dict(data["handback"]) if data.get("handback") else None,
                forced=data.get("forced", False) is True,
                format=check_count(data.get("format"), "format", default=DR_FORMAT),
            )
        except (KeyError, TypeError, ValueError, OverflowError, ArchiveCorrupt) as exc:
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
    def from_dict(cls, data: Mapping[str, Any], cell: str = "?") -> Holding:
        if not isinstance(data, Mapping):
            raise TypeError(f"the holding of cell {cell} is not a JSON object")
        return cls(
            count=check_count(data.get("count"), "count", default=0),
            bytes=check_count(data.get("bytes"), "bytes", default=0),
            newest=check_archive_of(data.get("newest"), cell, "newest"),
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
    def from_json(cls, raw: bytes, *, name: str | None = None) -> SiteRecord:
        """Parse a site record (stored as ``<site>.json``: *name*); :class:`DrError` when unusable."""
        try:
            data = load_record(raw, "site record")
            site = check_name(data["site_id"], "site")
            if name is not None and name != f"{site}.json":
                raise ValueError(f"it names site {site}, not the one its name says")
            cells = data.get("cells") or {}
            if not isinstance(cells, Mapping) or len(cells) > 100_000:
                raise TypeError("cells is not an object of cells")
            return cls(
                site_id=site,
                host=str(data.get("host", "")),
                at=parse_time(data["at"]),
                action=str(data.get("action", "")),
                cells={
                    check_name(k, "cell"): Holding.from_dict(v, str(k)) for k, v in cells.items()
                },
            )
        except (KeyError, TypeError, ValueError, OverflowError, ArchiveCorrupt) as exc:
            raise DrError(
                f"the site record {name or ''} is unusable ({exc})".replace("  ", " ")
            ) from None
