"""The text of a ``manifest.json``, parsed as a stream (see :mod:`cellvault.manifest`).

:class:`ManifestText` reads a manifest a chunk at a time, digesting it as it
passes, and yields its entries as parsed JSON (:meth:`ManifestText.items`)
or as the fields of :class:`~cellvault.manifest.Entry`
(:meth:`ManifestText.fields`, with one pattern for a file's entry laid out
as cellvault writes it). :class:`ApartParser` runs that parse in a forked
child, fed the text by a thread, for a manifest long enough to be worth it.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from .forking import fork, write_all

__all__ = ["READ_CHUNK", "ApartParser", "ManifestText", "Readable"]


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


#: A file's entry as Entry.to_json writes it, without extended attributes: the
#: path without escapes or control characters (a JSON string whose text is its
#: value), numbers as JSON writes whole numbers, the sha256 and archive plain
#: strings or null (with their quotes). Groups: path, mode, mtime_ns, uid, gid,
#: size, sha256, archive, inode, dev, ctime_ns.
_PLAIN = r'"([^"\\\x00-\x1f]*)"'
_PLAIN_OR_NULL = r'(null|"[^"\\\x00-\x1f]*")'
_WHOLE = r"(-?(?:0|[1-9][0-9]*))"
_FILE_ENTRY = re.compile(
    r'\{"path":'
    + _PLAIN
    + r',"type":"file","mode":'
    + _WHOLE
    + r',"mtime_ns":'
    + _WHOLE
    + r',"uid":'
    + _WHOLE
    + r',"gid":'
    + _WHOLE
    + r',"size":'
    + _WHOLE
    + r',"sha256":'
    + _PLAIN_OR_NULL
    + r',"archive":'
    + _PLAIN_OR_NULL
    + r',"inode":'
    + _WHOLE
    + r',"dev":'
    + _WHOLE
    + r',"ctime_ns":'
    + _WHOLE
    + r"\}"
)
#: The head of a manifest as cellvault writes it (any whitespace allowed).
_HEAD = re.compile(
    r'\s*\{\s*"format"\s*:\s*1\s*,\s*"archive"\s*:\s*("(?:[^"\\]|\\.)*")\s*,'
    r'\s*"entries"\s*:\s*\[\s*'
)
_SPACE = re.compile(r"\s*")
#: Bytes read from a manifest's source at a time.
READ_CHUNK = 1 << 20


class _Text:
    """The text of a manifest read a chunk at a time, digested as it passes."""

    def __init__(self, source: Readable) -> None:
        self.source = source
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.digest = hashlib.sha256()
        self.buf = ""
        self.pos = 0
        self.eof = False

    def more(self) -> bool:
        """Read the next chunk into the buffer (dropping what was parsed); ``False`` at the end."""
        if self.eof:
            return False
        raw = self.source.read(READ_CHUNK)
        self.digest.update(raw)
        if not raw:
            self.eof = True
        self.buf = self.buf[self.pos :] + self.decoder.decode(raw, final=not raw)
        self.pos = 0
        return True

    def skip(self) -> int:
        """Skip whitespace (reading on as needed); the position of what follows."""
        while True:
            self.pos = _SPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self.more():
                return self.pos

    def rest(self) -> str:
        while self.more():
            pass
        return self.buf[self.pos :]


class ManifestText:
    """The text of a ``manifest.json``, parsed as a stream.

    :attr:`archive` is the archive it names; :meth:`items` yields its entries
    as parsed JSON, one at a time (memory does not grow with their number),
    then checks that the text ends; :attr:`digest` is the sha256 of the text
    once :meth:`items` has run to its end. Raises :class:`ValueError`,
    :class:`KeyError` or :class:`TypeError` on what is not a manifest.
    """

    def __init__(self, source: Readable) -> None:
        text = self._text = _Text(source)
        while len(text.buf) < 4096 and text.more():
            pass
        head = _HEAD.match(text.buf)
        self._whole: Any = None
        if head is None:
            # Not laid out as cellvault writes it: parsed whole, as before.
            self._whole = json.loads(text.rest())
            self.archive = str(self._whole["archive"])
        else:
            self.archive = str(json.loads(head.group(1)))
            text.pos = head.end()

    @property
    def digest(self) -> str:
        return self._text.digest.hexdigest()

    @classmethod
    def _after_head(cls, source: Readable) -> ManifestText:
        """The entries of a text whose head was read elsewhere: *source* starts at the first."""
        text = cls.__new__(cls)
        text._text = _Text(source)
        text._whole = None
        text.archive = ""
        return text

    def _long(self, size: int) -> bool:
        """Whether the entries' text holds *size* characters or more (reading ahead for that)."""
        if self._whole is not None:
            return False
        text = self._text
        while len(text.buf) - text.pos < size and text.more():
            pass
        return len(text.buf) - text.pos >= size

    def items(self) -> Iterator[Any]:
        if self._whole is not None:
            yield from self._whole["entries"]
            return
        yield from self._parsed(json.JSONDecoder().raw_decode)

    def fields(
        self,
        convert: Callable[[Any], tuple[Any, ...]],
        ids: dict[str, str],
        *,
        max_mode: int,
        max_count: int,
    ) -> Iterator[tuple[Any, ...]]:
        """Each entry's fields, in :class:`Entry`'s order.

        A file's entry as cellvault writes it (its keys in their order, no
        spaces, no escapes in its strings, numbers in range) is read by one
        pattern (:data:`_FILE_ENTRY`), into the fields ``json`` and *convert*
        would give; any other entry is parsed as JSON and given to *convert*.
        *ids* shares the archive ids among the entries that name them; a
        mode above *max_mode* or a size above *max_count* is left to *convert*
        too (which refuses it as it refuses any other).
        """
        if self._whole is not None:
            yield from map(convert, self._whole["entries"])
            return
        decode = json.JSONDecoder().raw_decode
        match = _FILE_ENTRY.match

        def parse(buf: str, pos: int) -> tuple[tuple[Any, ...], int]:
            found = match(buf, pos)
            if found is not None:
                path, mode, mtime, uid, gid, size, sha256, holder, inode, dev, ctime = (
                    found.groups()
                )
                mode_n, size_n = int(mode), int(size)
                if 0 <= mode_n <= max_mode and 0 <= size_n <= max_count:
                    if holder == "null":
                        holder = None
                    else:
                        holder = holder[1:-1]
                        holder = ids.setdefault(holder, holder)
                    fields = (
                        path,
                        "file",
                        mode_n,
                        int(mtime),
                        size_n,
                        None if sha256 == "null" else sha256[1:-1],
                        None,
                        int(uid),
                        int(gid),
                        int(inode),
                        int(dev),
                        int(ctime),
                        holder,
                        0,
                        (),
                    )
                    return fields, found.end()
            item, end = decode(buf, pos)
            return convert(item), end

        yield from self._parsed(parse)

    def _parsed(self, decode: Callable[[str, int], tuple[Any, int]]) -> Iterator[Any]:
        """What *decode* makes of each entry; *decode* raises JSONDecodeError on a cut one."""
        text = self._text
        expect_entry = True
        first = True
        fast = False  # the next entry starts at text.pos, inside the buffer
        while True:
            if fast:
                pos, buf, fast = text.pos, text.buf, False
            else:
                pos = text.skip()
                buf = text.buf
            if pos >= len(buf):
                raise ValueError("the manifest ends inside its list of entries")
            if not expect_entry:
                if buf[pos] == "]":
                    text.pos = pos + 1
                    break
                if buf[pos] != ",":
                    raise ValueError(f"expected ',' or ']' after an entry, found {buf[pos]!r}")
                text.pos = pos + 1
                expect_entry = True
                continue
            if first and buf[pos] == "]":
                text.pos = pos + 1
                break
            try:
                item, end = decode(buf, pos)
            except json.JSONDecodeError:
                if text.more():
                    continue  # the entry goes on in the next chunk
                raise
            text.pos = end
            expect_entry = first = False
            yield item
            # As cellvault writes them: a comma, then the next entry, without spaces.
            if buf.startswith(",{", end):
                text.pos = end + 1
                expect_entry = fast = True
        if text.rest().strip() != "}":
            raise ValueError("the manifest does not end after its entries")


