"""The manifest: every path of a cell at the instant of an archive.

``manifest.json`` is the last member of each archive (and a compressed copy,
``<id>.manifest.json.zst``, is stored beside it so that incrementals and
restore planning need not read whole archives). For each path it records the
type, size, mode, mtime, owner, sha256 and which archive holds its bytes. In
an incremental archive, unchanged files are listed with the id of the older
archive that holds them; deleted paths are simply absent.
"""

from __future__ import annotations

import io
import marshal
import operator
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping
from json.encoder import encode_basestring_ascii
from typing import IO, Any, Generic, Literal, NamedTuple, NoReturn, TypeVar

import attrs

from .errors import ArchiveCorrupt, json_kind
from .forking import PipeSource, receive, send
from .manifest_text import ApartParser, ManifestText, Readable
from .spillmap import SpillMap
from .trust import MAX_COUNT, MAX_MODE, check_count, check_holder, check_mode

__all__ = [
    "Entry",
    "EntryType",
    "InOrder",
    "Manifest",
    "ManifestText",
    "ManifestWriter",
    "Row",
    "RowsInOrder",
]

_T = TypeVar("_T", "Entry", "Row")

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
                    raise TypeError(f"{key} of an entry is {json_kind(value)}, not a string")
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


class Row(NamedTuple):
    """An entry's fields in :class:`Entry`'s order, as a tuple.

    Read like an :class:`Entry` (the same names), built in a fraction of its
    time: what a restore looks each archive member up as
    (:class:`RowsInOrder`), from fields checked when the manifest was read.
    """

    path: str
    type: str
    mode: int
    mtime_ns: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    uid: int = 0
    gid: int = 0
    inode: int = 0
    dev: int = 0
    ctime_ns: int = 0
    archive: str | None = None
    rdev: int = 0
    xattrs: tuple[tuple[str, str], ...] = ()


#: An entry's fields in order: what a spilled manifest stores (marshal'd; its own
#: temporary file, written and read by this process only).
_FIELDS = operator.attrgetter(*(a.name for a in attrs.fields(Entry)))
#: Where the holding archive is among them.
_ARCHIVE_AT = [a.name for a in attrs.fields(Entry)].index("archive")
_SIZE_AT = [a.name for a in attrs.fields(Entry)].index("size")
_SHA256_AT = [a.name for a in attrs.fields(Entry)].index("sha256")


def _entry_text(entry: Entry) -> bytes:
    return marshal.dumps(_FIELDS(entry))


def _entry_of(raw: bytes) -> Entry:
    return Entry(*marshal.loads(raw))  # noqa: S302 - our own temporary file


def _select(stored: Iterator[bytes], types: tuple[str, ...]) -> Iterator[Entry]:
    loads = marshal.loads
    for raw in stored:
        fields = loads(raw)
        if fields[1] in types:
            yield Entry(*fields)


def _select_rows(stored: Iterator[bytes], types: tuple[str, ...]) -> Iterator[Row]:
    loads = marshal.loads
    new = tuple.__new__
    for raw in stored:
        fields = loads(raw)
        if fields[1] in types:
            yield new(Row, fields)


def _entry_map(value: Mapping[str, Entry] | SpillMap[Entry] | None = None) -> SpillMap[Entry]:
    if isinstance(value, SpillMap):
        return value
    out: SpillMap[Entry] = SpillMap(_entry_text, _entry_of)
    for path, entry in (value or {}).items():
        out[path] = entry
    return out


