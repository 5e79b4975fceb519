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
from typing import Any, Literal

import attrs

from .errors import ArchiveCorrupt

__all__ = ["Entry", "EntryType", "Manifest"]

EntryType = Literal["file", "dir", "symlink"]
ENTRY_TYPES: tuple[str, ...] = ("file", "dir", "symlink")


@attrs.frozen
class Entry:
    """One path of a cell, as a member name of the archive (``data/www/index.html``)."""

    path: str
    type: str = attrs.field(validator=attrs.validators.in_(ENTRY_TYPES))
    mode: int
    mtime_ns: int
    size: int = 0
    sha256: str | None = None
    #: The link's target, for symlinks.
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
        elif self.type == "symlink":
            out["target"] = self.target
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Entry:
        for key in ("path", "sha256", "target", "archive"):
            value = data.get(key) if key != "path" else data["path"]
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{key} of an entry is a {type(value).__name__}, not a string")
        return cls(
            path=data["path"],
            type=data["type"],
            mode=int(data["mode"]),
            mtime_ns=int(data["mtime_ns"]),
            size=int(data.get("size", 0)),
            sha256=data.get("sha256"),
            target=data.get("target"),
            uid=int(data.get("uid", 0)),
            gid=int(data.get("gid", 0)),
            inode=int(data.get("inode", 0)),
            dev=int(data.get("dev", 0)),
            ctime_ns=int(data.get("ctime_ns", 0)),
            archive=data.get("archive"),
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
        body = {"format": 1, "archive": self.archive, "entries": [e.to_dict() for e in self]}
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, *, archive: str = "?") -> Manifest:
        try:
            data = json.loads(raw)
            manifest = cls(archive=str(data["archive"]))
            for item in data["entries"]:
                manifest.add(Entry.from_dict(item))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveCorrupt(
                f"manifest is unusable ({type(exc).__name__}: {exc})",
                archive=archive,
                member="manifest.json",
            ) from None
        return manifest
