"""Archive identities, metadata and the sidecar that commits an archive.

An archive is one immutable backup of one cell at one instant. Its id is
``cell_<cell>_<YYYYMMDD_HHMMSS>`` (the stamp is UTC), which is also its file
name on every target: ``<root>/<cell>/<id>.tar.zst`` (or ``.tar.gz``) and the
sidecar ``<root>/<cell>/<id>.json``, written last, that makes it count.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from .cell import validate_cell_name
from .errors import ArchiveCorrupt, ConfigError, json_kind
from .trust import (
    MAX_SIDECAR_BYTES,
    check_count,
    check_data_name,
    check_digest,
    check_encryption,
    check_holder,
    check_roots,
)

__all__ = [
    "FORMAT_VERSION",
    "ArchiveId",
    "ArchiveMeta",
    "Kind",
    "Selector",
    "Sidecar",
    "canonical_json",
    "format_stamp",
    "parse_stamp",
]

#: Version of the archive format this cellvault writes (see docs/format.md).
FORMAT_VERSION = 1

Kind = Literal["full", "incremental"]
KINDS: tuple[str, ...] = ("full", "incremental")


def to_kind(value: object, what: str = "backup kind") -> Kind:
    """*value* as a :data:`Kind`; a :class:`ConfigError` naming *what* otherwise."""
    if value == "full":
        return "full"
    if value == "incremental":
        return "incremental"
    raise ConfigError(f"{what} {value!r} is neither full nor incremental")


STAMP_FORMAT = "%Y%m%d_%H%M%S"
# re.ASCII: \d would otherwise accept any Unicode digit (Arabic-Indic, fullwidth, ...).
_STAMP = re.compile(r"\d{8}_\d{6}", re.ASCII)
_ID = re.compile(r"cell_(?P<cell>[a-z0-9][a-z0-9_-]*)_(?P<stamp>\d{8}_\d{6})", re.ASCII)


def utcnow() -> dt.datetime:
    """Now, in UTC, to the second (archive stamps have one-second resolution)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def format_stamp(when: dt.datetime) -> str:
    """Format an aware datetime as an archive stamp (``YYYYMMDD_HHMMSS``, UTC)."""
    if when.tzinfo is None:
        raise ValueError("archive stamps are made from timezone-aware datetimes")
    utc = when.astimezone(dt.UTC)
    # Not strftime: "%Y" does not pad years before 1000, and the stamp must stay 15 characters.
    date = f"{utc.year:04d}{utc.month:02d}{utc.day:02d}"
    return f"{date}_{utc.hour:02d}{utc.minute:02d}{utc.second:02d}"


def parse_stamp(text: str) -> dt.datetime:
    """Parse an archive stamp into an aware UTC datetime."""
    if not _STAMP.fullmatch(text):
        raise ConfigError(f"malformed archive stamp {text!r}", hint="expected YYYYMMDD_HHMMSS")
    try:
        return dt.datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise ConfigError(f"malformed archive stamp {text!r}: {exc}") from None


@attrs.frozen(order=True)
class ArchiveId:
    """The identity of one archive: a cell and a UTC instant to the second.

    Ordered by cell, then time. ``str(ArchiveId)`` is the id as the seed names
    its packages: ``cell_crm_20250101_020000``.
    """

    cell: str = attrs.field(validator=lambda _, __, v: validate_cell_name(v))
    when: dt.datetime = attrs.field()

    @when.validator
    def _check_when(self, attribute: attrs.Attribute[dt.datetime], value: dt.datetime) -> None:
        if value.tzinfo is None or value.microsecond:
            raise ValueError("an archive instant is timezone-aware and whole seconds")

    @property
    def stamp(self) -> str:
        """The ``YYYYMMDD_HHMMSS`` part of the id."""
        return format_stamp(self.when)

    def __str__(self) -> str:
        return f"cell_{self.cell}_{self.stamp}"

    @classmethod
    def parse(cls, text: str) -> ArchiveId:
        """Parse ``cell_<cell>_<YYYYMMDD_HHMMSS>``; raise :class:`ConfigError` otherwise."""
        match = _ID.fullmatch(text)
        if not match:
            raise ConfigError(
                f"malformed archive id {text!r}",
                hint="archive ids look like cell_crm_20250101_020000",
            )
        return cls(match["cell"], parse_stamp(match["stamp"]))

    @classmethod
    def is_id(cls, text: str) -> bool:
        """Tell whether *text* has the shape of an archive id."""
        return _ID.fullmatch(text) is not None