@attrs.define
class Manifest:
    """The ordered set of :class:`Entry` of one archive, keyed by path.

    The entries are a :class:`~cellvault.spillmap.SpillMap`: past a few tens of
    thousands of paths they live in a temporary file, not in memory, so that a
    manifest of millions of paths needs no more memory than a small one.
    """

    archive: str
    entries: SpillMap[Entry] = attrs.field(factory=_entry_map, converter=_entry_map)
    #: The sha256 of the JSON this manifest was read from (``None``: built, not read).
    digest: str | None = attrs.field(default=None, eq=False, kw_only=True)
    #: The archives named by the files added (kept as they are added: a pass over
    #: millions of entries only to name a few archives is not cheap).
    _holders: set[str] | None = attrs.field(init=False, default=None, eq=False, repr=False)
    #: What :meth:`root_bytes` says, counted as the manifest was read (``None``:
    #: counted when asked; any :meth:`add` after the read drops it).
    _root_bytes: dict[str, int] | None = attrs.field(init=False, default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not len(self.entries):
            self._holders = set()

    def add(self, entry: Entry) -> None:
        self.entries[entry.path] = entry
        self._root_bytes = None
        if self._holders is not None and entry.type == "file" and entry.archive:
            self._holders.add(entry.archive)

    def root_bytes(self) -> dict[str, int]:
        """The bytes of the files below each top folder of ``data/`` (``""``: the others).

        What a restore needs room for, by destination (``data/<root>/...``
        goes to the cell's root of that name; dumps are counted under ``""``).
        """
        if self._root_bytes is not None:
            return dict(self._root_bytes)
        sizes: dict[str, int] = {}
        for path, size in self.file_sizes():
            root = _root_of(path)
            sizes[root] = sizes.get(root, 0) + size
        return sizes

    def same_as(self, other: Manifest) -> bool:
        """Whether both list the same entries: the same JSON read, or entry by entry."""
        if self.digest is not None and self.digest == other.digest:
            return True
        return self.entries == other.entries

    def __iter__(self) -> Iterator[Entry]:
        return self.entries.values()

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: object) -> bool:
        return path in self.entries

    def get(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def files(self) -> Iterable[Entry]:
        return self.select("file")

    def select(self, *types: str) -> Iterator[Entry]:
        """The entries of the given types, in order (a spilled manifest builds no other)."""
        stored = self.entries.stored()
        if stored is None:
            return (e for e in self.entries.values() if e.type in types)
        return _select(stored, types)

    def rows(self, *types: str) -> Iterator[Row]:
        """:meth:`select`'s entries as :class:`Row` tuples (a spilled manifest builds no Entry)."""
        stored = self.entries.stored()
        if stored is None:
            return (Row(*_FIELDS(e)) for e in self.entries.values() if e.type in types)
        return _select_rows(stored, types)

    def file_sizes(self) -> Iterator[tuple[str, int]]:
        """Each file's path and size, in order (a spilled manifest builds no entry)."""
        stored = self.entries.stored()
        if stored is None:
            return ((e.path, e.size) for e in self.entries.values() if e.type == "file")
        at = _SIZE_AT
        return ((f[0], f[at]) for f in map(marshal.loads, stored) if f[1] == "file")

    def holders(self) -> set[str]:
        """The ids of the archives that hold this manifest's file bytes.

        Kept as entries are added through :meth:`add`; entries set in
        :attr:`entries` directly make it go through them all once.
        """
        if self._holders is None:
            self._holders = {e.archive for e in self.files() if e.archive}
        return set(self._holders)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files())

    def brief(self) -> Iterator[tuple[str, str, str | None]]:
        """Each entry's path, type and holding archive, in order (a spilled manifest builds no entry)."""
        stored = self.entries.stored()
        if stored is None:
            return ((e.path, e.type, e.archive) for e in self.entries.values())
        at = _ARCHIVE_AT
        return ((f[0], f[1], f[at]) for f in map(marshal.loads, stored))

    def has_under(self, top: str) -> bool:
        """Whether any path lies below the top-level folder *top* (``dumps``); no entry is built."""
        return self.entries.has_prefix(f"{top}/")

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
        chunk: list[str] = []
        first = True
        for entry in self.entries.values():
            chunk.append(entry.to_json())
            if len(chunk) >= JSON_CHUNK:
                text = ",".join(chunk)
                written += out.write((text if first else "," + text).encode())
                first = False
                chunk = []
        if chunk:
            text = ",".join(chunk)
            written += out.write((text if first else "," + text).encode())
        written += out.write(b"]}\n")
        return written

    @classmethod
    def naming(cls, archive: str, holders: Iterable[str]) -> Manifest:
        """A manifest without its entries that names the archives holding its files.

        What a chain check reads (:meth:`holders`) of a manifest a backup has
        just written (:class:`ManifestWriter`), which is not read back for that.
        """
        out = cls(archive=archive)
        out._holders = set(holders)
        return out

    @classmethod
    def from_json(cls, raw: bytes, *, archive: str = "?") -> Manifest:
        """The manifest in *raw* (``manifest.json``'s bytes)."""
        return cls.read(io.BytesIO(raw), archive=archive)

    @classmethod
    def read(cls, source: Readable, *, archive: str = "?") -> Manifest:
        """The manifest read from *source* (``manifest.json``'s bytes) as a stream.

        Memory does not grow with the manifest's size: each entry is checked and
        stored as soon as it is parsed. Raises :class:`ArchiveCorrupt` when the
        text is not a manifest.
        """
        try:
            return _read(cls, source, archive)
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


