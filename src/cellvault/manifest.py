"""The manifest: every path of a cell at the instant of an archive.

``manifest.json`` is the last member of each archive (and a compressed copy,
``<id>.manifest.json.zst``, is stored beside it so that incrementals and
restore planning need not read whole archives). For each path it records the
type, size, mode, mtime, owner, sha256 and which archive holds its bytes. In
an incremental archive, unchanged files are listed with the id of the older
archive that holds them; deleted paths are simply absent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii
from typing import IO, Any, Literal

import attrs

from .errors import ArchiveCorrupt
from .trust import check_count, check_holder, check_mode

__all__ = ["Entry", "EntryType", "Manifest"]

#: Entries serialised per chunk by :meth:`Manifest.write_json`.
JSON_CHUNK = 2048

EntryType = Literal["file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev"]
ENTRY_TYPES: tuple[str, ...] = ("file", "dir", "symlink", "hardlink", "fifo", "chardev", "blockdev")
#: Types whose entry names another path or device (no bytes of their own).
SPECIAL_TYPES: tuple[str, ...] = ("fifo", "chardev", "blockdev")


@attrs.frozen
class Entry:
    """One path of a cell, as a member name of the archive (``data/www/index.html``)."""

    path: str
    type: str = attrs.field(validator=attrs.validators.in_(ENTRY_TYPES))
    mode: int
    mtime_ns: int
    size: int = 0
    sha256: str | None = None
    #: The link's target, for symlinks; for a hard link, the member path of the
    #: group's first name (an entry of type ``file`` of the same manifest).
    target: str | None = None
    uid: int = 0
    gid: int = 0
    #: Inode and device at scan time: with size, mtime and mode, what an
    #: incremental compares to decide whether a file changed.
    inode: int = 0
    dev: int = 0
    ctime_ns: int = 0
    #: The archive that holds this path's bytes (for files); itself for new ones.
    archive: str | None = None
    #: The device number, for character and block devices (``os.makedev``).
    rdev: int = 0
    #: Extended attributes (ACLs are ``system.posix_acl_*`` among them): name ->
    #: value as base64, sorted by name; empty for most paths.
    xattrs: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "uid": self.uid,
            "gid": self.gid,
        }
        if self.type == "file":
            out.update(size=self.size, sha256=self.sha256, archive=self.archive)
            out.update(inode=self.inode, dev=self.dev, ctime_ns=self.ctime_ns)
        elif self.type in ("symlink", "hardlink"):
            out["target"] = self.target
        elif self.type in ("chardev", "blockdev"):
            out["rdev"] = self.rdev
        if self.xattrs:
            out["xattrs"] = dict(self.xattrs)
        return out

    def to_json(self) -> str:
        """``json.dumps(self.to_dict(), separators=(",", ":"))``, without the dict.

        The manifest of a backup is serialised entry by entry (tens of thousands
        of them): the same text, written directly, takes a third of the time.
        """
        head = (
            f'{{"path":{_quote(self.path)},"type":"{self.type}","mode":{self.mode:d},'
            f'"mtime_ns":{self.mtime_ns:d},"uid":{self.uid:d},"gid":{self.gid:d}'
        )
        tail = "}"
        if self.xattrs:
            pairs = ",".join(f"{_quote(k)}:{_quote(v)}" for k, v in self.xattrs)
            tail = f',"xattrs":{{{pairs}}}}}'
        if self.type == "file":
            return (
                f'{head},"size":{self.size:d},"sha256":{_quote_opt(self.sha256)},'
                f'"archive":{_quote_opt(self.archive)},"inode":{self.inode:d},'
                f'"dev":{self.dev:d},"ctime_ns":{self.ctime_ns:d}{tail}'
            )
        if self.type in ("symlink", "hardlink"):
            return f'{head},"target":{_quote_opt(self.target)}{tail}'
        if self.type in ("chardev", "blockdev"):
            return f'{head},"rdev":{self.rdev:d}{tail}'
        return head + tail

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entry:
        get = data.get
        path, sha256, target, archive = data["path"], get("sha256"), get("target"), get("archive")
        # One test for the usual case (a parent manifest has an entry per file).
        if not (
            type(path) is str
            and (sha256 is None or type(sha256) is str)
            and (target is None or type(target) is str)
            and (archive is None or type(archive) is str)
        ):
            for key, value in (
                ("path", path),
                ("sha256", sha256),
                ("target", target),
                ("archive", archive),
            ):
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"{key} of an entry is a {type(value).__name__}, not a string")
        return cls(
            path=path,
            type=data["type"],
            mode=check_mode(data["mode"]),
            mtime_ns=int(data["mtime_ns"]),
            size=check_count(get("size", 0), "size"),
            sha256=sha256,
            target=target,
            uid=int(get("uid", 0)),
            gid=int(get("gid", 0)),
            inode=int(get("inode", 0)),
            dev=int(get("dev", 0)),
            ctime_ns=int(get("ctime_ns", 0)),
            archive=archive,
            rdev=int(get("rdev", 0)),
            xattrs=_xattrs(get("xattrs")),
        )


@attrs.define
class Manifest:
    """The ordered set of :class:`Entry` of one archive, keyed by path."""

    archive: str
    entries: dict[str, Entry] = attrs.field(factory=dict)

    def add(self, entry: Entry) -> None:
        self.entries[entry.path] = entry

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: object) -> bool:
        return path in self.entries

    def get(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def files(self) -> Iterable[Entry]:
        return (e for e in self.entries.values() if e.type == "file")

    def holders(self) -> set[str]:
        """The ids of the archives that hold this manifest's file bytes."""
        return {e.archive for e in self.files() if e.archive}

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files())

    def to_json(self) -> bytes:
        """The manifest as ``manifest.json`` (format v1, see docs/format.md)."""
        out = _Collect()
        self.write_json(out)
        return b"".join(out.parts)

    def write_json(self, out: IO[bytes] | _Collect) -> int:
        """Write :meth:`to_json`'s bytes into *out* a chunk at a time; return their number.

        The whole text of a large manifest is never held at once (a backup
        writes it into a spool file, and both of its copies come from there).
        """
        written = out.write(b'{"format":1,"archive":%s,"entries":[' % _quote(self.archive).encode())
        entries = list(self.entries.values())
        for start in range(0, len(entries), JSON_CHUNK):
            text = ",".join(e.to_json() for e in entries[start : start + JSON_CHUNK])
            written += out.write((text if start == 0 else "," + text).encode())
        written += out.write(b"]}\n")
        return written

    @classmethod
    def from_json(cls, raw: bytes, *, archive: str = "?") -> Manifest:
        # Each entry becomes an Entry as soon as the parser has read it (object_hook):
        # the parsed dicts of a large manifest are never all alive at once. The few
        # archive ids are shared by all the entries that name them.
        ids: dict[str, str] = {}

        def entry(item: dict[str, Any]) -> Any:
            if "path" not in item:
                return item
            holder = item.get("archive")
            if type(holder) is str:
                item["archive"] = ids.setdefault(holder, holder)
            return Entry.from_dict(item)

        try:
            data = json.loads(raw, object_hook=entry)
            manifest = cls(archive=str(data["archive"]))
            add = manifest.add
            for item in data["entries"]:
                if not isinstance(item, Entry):
                    raise TypeError(f"an entry is a {type(item).__name__}, not an object")
                add(item)
            for holder in ids:
                check_holder(holder, archive)
        except ArchiveCorrupt as exc:
            raise ArchiveCorrupt(
                f"manifest is unusable ({exc.detail})", archive=archive, member="manifest.json"
            ) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveCorrupt(
                f"manifest is unusable ({type(exc).__name__}: {exc})",
                archive=archive,
                member="manifest.json",
            ) from None
        return manifest


def _xattrs(raw: object) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise TypeError("xattrs of an entry is not an object of strings")
    return tuple(sorted(raw.items()))


def _quote(text: str) -> str:
    # json.dumps's own encoder for strings (ensure_ascii): the very same bytes.
    quoted: str = encode_basestring_ascii(text)
    return quoted


def _quote_opt(text: str | None) -> str:
    return "null" if text is None else _quote(text)


class _Collect:
    """A sink for :meth:`Manifest.write_json` that keeps the parts."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(data)
        return len(data)
