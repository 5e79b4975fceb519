"""An archive's decompression in a forked child, beside the process that parses it.

A thread that decompresses ahead (:class:`~cellvault.extract.tarread.Prefetch`)
shares the GIL with the thread that parses and checks the members: zstd
releases it while it works, but each chunk takes it back several times (the
stored bytes read and hashed, the chunk queued), and on 2 cores those
hand-overs cost about what the overlap won (a restore of 200,000 small files
took as long without the thread). A child has a core and an interpreter of
its own: this process's thread only feeds it the stored bytes (read, hashed,
decrypted as before: a few calls per MiB), and the parser reads the tar
stream from a pipe.

What the child meets is raised here, in stream order, as the thread's read
would have raised it: the codec's own error (``ZstdError: ...``), or what
reading the stored bytes raised (the target, the digest, the decryption),
which comes first. A child that dies is said to have died, not the archive
to be damaged.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import threading
import zlib
from typing import IO, Any

import zstandard

from ..codec import codec_for
from ..forking import (
    FORK_MAX_RSS,
    PipeSource,
    ended_as,
    fork,
    pipe,
    receive,
    resident,
    send,
    write_all,
)

__all__ = ["INFLATE_MIN", "Inflate"]

#: Stored archives smaller than this are decompressed by a thread (a fork costs
#: more than it would save).
INFLATE_MIN = 4 << 20
#: Stored bytes fed to the child at a time, and decompressed bytes it writes at a time.
FEED_CHUNK = 1 << 20
OUT_CHUNK = 256 << 10

#: The codec errors a child reports by name, raised here as they were raised there.
_CODEC_ERRORS: dict[str, type[Exception]] = {
    "ZstdError": zstandard.ZstdError,
    "EOFError": EOFError,
    "error": zlib.error,
    "BadGzipFile": gzip.BadGzipFile,
}
#: What a child reports: those, and any other ``OSError`` (raised here as one).
_REPORTED: tuple[type[Exception], ...] = (*_CODEC_ERRORS.values(), OSError)


class Inflate:
    """Read decompressed bytes from a forked child that *plain*'s bytes are fed to.

    :meth:`start` makes one (``None`` where a thread should do it); :meth:`read`
    gives the decompressed stream a piece at a time, ``b""`` at its end;
    :meth:`close` ends the child and the feeding thread (idempotent).
    """

    def __init__(self, pid: int, feed: int, out: int, status: int, plain: IO[bytes]) -> None:
        self._pid = pid
        self._out = out
        self._status = status
        self._plain = plain
        self._feed_error: BaseException | None = None
        self._ended = False
        self._thread = threading.Thread(
            target=self._pump, args=(feed,), name="cellvault-inflate-feed", daemon=True
        )
        self._thread.start()

    @classmethod
    def start(cls, plain: IO[bytes], data_name: str, stored: int) -> Inflate | None:
        """Fork the child for *stored* bytes of the archive data file *data_name*, read from *plain*.

        ``None`` for a small archive, in a large process (a fork would copy
        its page tables: :data:`~cellvault.forking.FORK_MAX_RSS`), or where
        no child can be started.
        """
        if stored < INFLATE_MIN or resident() > FORK_MAX_RSS:
            return None
        codec = codec_for(data_name)
        try:
            status_r, status_w = pipe()
        except OSError:
            return None

        def work(feed: int, out: int, parent: int) -> None:  # pragma: no cover - the child
            _inflate(codec.reader(PipeSource(feed, parent, FEED_CHUNK)), out, status_w)  # type: ignore[arg-type]

        started = fork(work, status_w)
        os.close(status_w)
        if started is None:
            os.close(status_r)
            return None
        pid, feed, out = started
        return cls(pid, feed, out, status_r, plain)

    def _pump(self, feed: int) -> None:
        try:
            while block := self._plain.read(FEED_CHUNK):
                write_all(feed, block)
        except BrokenPipeError:
            pass  # the child stopped reading: it says why
        except BaseException as exc:  # noqa: BLE001 - raised by read(), on the parsing thread
            self._feed_error = exc
        finally:
            os.close(feed)

    def read(self, size: int = -1) -> bytes:
        """Up to *size* decompressed bytes (at least one); ``b""`` at the stream's end."""
        if self._ended or not size:
            return b""
        data = os.read(self._out, OUT_CHUNK if size < 0 else size)
        if data:
            return data
        self._ended = True
        self._end()
        return b""

    def _end(self) -> None:
        """At the end of the output: raise what the feeding or the child met, if anything."""
        try:
            word = receive(self._status)
        except (EOFError, ValueError, TypeError):
            word = None
        how = self._reap()
        self._thread.join()
        if self._feed_error is not None:
            # Reading the stored bytes failed: the child saw them end early. That comes first.
            raise self._feed_error
        if word == ("end",):
            return
        if isinstance(word, tuple) and len(word) == 3 and word[0] == "codec":
            raise _CODEC_ERRORS.get(word[1], OSError)(word[2])
        said = how if word is None else f"answered {word!r}"
        raise RuntimeError(f"the process decompressing the archive {said}; run it again")

    def _reap(self) -> str:
        """Wait for the child (not yet waited for); how it ended, in words."""
        pid, self._pid = self._pid, 0
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return "ended without a word"
        return ended_as(status)

    def close(self) -> None:
        """End the child (killed if it still runs) and the feeding thread; close the pipes."""
        if self._pid:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
            self._reap()
        self._thread.join()
        for name in ("_out", "_status"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        self._ended = True


def _inflate(reader: Any, out: int, status: int) -> None:  # pragma: no cover - the child
    """In the child: decompress *reader* into *out*; the last word on *status*."""
    word: tuple[str, ...] = ("end",)
    try:
        while block := reader.read(OUT_CHUNK):
            write_all(out, block)
    except BrokenPipeError:
        return  # the parent stopped reading
    except _REPORTED as exc:
        word = ("codec", type(exc).__name__, str(exc))
    os.close(out)
    send(status, word)
