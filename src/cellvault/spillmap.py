"""A map that stays small in memory: past a number of keys, it moves to a temporary file.

Manifests list every path of a cell: millions, for some cells. What a backup,
a restore or a verify keeps per path (the manifests, the members seen, the
files still to write) lives in a :class:`SpillMap`: a plain dict up to
:data:`SPILL_AT` keys, then a private temporary SQLite database (deleted by
SQLite when it is closed, or when the process ends), whose page cache is
bounded by :data:`CACHE_KIB`. Keys keep their first insertion order, as a
dict's do; values are stored as text or bytes through the map's *encode*
and *decode*.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["CACHE_KIB", "SPILL_AT", "SeenNames", "SpillMap"]

V = TypeVar("V")

#: Keys held as a dict before the map moves to its temporary file.
SPILL_AT = 32_768
#: The temporary database's page cache (KiB), what it holds in memory at most.
CACHE_KIB = 8_192
#: Writes gathered before they go to the database in one statement.
_BATCH = 4_096
_UPSERT = "INSERT INTO m (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


def _same(text: str) -> str:
    return text


def _scratch_db() -> sqlite3.Connection:
    """A private temporary database ("": on disk, deleted when closed), its cache bounded.

    Nothing in it needs to survive a crash: no journal, no syncs.
    """
    db = sqlite3.connect("", check_same_thread=False, isolation_level=None)
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB:d}")
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    return db


def _key(key: str) -> str | bytes:
    """*key* as the database stores it: ASCII as text, anything else as its bytes.

    Paths are names a file system gave, decoded with ``surrogateescape``: a
    name that is not UTF-8 holds lone surrogates, which SQLite's text cannot
    (Python's sqlite3 encodes text as strict UTF-8). ``surrogatepass`` gives
    every string bytes of its own; ASCII keys, nearly all, stay text for free
    (``isascii`` reads a flag). A key is always stored the same way, so
    lookups find it.
    """
    return key if key.isascii() else key.encode("utf-8", "surrogatepass")


def _unkey(stored: str | bytes) -> str:
    """A key read back from the database (see :func:`_key`)."""
    return stored if isinstance(stored, str) else stored.decode("utf-8", "surrogatepass")


class SpillMap(Generic[V]):
    """A ``str``-keyed map in insertion order, moved to a temporary file past *spill_at* keys.

    *encode* and *decode* turn a value into text or bytes and back (the values
    of a map that has spilled are stored so). Iterating a map while writing to it
    is not supported.
    """

    def __init__(
        self,
        encode: Callable[[V], str | bytes] = _same,  # type: ignore[assignment]
        decode: Callable[[Any], V] = _same,  # type: ignore[assignment]
        spill_at: int | None = None,
    ) -> None:
        self._encode = encode
        self._decode = decode
        self._spill_at = SPILL_AT if spill_at is None else spill_at
        self._mem: dict[str, V] | None = {}
        self._db: sqlite3.Connection | None = None
        #: Writes not yet in the database (after the spill).
        self._buf: dict[str, V] = {}
        self._len: int | None = 0

    @property
    def spilled(self) -> bool:
        """Whether the map lives in its temporary file."""
        return self._db is not None

    def _spill(self) -> None:
        db = _scratch_db()
        # k: text or bytes (see _key), so no column affinity converts one into the other.
        db.execute("CREATE TABLE m (i INTEGER PRIMARY KEY, k BLOB NOT NULL UNIQUE, v TEXT)")
        self._db = db
        mem, self._mem = self._mem, None
        assert mem is not None
        self._buf = mem
        self._len = None  # counted in the database from now on
        self._flush()

    def _flush(self) -> None:
        if not self._buf or self._db is None:
            return
        encode = self._encode
        rows = [(_key(k), encode(v)) for k, v in self._buf.items()]
        self._db.execute("BEGIN")
        self._db.executemany(_UPSERT, rows)
        self._db.execute("COMMIT")
        self._buf = {}

    def __setitem__(self, key: str, value: V) -> None:
        mem = self._mem
        if mem is not None:
            mem[key] = value
            if len(mem) > self._spill_at:
                self._spill()
            return
        self._len = None
        self._buf[key] = value
        if len(self._buf) >= _BATCH:
            self._flush()

    def put_stored(self, rows: list[tuple[str, Any]]) -> None:
        """Set keys to values given as stored (encoded), in order; the map must have spilled.

        The same as setting each key to its decoded value, without decoding.
        """
        assert self._db is not None, "put_stored on a map that has not spilled"
        self._flush()
        self._len = None
        self._db.execute("BEGIN")
        self._db.executemany(_UPSERT, ((_key(k), v) for k, v in rows))
        self._db.execute("COMMIT")

    def get(self, key: str, default: V | None = None) -> V | None:
        mem = self._mem
        if mem is not None:
            return mem.get(key, default)
        if key in self._buf:
            return self._buf[key]
        assert self._db is not None
        row = self._db.execute("SELECT v FROM m WHERE k = ?", (_key(key),)).fetchone()
        return default if row is None else self._decode(row[0])

    def __getitem__(self, key: str) -> V:
        mem = self._mem
        if mem is not None:
            return mem[key]
        value = self.get(key, _MISSING)  # type: ignore[arg-type]
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        mem = self._mem
        if mem is not None:
            return key in mem
        if key in self._buf:
            return True
        assert self._db is not None
        if not isinstance(key, str):
            return False
        return self._db.execute("SELECT 1 FROM m WHERE k = ?", (_key(key),)).fetchone() is not None

    def __delitem__(self, key: str) -> None:
        mem = self._mem
        if mem is not None:
            del mem[key]
            return
        if key not in self:
            raise KeyError(key)
        self._flush()
        assert self._db is not None
        self._db.execute("DELETE FROM m WHERE k = ?", (_key(key),))
        self._len = None

    def __len__(self) -> int:
        mem = self._mem
        if mem is not None:
            return len(mem)
        if self._len is None:
            self._flush()
            assert self._db is not None
            self._len = int(self._db.execute("SELECT count(*) FROM m").fetchone()[0])
        return self._len

    def _rows(self, what: str) -> Iterator[tuple[Any, ...]]:
        self._flush()
        assert self._db is not None
        cursor = self._db.execute(f"SELECT {what} FROM m ORDER BY i")  # noqa: S608 - fixed text
        while rows := cursor.fetchmany(1024):
            yield from rows

    def items(self) -> Iterator[tuple[str, V]]:
        """The keys and values, in insertion order."""
        mem = self._mem
        if mem is not None:
            yield from mem.items()
            return
        decode = self._decode
        for key, text in self._rows("k, v"):
            yield _unkey(key), decode(text)

    def values(self) -> Iterator[V]:
        mem = self._mem
        if mem is not None:
            return iter(mem.values())
        decode = self._decode
        return (decode(row[0]) for row in self._rows("v"))

    def stored(self) -> Iterator[Any] | None:
        """The values as stored (encoded), in insertion order; ``None`` if not spilled."""
        if self._mem is not None:
            return None
        return (row[0] for row in self._rows("v"))

    def __iter__(self) -> Iterator[str]:
        mem = self._mem
        if mem is not None:
            return iter(mem)
        return (_unkey(row[0]) for row in self._rows("k"))

    def keys(self) -> Iterator[str]:
        return iter(self)

    def has_prefix(self, prefix: str) -> bool:
        """Whether a key starts with *prefix* (spilled: one lookup in the keys' index, not a scan)."""
        mem = self._mem
        if mem is not None:
            return any(key.startswith(prefix) for key in mem)
        if any(key.startswith(prefix) for key in self._buf):
            return True
        assert self._db is not None
        if prefix and ord(prefix[-1]) == 0x10FFFF:  # no code point above it: looked for
            return any(key.startswith(prefix) for key in self)
        # A key is stored as text (ASCII) or as bytes (see _key): the keys from the
        # prefix up to the prefix with its last code point raised, of either kind
        # (text only for an ASCII prefix: no other starts an ASCII key).
        ranges: list[tuple[str | bytes, str | bytes | None]] = []
        high = prefix[:-1] + chr(ord(prefix[-1]) + 1) if prefix else None
        if prefix.isascii():
            ranges.append((prefix, high))
        ranges.append(
            (
                prefix.encode("utf-8", "surrogatepass"),
                None if high is None else high.encode("utf-8", "surrogatepass"),
            )
        )
        for low_key, high_key in ranges:
            if high_key is None:
                found = self._db.execute("SELECT 1 FROM m WHERE k >= ? LIMIT 1", (low_key,))
            else:
                found = self._db.execute(
                    "SELECT 1 FROM m WHERE k >= ? AND k < ? LIMIT 1", (low_key, high_key)
                )
            if found.fetchone() is not None:
                return True
        return False

    def __eq__(self, other: object) -> bool:
        """Equal keys with equal values, whatever the order (compared a key at a time)."""
        if isinstance(other, dict):
            other = SpillMap.of(other)
        if not isinstance(other, SpillMap):
            return NotImplemented
        if len(self) != len(other):
            return False
        missing = object()
        return all(other.get(k, missing) == v for k, v in self.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        where = "spilled to a temporary file" if self.spilled else "in memory"
        return f"<SpillMap of {len(self)} keys, {where}>"

    @classmethod
    def of(cls, data: dict[str, V]) -> SpillMap[V]:
        """A map holding *data*'s items (never spilled: *data* is in memory already)."""
        out: SpillMap[V] = cls(spill_at=max(len(data), SPILL_AT))
        assert out._mem is not None
        out._mem.update(data)
        return out

    def close(self) -> None:
        """Drop the temporary file now (it goes when the map is collected otherwise)."""
        if self._db is not None:
            self._db.close()
            self._db = None
            self._mem = {}
            self._buf = {}
            self._len = 0


_MISSING = object()


class SeenNames:
    """Names that must each be seen once (an archive's members), kept like a :class:`SpillMap`.

    :meth:`add` returns a name seen twice. Past *spill_at* names they go to a
    temporary table in batches, whose unique key finds a repeat: one seen
    before the last batch is then reported up to a batch later, and
    :meth:`finish` reports one in the last batch.
    """

    def __init__(self, spill_at: int | None = None) -> None:
        self._spill_at = SPILL_AT if spill_at is None else spill_at
        self._set: set[str] = set()
        self._db: sqlite3.Connection | None = None

    def add(self, name: str) -> str | None:
        """Note *name*; return a name seen twice, if one is found now."""
        names = self._set
        if name in names:
            return name
        names.add(name)
        if len(names) > (self._spill_at if self._db is None else _BATCH):
            return self._flush()
        return None

    def finish(self) -> str | None:
        """The name seen twice among the last ones noted, if any."""
        return self._flush() if self._db is not None else None

    def _flush(self) -> str | None:
        db = self._db
        if db is None:
            db = self._db = _scratch_db()
            db.execute("CREATE TABLE s (k BLOB PRIMARY KEY) WITHOUT ROWID")
            db.execute("CREATE TABLE b (k BLOB)")
        batch, self._set = self._set, set()
        db.execute("BEGIN")
        db.executemany("INSERT INTO b (k) VALUES (?)", ((_key(k),) for k in batch))
        row = db.execute(
            "SELECT k FROM b WHERE k IN (SELECT k FROM s) ORDER BY k LIMIT 1"
        ).fetchone()
        if row is None:
            db.execute("INSERT INTO s (k) SELECT k FROM b")
        db.execute("DELETE FROM b")
        db.execute("COMMIT")
        return None if row is None else _unkey(row[0])

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