class ManifestWriter:
    """A new archive's manifest, written into *out* as its entries come, never held.

    The bytes are those :meth:`Manifest.write_json` writes for the same entries
    in the same order. Each path is added once (a backup's walk and its dumps
    name each path once); :meth:`close` ends the text and returns its size.
    """

    def __init__(self, archive: str, out: IO[bytes]) -> None:
        self.archive = archive
        self._out = out
        self._chunk: list[str] = []
        self._first = True
        self._count = 0
        self._holders: set[str] = set()
        self._size = out.write(b'{"format":1,"archive":%s,"entries":[' % _quote(archive).encode())

    def add(self, entry: Entry) -> None:
        chunk = self._chunk
        chunk.append(entry.to_json())
        self._count += 1
        if entry.type == "file" and entry.archive:
            self._holders.add(entry.archive)
        if len(chunk) >= JSON_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._chunk:
            text = ",".join(self._chunk)
            self._size += self._out.write((text if self._first else "," + text).encode())
            self._first = False
            self._chunk = []

    def __len__(self) -> int:
        return self._count

    def holders(self) -> set[str]:
        """The ids of the archives that hold the files added."""
        return set(self._holders)

    def close(self) -> int:
        """Write the end of the text; return the size of the whole."""
        self._flush()
        self._size += self._out.write(b"]}\n")
        return self._size


def _read(cls: type[Manifest], source: Readable, archive: str) -> Manifest:
    text = ManifestText(source)
    manifest = cls(archive=text.archive)
    if text._long(PARSE_APART):
        apart = ApartParser.start(text, _parse_apart)
        if apart is not None:
            return _read_apart(manifest, text, apart, archive)
    ids: dict[str, str] = {}
    tally = _Tally()
    fields = text.fields(
        lambda item: _fields(item, ids), ids, max_mode=MAX_MODE, max_count=MAX_COUNT
    )
    for rows in tally.batches(fields):
        _store(manifest, rows, ids)
    return _finish(manifest, text, tally, ids, archive)