def _epoch(value: Any) -> int | None:
    """A ``meta.json`` epoch: absent, or a positive integer."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"epoch {value!r} is not a positive integer")
    return value


def _older(text: Any, own: str) -> ArchiveId:
    """A parent or chain link: an archive id of the same cell, not newer than *own*."""
    if not isinstance(text, str):
        raise TypeError(f"an archive id is {json_kind(text)}, not a string")
    return ArchiveId.parse(check_holder(text, own))


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _from_iso(text: Any) -> dt.datetime:
    return dt.datetime.fromisoformat(_text(text, "backed_at").replace("Z", "+00:00")).astimezone(
        dt.UTC
    )


def _text(value: Any, what: str) -> str:
    """A ``meta.json`` value that must be a string."""
    if not isinstance(value, str):
        raise TypeError(f"{what} is {_JSON_KINDS.get(type(value), 'not JSON')}, not a string")
    return value


_JSON_KINDS = {
    dict: "an object",
    list: "an array",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


@attrs.frozen
class ArchiveMeta:
    """What ``meta.json``, the first member of every archive, says.

    ``backed_at`` is the instant the scan started, in UTC, to the microsecond;
    the seed's verify checks that it is present.
    """

    id: ArchiveId
    kind: Kind = attrs.field(validator=attrs.validators.in_(KINDS))
    backed_at: dt.datetime
    host: str
    version: str
    codec: str
    parent: ArchiveId | None = None
    #: The archive ids this one needs to restore, oldest first, itself excluded.
    chain: tuple[ArchiveId, ...] = ()
    #: archive root name -> the absolute path it was taken from.
    roots: Mapping[str, str] = attrs.field(factory=dict)
    #: Why the archive was made: "scheduled", "pre-restore", "demo", ...
    reason: str = "scheduled"
    format: int = FORMAT_VERSION
    #: DR fencing (:mod:`cellvault.fence`): the epoch the writing site held, and its id.
    epoch: int | None = None
    site: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written as ``meta.json``."""
        fenced = {} if self.epoch is None else {"epoch": self.epoch, "site": self.site}
        return {
            **fenced,
            "format": self.format,
            "id": str(self.id),
            "cell": self.id.cell,
            "kind": self.kind,
            "parent": str(self.parent) if self.parent else None,
            "chain": [str(a) for a in self.chain],
            "backed_at": _iso(self.backed_at),
            "host": self.host,
            "cellvault_version": self.version,
            "codec": self.codec,
            "roots": dict(self.roots),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArchiveMeta:
        """Read ``meta.json``; raise :class:`ArchiveCorrupt` when it is unusable."""
        if not isinstance(data, Mapping):
            raise ArchiveCorrupt(
                f"meta.json is unusable ({json_kind(data)}, not an object)",
                archive="?",
                member="meta.json",
            )
        ident = str(data.get("id", "?"))
        try:
            if "backed_at" not in data:
                raise KeyError("backed_at")
            chain = data.get("chain") or ()
            if not isinstance(chain, list | tuple):
                raise TypeError(f"chain is {json_kind(chain)}, not a list")
            if data["kind"] not in KINDS:
                raise ValueError(f"kind {data['kind']!r} is neither full nor incremental")
            return cls(
                id=ArchiveId.parse(_text(data["id"], "id")),
                kind=data["kind"],
                backed_at=_from_iso(data["backed_at"]),
                host=_text(data.get("host", ""), "host"),
                version=_text(data.get("cellvault_version", ""), "cellvault_version"),
                codec=_text(data.get("codec", ""), "codec"),
                parent=_older(data["parent"], ident) if data.get("parent") else None,
                chain=tuple(_older(a, ident) for a in chain),
                roots=check_roots(data.get("roots", {}), archive=ident),
                reason=_text(data.get("reason", "scheduled"), "reason"),
                format=int(data.get("format", FORMAT_VERSION)),
                epoch=_epoch(data.get("epoch")),
                site=str(data["site"]) if data.get("site") is not None else None,
            )
        except ArchiveCorrupt as exc:
            raise ArchiveCorrupt(
                f"meta.json is unusable ({exc.detail})", archive=ident, member="meta.json"
            ) from None
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ArchiveCorrupt(
                f"meta.json is unusable ({type(exc).__name__}: {exc})",
                archive=ident,
                member="meta.json",
            ) from None

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n"


@attrs.frozen
class Sidecar:
    """The commit marker ``<id>.json`` stored beside an archive, after it.

    A target lists an archive only when its sidecar exists, so a crash during
    an upload leaves debris, never a half archive that looks whole.
    """

    meta: ArchiveMeta
    #: File name of the archive data on the target (``<id>.tar.zst``).
    data_name: str
    size: int
    sha256: str
    files: int = 0
    bytes_read: int = 0
    #: Content checksums of the data besides sha256, by kind (``md5``,
    #: ``crc64ecma``): what object stores report on HEAD, so that a quick
    #: verify can compare them without reading the data.
    checksums: Mapping[str, str] = attrs.field(factory=dict)
    #: Bytes of the uncompressed manifest (its copy is never expanded further).
    manifest_size: int | None = None
    #: The token of the lease the committing run held on this target (fencing).
    lease: str | None = None
    #: The fingerprints of the age recipients the data and manifest copy are
    #: sealed to (:mod:`cellvault.crypt`); ``None`` when they are not encrypted.
    encryption: tuple[str, ...] | None = None
    #: sha256 of the stored manifest copy (``<id>.manifest.json.zst``), so that
    #: the signature covers the manifest too; absent in older sidecars.
    manifest_sha256: str | None = None
    #: The site's signature of :meth:`canonical` (:mod:`cellvault.signing`):
    #: ``alg``, ``key`` (the key id) and ``sig`` (base64); ``None``: unsigned.
    signature: Mapping[str, str] | None = None
    #: The canonical JSON of every field but the signature, as read from a
    #: target (unknown fields included); ``None`` for a sidecar built here.
    signed_body: bytes | None = attrs.field(default=None, eq=False, repr=False)

    @property
    def id(self) -> ArchiveId:
        return self.meta.id

    def canonical(self) -> bytes:
        """What the signature covers: every field but the signature, as canonical JSON."""
        return canonical_json(self._kept() or self.body())

    def _kept(self) -> dict[str, Any] | None:
        """The fields as read (unknown ones too), while every known one still has its value.

        A sidecar changed since it was read (``attrs.evolve``) is written from
        its fields, and its old signature no longer matches it.
        """
        if self.signed_body is None:
            return None
        raw: dict[str, Any] = json.loads(self.signed_body)
        known = self.body()
        return raw if all(k in raw and raw[k] == v for k, v in known.items()) else None

    def to_json(self) -> bytes:
        body = self._kept() or self.body()
        if self.signature is not None:
            body["signature"] = dict(self.signature)
        return json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"

    def body(self) -> dict[str, Any]:
        """The sidecar's fields as JSON values, the signature left out."""
        body = {
            **self.meta.to_dict(),
            "data": self.data_name,
            "size": self.size,
            "sha256": self.sha256,
            "files": self.files,
            "bytes_read": self.bytes_read,
        }
        if self.checksums:
            body["checksums"] = dict(self.checksums)
        if self.manifest_size is not None:
            body["manifest_size"] = self.manifest_size
        if self.lease is not None:
            body["lease"] = self.lease
        if self.encryption is not None:
            body["encryption"] = {"scheme": "age", "recipients": list(self.encryption)}
        if self.manifest_sha256 is not None:
            body["manifest_sha256"] = self.manifest_sha256
        return body

    @classmethod
    def from_json(cls, raw: bytes, *, name: str = "?", cell: str | None = None) -> Sidecar:
        """Parse a sidecar; raise :class:`ArchiveCorrupt` when it is unusable.

        *name* is the archive id the sidecar is stored under and *cell* the
        cell folder it was found in: a sidecar that names another archive or
        another cell is refused, as is any value that is not what cellvault
        writes (see :mod:`cellvault.trust`).
        """
        try:
            if len(raw) > MAX_SIDECAR_BYTES:
                raise ValueError(f"{len(raw)} bytes, more than a sidecar ever holds")
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError(f"{json_kind(data)}, not an object")
            meta = ArchiveMeta.from_dict(data)
            _check_identity(meta.id, name, cell)
            stem = str(meta.id)
            checksums = data.get("checksums") or {}
            if not isinstance(checksums, dict):
                raise TypeError(f"checksums is {json_kind(checksums)}, not an object")
            declared = data.get("manifest_size")
            return cls(
                meta=meta,
                data_name=check_data_name(data["data"], stem),
                size=check_count(data["size"], "size", archive=stem),
                sha256=check_digest(data["sha256"], archive=stem),
                files=check_count(data.get("files"), "files", archive=stem, default=0),
                bytes_read=check_count(
                    data.get("bytes_read"), "bytes_read", archive=stem, default=0
                ),
                checksums={str(k): str(v) for k, v in checksums.items()},
                manifest_size=None
                if declared is None
                else check_count(declared, "manifest_size", archive=stem),
                lease=str(data["lease"]) if data.get("lease") is not None else None,
                encryption=check_encryption(data.get("encryption"), data["data"], stem),
                manifest_sha256=None
                if data.get("manifest_sha256") is None
                else check_digest(data["manifest_sha256"], archive=stem),
                signature=_signature(data.get("signature"), stem),
                signed_body=canonical_json({k: v for k, v in data.items() if k != "signature"}),
            )
        except ArchiveCorrupt:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveCorrupt(
                f"sidecar is unusable ({type(exc).__name__}: {exc})", archive=name
            ) from None


def canonical_json(value: Any) -> bytes:
    """*value* as canonical JSON: sorted keys, no spaces, UTF-8 (what a signature covers)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _signature(value: Any, stem: str) -> dict[str, str] | None:
    """A sidecar's ``signature``: absent, or an object of short strings."""
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not all(isinstance(v, str) and len(v) <= 512 for v in value.values())
        or not {"alg", "key", "sig"} <= set(value)
    ):
        raise ArchiveCorrupt(
            "signature is not an object of alg, key and sig",
            archive=stem,
            hint="the sidecar was altered; it is ignored",
        )
    return {str(k): v for k, v in value.items()}


