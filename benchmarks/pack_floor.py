"""The least time a full backup written in Python takes, beside ``tar -c | zstd -T0``'s.

``benchmarks/floor.py`` counts only the CPU of reading each file; this times
a whole bare packer, as wall time. This process walks the tree and hands its
files in batches to *children* forked readers in turn, which, per file, open
it (no link followed), ``fstat`` it, read it, list its extended attributes,
close it, hash it (sha256) and make its header (cellvault's own,
:func:`cellvault.tarwrite.file_header`, which adds a PAX record for an
mtime's nanoseconds); each batch of members goes back joined to this
process, which writes the batches in order into ``zstd -T0`` (its output
thrown away). With ``--compress-in-readers``, each reader compresses its
batches into zstd frames of their own instead (they concatenate into one
stream) and no ``zstd -T0`` runs. The shape of cellvault's backup
(:mod:`cellvault.readers`), without its manifest, its other PAX records, its
folders and links, its checks, its spool, its sidecar, its imports and its
settings. The readers are forked, and the batches pass, as cellvault's own
do (:mod:`cellvault.forking`: pipes of 1 MiB where the kernel allows,
``marshal``'d frames, freed memory kept by the allocator, children killed
with this process).

Timed in alternating rounds with ``tar -c <tree> | zstd -T0`` (output thrown
away too) and, with ``--with-cellvault``, a full ``cellvault backup`` of the
tree with ``BACKUP_VERIFY=0``. The ratio is a lower bound for the one
``benchmarks/many_files.py --backup-pairs`` measures, for a packer whose work
per file is Python code. Warm cache::

    python benchmarks/pack_floor.py --tree /scratch/mf/cells/crm
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import zstandard
from floor import tar_zstd
from rounds import against, alternate
from rounds import children as forked

from cellvault.forking import frames, receive, send, write_all
from cellvault.tarwrite import file_header

_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_BATCH = 256


def _members(paths: list[tuple[str, str]]) -> bytes:
    """The tar members (cellvault's header, bytes, padding) of *paths*, joined; each file hashed."""
    opened, fstat, read, close = os.open, os.fstat, os.read, os.close
    listxattr, sha256 = os.listxattr, hashlib.sha256
    parts: list[bytes] = []
    for path, name in paths:
        fd = opened(path, _OPEN)
        st = fstat(fd)
        data = read(fd, st.st_size)
        listxattr(fd)
        close(fd)
        sha256(data).hexdigest()
        parts.append(
            file_header(name, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
        )
        parts.append(data)
        parts.append(bytes(-len(data) % 512))
    return b"".join(parts)


def _reader(feed: int, out: int, parent: int, compress: bool) -> None:
    """A forked reader: packs each batch of paths read from *feed*, sent back as one frame.

    With *compress*, each batch is sent as a zstd frame of its own (level 3,
    as ``zstd -T0``'s default): the frames of a stream concatenate.
    """
    squeeze = zstandard.ZstdCompressor(level=3).compress if compress else None
    for batch in frames(feed, parent):
        packed = _members(batch)
        send(out, squeeze(packed) if squeeze is not None else packed)


def walk(tree: Path) -> Iterator[list[tuple[str, str]]]:
    """The regular files under *tree* (path, member name), in walk order, a batch at a time."""
    batch: list[tuple[str, str]] = []
    for folder, dirs, names in os.walk(tree):
        dirs.sort()
        rel = os.path.relpath(folder, tree.parent)
        for name in sorted(names):
            batch.append((os.path.join(folder, name), os.path.join(rel, name)))
            if len(batch) >= _BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def pack(tree: Path, children: int, compress: bool = False) -> float:
    """The bare backup of *tree* into ``zstd -T0`` (output thrown away): its wall seconds.

    This process walks the tree and hands each batch of paths to the next
    reader in turn; it reads the packed batches back in the same order, and
    before it hands a reader a new batch, it has read back every batch older
    than the one that reader holds (so neither side waits on a full pipe for
    ever).
    """
    started = time.monotonic()
    pids, feeds, sources = zip(
        *forked(children, lambda feed, out, parent: _reader(feed, out, parent, compress)),
        strict=True,
    )
    # The stream goes into zstd -T0, or, compressed by the readers, straight to /dev/null.
    zstd = None
    if compress:
        sink = os.open(os.devnull, os.O_WRONLY)
    else:
        zstd = subprocess.Popen(
            ["zstd", "-T0", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        assert zstd.stdin is not None
        sink = zstd.stdin.fileno()
    sent = done = 0
    for batch in walk(tree):
        while done < sent - children:
            write_all(sink, receive(sources[done % children]))
            done += 1
        send(feeds[sent % children], batch)
        sent += 1
    for feed in feeds:
        os.close(feed)
    while done < sent:
        write_all(sink, receive(sources[done % children]))
        done += 1
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit("a reader failed")
    if zstd is None:
        os.close(sink)
    else:
        write_all(sink, bytes(1024))
        assert zstd.stdin is not None
        zstd.stdin.close()
        if zstd.wait():
            raise SystemExit("zstd -T0 failed")
    for source in sources:
        os.close(source)
    return time.monotonic() - started


def cellvault_backup(tree: Path, scratch: Path) -> float:
    """A full ``python -m cellvault backup`` of *tree* (the cell ``crm``) into *scratch*, unchecked.

    ``BACKUP_VERIFY=0``: the stored archive is not read back, as the bare
    packer's is not; *scratch* is emptied first.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    env = {
        **os.environ,
        "BACKUP_DIR": str(scratch),
        "BACKUP_CELLS": tree.name,
        "BACKUP_CELLS_ROOT": str(tree.parent),
        "BACKUP_TARGETS": "local",
        "BACKUP_VERIFY": "0",
    }
    begun = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "cellvault", "backup"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    wall = time.monotonic() - begun
    shutil.rmtree(scratch, ignore_errors=True)
    return wall


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="the cell folder to read")
    parser.add_argument("--children", type=int, default=2, help="forked readers")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--compress-in-readers",
        action="store_true",
        help="each reader compresses its own batches (zstd frames that concatenate), no zstd -T0",
    )
    parser.add_argument(
        "--with-cellvault",
        type=Path,
        metavar="SCRATCH",
        help="time a full `cellvault backup` (BACKUP_VERIFY=0) into SCRATCH in each round too",
    )
    args = parser.parse_args(argv)
    tar_zstd(args.tree)  # the cache warm
    runs: dict[str, Callable[[], float]] = {
        "floor": lambda: pack(args.tree, args.children, args.compress_in_readers),
        "tar": lambda: tar_zstd(args.tree)[0],
    }
    if args.with_cellvault:
        runs["cellvault"] = lambda: cellvault_backup(args.tree, args.with_cellvault)
    walls = alternate(runs, args.pairs)
    print(f"medians of {args.pairs} alternating rounds, {args.children} readers")
    tar = against(
        walls,
        "tar",
        {
            "tar": "tar -c | zstd -T0",
            "floor": "bare backup in Python",
            "cellvault": "cellvault backup",
        },
    )
    floor = statistics.median(walls["floor"])
    print(
        f"1.5x of tar | zstd: {1.5 * tar:.2f} s; left beyond the bare backup: {1.5 * tar - floor:.2f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
