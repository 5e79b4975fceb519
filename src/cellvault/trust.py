"""Checks for everything read back from a target: nothing stored there is believed.

A target is shared storage: another host, an operator's hand, a bug or an
attacker may have put anything there. Sidecars, manifest copies,
``meta.json`` and leases are parsed by their own classes
(:class:`cellvault.archive.Sidecar`, :class:`cellvault.manifest.Manifest`,
...), and those parsers call the checks here, so that no command works from a
value that was not checked:

* names that become paths (a sidecar's ``data``, the keys of ``roots``) are plain, relative names that stay inside the
  cell's own area: no ``..``, no absolute path, no NUL, no separator where
  one name is expected (a manifest entry's path is checked where it is
  used: the extractor refuses, per member, any path that leaves its
  destination, as :class:`~cellvault.errors.UnsafeArchive`);
* ids name their own object: a sidecar stored as ``crm/<id>.json`` says
  ``<id>``, of cell ``crm``; its parent, chain and the manifest's holders are
  archives of the same cell, older than it;
* numbers are whole, non-negative and bounded; sha256 digests are 64 hex
  digits;
* decompression is bounded by what was declared (:func:`bounded_zstd`), so a
  small object that expands to gigabytes fails before it costs the memory.

Every check raises :class:`~cellvault.errors.ArchiveCorrupt` naming what is
wrong; callers report it once and leave the value alone.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import zstandard

from .errors import ArchiveCorrupt, json_kind

__all__ = [
    "MAX_COUNT",
    "MAX_LEASE_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_RECORD_BYTES",
    "MAX_SIDECAR_BYTES",
    "bounded_zstd",
    "check_archive_of",
    "check_cell_archives",
    "check_count",
    "check_data_name",
    "check_digest",
    "check_encryption",
    "check_holder",
    "check_member_path",
    "check_mode",
    "check_name",
    "check_root_name",
    "check_roots",
    "load_record",
    "manifest_limit",
    "zstd_content_size",
]

#: The largest sidecar read (a real one is under 2 KiB).
MAX_SIDECAR_BYTES = 1 << 20
#: The largest lease or DR record read (a real one is a few hundred bytes).
MAX_LEASE_BYTES = 64 << 10
#: The largest manifest expanded, whatever a sidecar declares.
MAX_MANIFEST_BYTES = 4 << 30
#: What a manifest copy may expand to per declared file, when the sidecar does
#: not declare the manifest's own size (sidecars written before it did): an
#: entry is ~250 bytes, a path at most 4 KiB (escaped, a few times that).
PER_FILE_BYTES = 16 << 10
#: The floor of that bound: the directories and links of a cell, which the
#: file count leaves out.
BASE_MANIFEST_BYTES = 64 << 20
#: The largest size or count believed (2**62: beyond any real archive).
MAX_COUNT = 1 << 62
#: The permission bits a manifest records (``stat.S_IMODE``).
MAX_MODE = 0o7777

_ROOT = re.compile(r"[^/\x00]{1,255}")
_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
_ID = re.compile(r"cell_(?P<cell>[a-z0-9][a-z0-9_-]*)_(?P<stamp>\d{8}_\d{6})", re.ASCII)
DATA_SUFFIXES = (".tar.zst", ".tar.gz", ".tar.zst.age", ".tar.gz.age")
#: A data name after ``cellvault rekey``: a generation before the sealed suffix.
_RESEALED = re.compile(r"\.k[1-9]\d{0,5}\.tar\.(zst|gz)\.age")
#: The most recipients one archive is believed to be sealed to.
MAX_RECIPIENTS = 64


def check_root_name(name: Any, *, archive: str = "?") -> str:
    """A ``roots`` key: one plain, cell-relative name (not ``.``, ``..``, nor with ``/``)."""
    if not isinstance(name, str) or not _ROOT.fullmatch(name) or name in (".", ".."):
        raise ArchiveCorrupt(
            f"root name {name!r} is not a plain name inside the cell",
            archive=archive,
            hint="the sidecar or meta.json was altered; restore from another target or archive",
        )
    return name


def check_roots(value: Any, *, archive: str = "?") -> dict[str, str]:
    """A ``roots`` object: plain names mapped to absolute paths (strings)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArchiveCorrupt(f"roots is {json_kind(value)}, not an object", archive=archive)
    out: dict[str, str] = {}
    for key, path in value.items():
        check_root_name(key, archive=archive)
        if not isinstance(path, str) or not path.startswith("/") or "\x00" in path:
            raise ArchiveCorrupt(
                f"root {key!r} names {path!r}, not an absolute path", archive=archive
            )
        out[key] = path
    return out


def check_data_name(name: Any, stem: str) -> str:
    """A sidecar's ``data``: exactly ``<stem>.tar.zst`` or ``<stem>.tar.gz`` (``.age`` when sealed)."""
    if not isinstance(name, str) or not (
        name in {stem + s for s in DATA_SUFFIXES} or _RESEALED.fullmatch(name.removeprefix(stem))
    ):
        raise ArchiveCorrupt(
            f"data name {name!r} is not {stem}.tar.zst or {stem}.tar.gz (or .age after either)",
            archive=stem,
            hint="the sidecar was altered; it is ignored (restore from another target)",
        )
    return name