def _check_identity(ident: ArchiveId, name: str, cell: str | None) -> None:
    """Refuse a sidecar that names another archive than the one it is stored as."""
    if ArchiveId.is_id(name) and str(ident) != name:
        raise ArchiveCorrupt(
            f"sidecar stored as {name} says it is archive {ident}",
            archive=name,
            hint="the sidecar was altered or misplaced; it is ignored",
        )
    if cell is not None and ident.cell != cell:
        raise ArchiveCorrupt(
            f"sidecar in the folder of cell {cell} names archive {ident} of cell {ident.cell}",
            archive=name,
            hint="the sidecar was altered or misplaced; it is ignored",
        )


_DATE_PREFIX = re.compile(r"\d{8}(_\d{1,6})?", re.ASCII)
#: The ISO times a selector takes (RFC 3339's, the seconds and the zone optional):
#: what ``fromisoformat`` reads beyond them ("...z+00:00", week dates) is refused.
_ISO_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[Tt ]\d{2}(?::\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?)?"
    r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?",
    re.ASCII,
)


def iso_time(text: str) -> dt.datetime:
    """The ISO date or time *text* (naive when it names no zone); ``ValueError`` otherwise.

    RFC 3339's shapes, the seconds and the zone optional (``2025-01-01``,
    ``2025-01-01T02:00``, ``2025-01-01 02:00:00.5+08:00``, a lowercase ``z``);
    the other shapes ``fromisoformat`` reads (``...z+00:00``, week dates) are refused.
    """
    if not _ISO_TIME.fullmatch(text):
        raise ValueError(f"not an ISO date or time: {text!r}")
    # RFC 3339 allows a lowercase "z" (UTC), which fromisoformat refuses.
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    return dt.datetime.fromisoformat(text)


