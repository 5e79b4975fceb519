"""Compression codecs for archive streams: zstd (default) and gzip.

zstd compresses on several threads and releases the GIL, so cells packed in
parallel use every core. gzip is there for the seed's ``.tar.gz`` tooling.
Both produce streams that stock tools read: ``zstd -d | tar x`` and ``tar xz``.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Callable
from typing import IO, Any, BinaryIO, cast

import attrs
import zstandard

from .errors import ConfigError

__all__ = ["CODECS", "Codec", "HashingReader", "HashingWriter", "get_codec", "zstd_params"]


@attrs.frozen
class Codec:
    """A compression format for the tar stream of an archive."""

    name: str
    suffix: str
    #: Compression level; ``None`` means the codec's sensible default.
    level: int | None = None
    #: zstd worker threads: -1 for one per core, 0 for none.
    threads: int = -1

    def writer(self, raw: IO[bytes]) -> BinaryIO:
        """A file object that compresses into *raw*; closing it does not close *raw*."""
        if self.name == "zstd":
            level = 3 if self.level is None else self.level
            # 2 MiB jobs bound the multi-threaded compressor's buffers (peak RSS of a
            # full backup 163 -> 93 MiB at 500 MB, same speed and size; stock
            # `zstd -d` reads it as before; docs/performance.md, proposal 2).
            # A content checksum in each frame: decompressing an archive to its end
            # then proves its bytes (a flipped byte in a compressed block is caught
            # even where the tar layer would not notice). Older archives have none
            # and still read.
            cctx = zstandard.ZstdCompressor(compression_params=zstd_params(level, self.threads))
            return cast(BinaryIO, cctx.stream_writer(raw, closefd=False))
        # Level 0 is valid for gzip (stored, no compression): only None means the default.
        level = 6 if self.level is None else self.level
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0))

    def reader(self, raw: IO[bytes]) -> BinaryIO:
        """A file object that decompresses what it reads from *raw*."""
        if self.name == "zstd":
            dctx = zstandard.ZstdDecompressor()
            return cast(BinaryIO, dctx.stream_reader(raw, read_across_frames=True, closefd=False))
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))

    def with_level(self, level: int | None) -> Codec:
        return attrs.evolve(self, level=level)


def zstd_params(level: int, threads: int = -1) -> zstandard.ZstdCompressionParameters:
    """zstd at *level* on *threads* (-1: one per core), in 2 MiB jobs, each frame checksummed.

    2 MiB jobs bound the multi-threaded compressor's buffers (see
    :meth:`Codec.writer`; the default jobs of a 60 MB manifest took 45 MiB more).
    """
    return zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, job_size=2 << 20, write_checksum=True
    )


CODECS: dict[str, Codec] = {
    "zstd": Codec("zstd", ".tar.zst"),
    "gzip": Codec("gzip", ".tar.gz"),
}


def get_codec(name: str, level: int | None = None) -> Codec:
    """Return the codec called *name* (``zstd`` or ``gzip``)."""
    try:
        codec = CODECS[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r}", hint="use 'zstd' or 'gzip'") from None
    if level is not None:
        low, high = (0, 9) if name == "gzip" else (-(1 << 17), zstandard.MAX_COMPRESSION_LEVEL)
        if not isinstance(level, int) or not low <= level <= high:
            raise ConfigError(
                f"compression level {level!r} is out of range for {name}",
                hint=f"use a whole number from {low} to {high}"
                + ("; negative levels are zstd's fast modes" if name == "zstd" else ""),
            )
    return codec.with_level(level)


def codec_for(data_name: str) -> Codec:
    """The codec of an archive data file, from its suffix (``.age`` after it: sealed)."""
    for codec in CODECS.values():
        if data_name.removesuffix(".age").endswith(codec.suffix):
            return codec
    raise ConfigError(f"no codec for {data_name!r}", hint="archives end in .tar.zst or .tar.gz")


class HashingWriter:
    """Pass writes to *raw* while counting bytes and computing their sha256."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.count += view.nbytes
        self.raw.write(view)
        return view.nbytes

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


class HashingReader:
    """Pass reads from *raw* while counting bytes and computing their sha256.

    *see*, if given, is shown every block read too (in order, once each).
    """

    def __init__(self, raw: IO[bytes], see: Callable[[bytes], None] | None = None) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.count = 0
        self.see = see

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.digest.update(data)
        self.count += len(data)
        if self.see is not None:
            self.see(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def drain(self, block: int = 1 << 20) -> None:
        """Read *raw* to its end so that the digest covers every byte."""
        while self.read(block):
            pass

    def hexdigest(self) -> str:
        return self.digest.hexdigest()