class _Tally:
    """What reading a manifest counts on the way.

    Its entries, the archives holding its files, and the files' bytes by root
    (see :meth:`Manifest.root_bytes`).
    """

    def __init__(self) -> None:
        self.count = 0
        self.holders: set[str] = set()
        self.sizes: dict[str, int] = {}

    def batches(self, fields: Iterable[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
        """*fields* (each entry's, in order) counted, a batch of :data:`JSON_CHUNK` at a time."""
        holders, sizes = self.holders, self.sizes
        rows: list[tuple[Any, ...]] = []
        for entry in fields:
            self.count += 1
            if entry[1] == "file":
                if not entry[_ARCHIVE_AT] or entry[_SHA256_AT] is None:
                    # cellvault names both for every file: without them a restore would
                    # find the file in no archive, and learn it only at the end.
                    what = "archive holding it" if not entry[_ARCHIVE_AT] else "sha256"
                    raise ArchiveCorrupt(f"the file {entry[0]!r} has no {what}", archive="?")
                holders.add(entry[_ARCHIVE_AT])
                root = _root_of(entry[0])
                sizes[root] = sizes.get(root, 0) + entry[_SIZE_AT]
            rows.append(entry)
            if len(rows) >= JSON_CHUNK:
                yield rows
                rows = []
        if rows:
            yield rows


def _store(manifest: Manifest, rows: list[tuple[Any, ...]], ids: dict[str, str]) -> None:
    """Add entries given by their checked fields.

    As :class:`Entry` objects until the map spills (their archive ids shared
    through *ids*), then stored as they are, a batch at a time.
    """
    entries = manifest.entries
    start = 0
    while start < len(rows) and not entries.spilled:
        fields = rows[start]
        holder = fields[_ARCHIVE_AT]
        if holder is not None and ids.setdefault(holder, holder) is not holder:
            at = _ARCHIVE_AT
            fields = (*fields[:at], ids[holder], *fields[at + 1 :])
        manifest.add(Entry(*fields))
        start += 1
    if start < len(rows):
        dumps = marshal.dumps
        entries.put_stored([(fields[0], dumps(fields)) for fields in rows[start:]])


def _finish(
    manifest: Manifest, text: ManifestText, tally: _Tally, ids: Iterable[str], archive: str
) -> Manifest:
    """The end of a read: the archive ids checked, the counts kept, the digest."""
    _check_holders(ids, archive)
    if manifest._holders is not None:
        manifest._holders.update(tally.holders)
    manifest.digest = text.digest
    # A path listed twice is one file (the later entry): counted again only then.
    manifest._root_bytes = tally.sizes if len(manifest.entries) == tally.count else None
    return manifest


def _read_apart(
    manifest: Manifest, text: ManifestText, apart: ApartParser, archive: str
) -> Manifest:
    """:func:`_read`'s work with the entries parsed by *apart*: stored here as they come."""
    ids: dict[str, str] = {}  # the archive ids of the entries kept in memory, shared
    end: tuple[Any, ...] | None = None
    failure: tuple[Any, ...] | None = None
    try:
        while True:
            try:
                message = receive(apart.result)
            except EOFError:
                failure = ("gone",)
                break
            if message[0] != "rows":
                if message[0] == "end":
                    end = message
                else:
                    failure = message
                break
            _store(manifest, message[1], ids)
    finally:
        source_error = apart.close()
    if source_error is not None:
        raise source_error  # the text could not be read: what the parser said follows from it
    if failure is not None:
        _raise_apart(failure)
    assert end is not None
    tally = _Tally()
    _, holders, tally.sizes, tally.count, holder_ids = end
    tally.holders.update(holders)
    return _finish(manifest, text, tally, holder_ids, archive)


def _raise_apart(failure: tuple[Any, ...]) -> NoReturn:
    """Raise here what the manifest's parser raised (see :func:`_parse_apart`)."""
    if failure[0] == "corrupt":
        raise ArchiveCorrupt(failure[1], archive="?")
    if failure[0] == "raised":
        raise pickle.loads(failure[1])  # noqa: S301 - our own child's exception
    if failure[0] == "gone":
        # Not the manifest's fault, as far as anyone can tell: killed, or out of memory.
        raise RuntimeError(
            "the process parsing the manifest ended without a word (killed?); run it again"
        )
    raise ValueError(failure[1])


#: A manifest whose entries' text is this long or longer (about 30,000
#: entries) has them parsed by a forked child while this process stores them.
PARSE_APART = 8 << 20


def _parse_apart(feed: int, out: int, parent: int) -> None:  # pragma: no cover - the child
    """In the forked child: parse the entries from *feed*, send them to *out* a batch at a time.

    Each batch is ``("rows", [fields, ...])``; the last word
    ``("end", file holders, bytes by root, entries, archive ids)``, or what
    was raised: ``("corrupt", detail)``, ``("raised", pickled exception)`` or
    ``("crash", text)``.
    """
    text = ManifestText._after_head(PipeSource(feed, parent))
    ids: dict[str, str] = {}
    tally = _Tally()
    try:
        fields = text.fields(
            lambda item: _fields(item, ids), ids, max_mode=MAX_MODE, max_count=MAX_COUNT
        )
        for rows in tally.batches(fields):
            send(out, ("rows", rows))
        send(out, ("end", sorted(tally.holders), tally.sizes, tally.count, sorted(ids)))
    except BrokenPipeError:
        return  # the parent stopped listening
    except ArchiveCorrupt as exc:
        send(out, ("corrupt", exc.detail))
    except Exception as exc:  # noqa: BLE001 - raised in the parent
        try:
            payload = pickle.dumps(exc)
            pickle.loads(payload)  # noqa: S301 - made here, just now
        except Exception:  # noqa: BLE001 - not one that travels: its text does
            send(out, ("crash", f"{type(exc).__name__}: {exc}"))
        else:
            send(out, ("raised", payload))


def _root_of(path: str) -> str:
    """The top folder below ``data/`` that *path* lies in (``""``: not below ``data/``)."""
    return path.split("/", 2)[1] if path.startswith("data/") else ""


_TYPES_SET = frozenset(ENTRY_TYPES)


def _fields(item: Any, ids: dict[str, str]) -> tuple[Any, ...]:
    """An entry's fields in :class:`Entry`'s order, checked as :meth:`Entry.from_dict` does.

    The usual entry (whole numbers in range, strings or nulls, no extended
    attributes) is checked here; any other goes through ``from_dict``, which
    raises what it raises or converts what it converts.
    """
    if type(item) is dict:
        get = item.get
        path, kind, mode, mtime = get("path"), get("type"), get("mode"), get("mtime_ns")
        size, sha256, target, holder = get("size", 0), get("sha256"), get("target"), get("archive")
        uid, gid, inode, dev = get("uid", 0), get("gid", 0), get("inode", 0), get("dev", 0)
        ctime, rdev = get("ctime_ns", 0), get("rdev", 0)
        if (
            type(path) is str
            and type(kind) is str
            and kind in _TYPES_SET
            and type(mode) is int
            and 0 <= mode <= MAX_MODE
            and type(size) is int
            and 0 <= size <= MAX_COUNT
            and type(mtime) is int
            and type(uid) is int
            and type(gid) is int
            and type(inode) is int
            and type(dev) is int
            and type(ctime) is int
            and type(rdev) is int
            and (sha256 is None or type(sha256) is str)
            and (target is None or type(target) is str)
            and (holder is None or type(holder) is str)
            and get("xattrs") is None
        ):
            if holder is not None:
                holder = ids.setdefault(holder, holder)
            return (
                path,
                kind,
                mode,
                mtime,
                size,
                sha256,
                target,
                uid,
                gid,
                inode,
                dev,
                ctime,
                holder,
                rdev,
                (),
            )
    fields: tuple[Any, ...] = _FIELDS(_entry(item, ids))
    return fields


def _entry(item: object, ids: dict[str, str]) -> Entry:
    if not isinstance(item, dict):
        raise TypeError(f"an entry is {json_kind(item)}, not an object")
    # The few archive ids are shared by all the entries that name them.
    holder = item.get("archive")
    if type(holder) is str:
        item["archive"] = ids.setdefault(holder, holder)
    return Entry.from_dict(item)


def _check_holders(ids: Iterable[str], archive: str) -> None:
    for holder in ids:
        check_holder(holder, archive)


class _Ahead(Generic[_T]):
    """Items of a manifest's files looked up in the order the manifest lists them.

    An archive holds its files in manifest order, and a backup walks a tree
    in the order of its parent's manifest: each file is found by reading the
    manifest on (a few thousand entries ahead at most, the ones passed over
    kept for a while) rather than by a lookup in a spilled manifest; a path
    out of order, or not a file, is looked up.
    """

    AHEAD = 4096

    def __init__(self, files: Iterator[_T], lookup: Callable[[str], _T | None]) -> None:
        self._files: Iterator[_T] | None = files
        self._passed: dict[str, _T] = {}
        self._lookup: Callable[[str], _T | None] = lookup

    def get(self, name: str) -> _T | None:
        passed = self._passed
        item = passed.pop(name, None)
        if item is not None:
            return item
        files = self._files
        for _ in range(self.AHEAD):
            if files is None:
                break
            item = next(files, None)
            if item is None:
                self._files = files = None
                break
            path = item.path
            if path == name:
                return item
            passed[path] = item
            if len(passed) > self.AHEAD:
                del passed[next(iter(passed))]
        return self._lookup(name)


class InOrder(_Ahead[Entry]):
    """A manifest's files looked up in the order the manifest lists them, as :class:`Entry`."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest.select("file"), manifest.get)


class RowsInOrder(_Ahead[Row]):
    """A manifest's files looked up in the order the manifest lists them, as :class:`Row`."""

    def __init__(self, manifest: Manifest) -> None:
        def lookup(path: str) -> Row | None:
            entry = manifest.get(path)
            return None if entry is None else Row(*_FIELDS(entry))

        super().__init__(manifest.rows("file"), lookup)


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