@attrs.frozen
class Selector:
    """Which archive of a cell to pick, as an operator says it.

    * ``latest``: the newest committed archive;
    * an exact id: ``cell_crm_20250101_020000``;
    * a date prefix, as the seed's ``RESTORE_DATE``: ``20250101_0200`` matches
      ``20250101_020000`` (the newest match wins);
    * an ISO 8601 time (``2025-01-01T02:30:00+08:00``; UTC when no zone is
      given): the newest archive at or before it.
    """

    text: str
    kind: Literal["latest", "id", "prefix", "before"]
    before: dt.datetime | None = None

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse what an operator typed; raise :class:`ConfigError` for a malformed date."""
        text = text.strip()
        if text == "latest":
            return cls(text, "latest")
        if text.startswith("cell_"):
            ArchiveId.parse(text)
            return cls(text, "id")
        if _DATE_PREFIX.fullmatch(text):
            _check_prefix(text)
            return cls(text, "prefix")
        try:
            when = iso_time(text)
        except ValueError:
            raise ConfigError(
                f"malformed restore date {text!r}",
                hint="use 'latest', an archive id, a date prefix such as 20250101_0200, "
                "or an ISO time such as 2025-01-01T02:00:00Z",
            ) from None
        return cls(text, "before", _to_utc(when, text))

    @classmethod
    def at_or_before(cls, when: dt.datetime) -> Selector:
        """The newest archive at or before *when*."""
        return cls(when.isoformat(), "before", _to_utc(when, when.isoformat()))

    def matches(self, ident: ArchiveId) -> bool:
        """Tell whether *ident* is a candidate (the newest candidate wins)."""
        if self.kind == "latest":
            return True
        if self.kind == "id":
            return str(ident) == self.text
        if self.kind == "prefix":
            return ident.stamp.startswith(self.text)
        assert self.before is not None
        return ident.when <= self.before

    def __str__(self) -> str:
        return self.text


def _to_utc(when: dt.datetime, text: str) -> dt.datetime:
    """*when* in UTC (UTC when it names no zone); :class:`ConfigError` when UTC cannot hold it."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    try:
        return when.astimezone(dt.UTC)
    except OverflowError:
        raise ConfigError(
            f"restore date {text!r} is outside the range of dates (year 1 to 9999 in UTC)",
            hint="give a date between 0001-01-02 and 9999-12-30",
        ) from None


def _check_prefix(text: str) -> None:
    """Reject prefixes that name no possible instant (month 13, hour 25, ...)."""
    digits = text.replace("_", "")
    # Pad the prefix with the smallest valid completion and parse it.
    template = "20000101000000"
    full = digits + template[len(digits) :]
    try:
        dt.datetime.strptime(full, "%Y%m%d%H%M%S")
    except ValueError:
        raise ConfigError(
            f"malformed restore date {text!r}: no such date or time",
            hint="a date prefix is YYYYMMDD, optionally followed by _HH, _HHMM or _HHMMSS",
        ) from None