def check_encryption(value: Any, data_name: Any, stem: str) -> tuple[str, ...] | None:
    """A sidecar's ``encryption``: age and its recipients' fingerprints, exactly when the data is sealed."""
    sealed = isinstance(data_name, str) and data_name.endswith(".age")
    if value is None and not sealed:
        return None
    problem = None
    if value is None or not sealed:
        problem = "the data name and the encryption field disagree"
    elif not isinstance(value, dict) or value.get("scheme") != "age":
        problem = f"encryption {value!r} is not the age scheme"
    else:
        names = value.get("recipients")
        if (
            not isinstance(names, list)
            or not 0 < len(names) <= MAX_RECIPIENTS
            or not all(isinstance(n, str) and 0 < len(n) <= 200 for n in names)
        ):
            problem = "encryption recipients are not a list of key fingerprints"
        else:
            return tuple(names)
    raise ArchiveCorrupt(
        problem,
        archive=stem,
        hint="the sidecar was altered; it is ignored (restore from another target)",
    )


def check_count(value: Any, what: str, *, archive: str = "?", default: int | None = None) -> int:
    """A size or count: a whole number from 0 to :data:`MAX_COUNT`."""
    if value is None and default is not None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()))
        or not 0 <= value <= MAX_COUNT
    ):
        raise ArchiveCorrupt(f"{what} {value!r} is not a whole number >= 0", archive=archive)
    return int(value)


def check_digest(value: Any, *, archive: str = "?") -> str:
    """A sha256 digest: 64 lower-case hex digits."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ArchiveCorrupt(f"sha256 {value!r} is not 64 hex digits", archive=archive)
    return value


def check_mode(value: Any, *, archive: str = "?") -> int:
    """A manifest entry's mode: permission bits only (0 to 0o7777)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_MODE:
        raise ArchiveCorrupt(
            f"mode {value!r} is not one a manifest records (0 to 0o7777)", archive=archive
        )
    return value


def check_holder(holder: str, own: str) -> str:
    """A manifest entry's holder (or a parent, a chain link): an archive of *own*'s cell, not newer."""
    mine = _ID.fullmatch(own)
    theirs = _ID.fullmatch(holder)
    if mine is None:
        return holder  # a manifest read without its id (tests, tools): nothing to compare
    if theirs is None or theirs["cell"] != mine["cell"] or theirs["stamp"] > mine["stamp"]:
        raise ArchiveCorrupt(
            f"names archive {holder!r}, which is not an older archive of cell {mine['cell']}",
            archive=own,
            hint="the manifest or sidecar was altered; it is ignored",
        )
    return holder


def check_member_path(path: str, *, archive: str = "?") -> str:
    """A manifest entry's path: relative, ``/``-separated, no ``.``, ``..`` or empty part, no NUL."""
    if (
        not path
        or path.startswith("/")
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise ArchiveCorrupt(f"manifest path {path!r} leaves the cell", archive=archive)
    return path


def manifest_limit(files: int, declared: int | None = None) -> int:
    """How far a manifest copy may expand: its declared size, else a bound from the file count."""
    if declared is not None:
        return min(declared, MAX_MANIFEST_BYTES)
    return min(BASE_MANIFEST_BYTES + files * PER_FILE_BYTES, MAX_MANIFEST_BYTES)


def zstd_content_size(path: Any) -> int | None:
    """The content size a zstd file's first frame header records, if it records one."""
    with open(path, "rb") as f:
        head = f.read(18)
    try:
        size = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        return None
    return size if size >= 0 else None


def bounded_zstd(
    raw: bytes, limit: int, *, archive: str = "?", what: str = "manifest copy"
) -> bytes:
    """Decompress *raw*, failing as soon as it would expand past *limit* bytes."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw))
        out = io.BytesIO()
        while block := reader.read(min(1 << 20, limit + 1 - out.tell())):
            out.write(block)
            if out.tell() > limit:
                raise ArchiveCorrupt(
                    f"{what} expands past the {limit} bytes declared for it",
                    archive=archive,
                    hint="the object was altered or damaged; it is ignored",
                )
    except zstandard.ZstdError as exc:
        raise ArchiveCorrupt(f"{what} does not decompress ({exc})", archive=archive) from None
    return out.getvalue()


# -- DR records ---------------------------------------------------------------------------
#
# What DR reads from the shared targets (failover markers and their history,
# hand-backs, site records, epochs, heartbeats) goes through these. They raise
# ValueError naming what is wrong: DR's parsers turn it into a DrError, and the
# readers report it and leave the record alone.

#: The largest DR record read (a site record names every cell; a real one is a few KiB).
MAX_RECORD_BYTES = 4 << 20
#: The most cells one DR record may name.
MAX_RECORD_CELLS = 100_000
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)


def load_record(raw: bytes, what: str) -> dict[str, Any]:
    """The JSON object in *raw*, a DR record of at most :data:`MAX_RECORD_BYTES`."""
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"the {what} is over {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"the {what} is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"the {what} is {json_kind(data)}, not an object")
    return data


def check_name(value: Any, what: str) -> str:
    """A site id or a cell name a record gives: ``[a-z0-9][a-z0-9_-]``, at most 64 characters."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a plain name")
    return value


def check_cell_archives(value: Any, what: str) -> dict[str, str]:
    """A record's cell -> archive map: each cell a plain name, each archive an id of that cell."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_RECORD_CELLS:
        raise ValueError(f"{what} is not an object of at most {MAX_RECORD_CELLS} cells")
    out: dict[str, str] = {}
    for cell, ident in value.items():
        check_name(cell, f"{what}: cell")
        match = _ID.fullmatch(ident) if isinstance(ident, str) else None
        if match is None or match["cell"] != cell:
            raise ValueError(f"{what} names {ident!r} for cell {cell}: not an archive of that cell")
        out[cell] = ident
    return out


def check_archive_of(value: Any, cell: str, what: str) -> str | None:
    """An archive id a record gives for *cell* (or ``None``): an id of that very cell."""
    if value is None:
        return None
    return check_cell_archives({cell: value}, what)[cell]