class ApartParser:
    """A forked child that parses a manifest's entries (:func:`_parse_apart`).

    This process feeds it the text from a thread (what was read ahead, then
    the rest of the source, digested on the way) and reads its batches.
    """

    def __init__(self, pid: int, result: int, feed: int, text: ManifestText) -> None:
        self.pid = pid
        self.result = result
        self._feed = feed
        self._source_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._pump, args=(text,), name="cellvault-manifest-feed", daemon=True
        )
        self._thread.start()

    @classmethod
    def start(cls, text: ManifestText, work: Callable[[int, int, int], None]) -> ApartParser | None:
        """Fork the parser, which runs *work* (``None`` where this process cannot: it parses here).

        *work(feed, out, parent)* parses the entries from *feed* (a
        :class:`~cellvault.forking.PipeSource`) and sends them to *out*.
        """
        started = fork(work)
        if started is None:
            return None
        pid, feed_w, result_r = started
        return cls(pid, result_r, feed_w, text)

    def _pump(self, text: ManifestText) -> None:
        read = text._text
        try:
            # What was read ahead (its text, and the bytes of a character cut in two).
            write_all(self._feed, read.buf[read.pos :].encode() + read.decoder.getstate()[0])
            while not read.eof:
                raw = read.source.read(READ_CHUNK)
                read.digest.update(raw)
                if not raw:
                    break
                write_all(self._feed, raw)
        except BrokenPipeError:
            pass  # the parser stopped reading: it says why
        except BaseException as exc:  # noqa: BLE001 - raised by the reading thread (close)
            self._source_error = exc
        finally:
            os.close(self._feed)

    def close(self) -> BaseException | None:
        """End the child and the feeding thread; what reading the source raised, if anything."""
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0
        self._thread.join()
        if self.result >= 0:
            os.close(self.result)
            self.result = -1
        return self._source_error
