"""The least time a restore written in Python takes, beside ``zstd -dc | tar -x``'s.

What any restore in Python that writes files safely and checks them must do
with one ``.tar.zst`` archive, and nothing else: ``zstd -dc`` decompresses
into this process, which reads the tar stream (512-byte headers, PAX
``path`` records, the members' bytes), makes each folder, and hands the
regular files in batches to *children* forked writers, which compute each
file's sha256 and create it relative to a directory descriptor opened
without following links (``O_EXCL | O_NOFOLLOW``), write it, set its times
and close it: the shape of cellvault's restore (:mod:`cellvault.extract`),
without its manifest, its checks of names and sizes, its links, owners,
modes, attributes and folders' metadata, its imports and its settings. The
writers are forked, and the batches pass, as cellvault's own do
(:mod:`cellvault.forking`: pipes of 1 MiB where the kernel allows,
``marshal``'d frames, freed memory kept by the allocator, children killed
with this process).

Timed in alternating rounds with ``zstd -dc < archive | tar -x`` of the same
archive into the same folder (emptied before each run), and with
``--with-cellvault`` with ``cellvault restore --into`` (its settings, the
``BACKUP_*`` variables, from the environment; the archive should be the one
it restores); then the start of a bare interpreter and of cellvault's
command line, the least reading of the archive's manifest copy, and the sum
of the CPU they take at best on this machine's cores. The ratio is a lower
bound for the one ``benchmarks/many_files.py --restore-pairs`` measures, for
a restore whose work per file is Python code. Warm cache: run it after a
backup of the many-files tree::

    python benchmarks/restore_floor.py --archive <backup>/crm/<id>.tar.zst --into /dev/shm/floor
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rounds import against, alternate
from rounds import children as forked

from cellvault.forking import frames, send, write_all

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BLOCK = 512
_BATCH_BYTES = 1 << 20
_BATCH_FILES = 2048


def _writer(feed: int, root: int, parent: int) -> None:
    """A forked writer: creates the files of each batch read from *feed*."""
    folders: dict[str, int] = {"": root}
    sha256, opened, utime, close = hashlib.sha256, os.open, os.utime, os.close
    for batch in frames(feed, parent):
        for folder, base, mode, data, mtime_ns in batch:
            at = folders.get(folder)
            if at is None:
                at = folders[folder] = opened(folder, _DIR, dir_fd=root)
            sha256(data).hexdigest()
            fd = opened(base, _CREATE, mode, dir_fd=at)
            write_all(fd, data)
            utime(fd, ns=(mtime_ns, mtime_ns))
            close(fd)


class _Stream:
    """The decompressed tar stream, read a member at a time."""

    def __init__(self, source: int) -> None:
        self._source = source
        self._buf = bytearray()
        self._at = 0

    def read(self, size: int) -> bytes:
        while len(self._buf) - self._at < size:
            chunk = os.read(self._source, 1 << 20)
            if not chunk:
                raise SystemExit("the tar stream ended early")
            del self._buf[: self._at]
            self._at = 0
            self._buf += chunk
        out = bytes(self._buf[self._at : self._at + size])
        self._at += size
        return out


def _octal(field: bytes) -> int:
    return int(field.rstrip(b"\0 ") or b"0", 8)


def _pax_path(records: bytes) -> str | None:
    for record in records.split(b"\n"):
        _, _, pair = record.partition(b" ")
        key, _, value = pair.partition(b"=")
        if key == b"path":
            return value.decode("utf-8", "surrogateescape")
    return None


def _feed(stream: _Stream, root: Path, feeds: Sequence[int]) -> None:
    """Read the tar stream; make its folders, hand its files to the writers in turn."""
    batch: list[tuple[str, str, int, bytes, int]] = []
    size = turn = 0
    long_name: str | None = None
    while (header := stream.read(_BLOCK)) != bytes(_BLOCK):
        name = header[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
        prefix = header[345:500].rstrip(b"\0")
        if prefix:
            name = f"{prefix.decode('utf-8', 'surrogateescape')}/{name}"
        length, kind = _octal(header[124:136]), header[156:157]
        data = stream.read((length + _BLOCK - 1) & ~(_BLOCK - 1))[:length] if length else b""
        if kind == b"x":
            long_name = _pax_path(data)
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if kind == b"5":
            (root / name).mkdir(parents=True, exist_ok=True)
        elif kind in (b"0", b"\0"):
            folder, _, base = name.rpartition("/")
            mtime_ns = _octal(header[136:148]) * 1_000_000_000
            batch.append((folder, base, _octal(header[100:108]), data, mtime_ns))
            size += length
            if size >= _BATCH_BYTES or len(batch) >= _BATCH_FILES:
                send(feeds[turn], batch)
                turn = (turn + 1) % len(feeds)
                batch, size = [], 0
    if batch:
        send(feeds[turn], batch)


def _cpu() -> float:
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def floor_restore(archive: Path, into: Path, children: int) -> tuple[float, float]:
    """The bare restore of *archive* into *into* (made here): its wall and CPU seconds.

    The CPU: this process's, its writers' and ``zstd``'s.
    """
    into.mkdir(parents=True)
    started = time.monotonic()
    cpu = _cpu()
    root = os.open(into, _DIR)
    pids, feeds, outs = zip(
        *forked(children, lambda feed, _out, parent: _writer(feed, root, parent), root),
        strict=True,
    )
    with subprocess.Popen(["zstd", "-dcq", str(archive)], stdout=subprocess.PIPE) as zstd:
        assert zstd.stdout is not None
        _feed(_Stream(zstd.stdout.fileno()), into, feeds)
    for feed in feeds:
        os.close(feed)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit("a writer failed")
    for fd in (root, *outs):
        os.close(fd)
    if zstd.returncode:
        raise SystemExit("zstd -dc failed")
    return time.monotonic() - started, _cpu() - cpu


def manifest_cpu(manifest: Path) -> float:
    """The CPU seconds of the least reading of a manifest copy: ``zstd -dc``, then one ``json.loads``.

    (Cellvault parses it as a stream, entry by entry, and checks each entry;
    the whole text parsed at once by the C parser is the least any reader of
    it spends.)
    """
    cpu = _cpu()
    text = subprocess.run(["zstd", "-dcq", str(manifest)], check=True, capture_output=True).stdout
    entries = len(json.loads(text)["entries"])
    spent = _cpu() - cpu
    print(
        f"manifest copy: {entries:,} entries, {len(text) / 2**20:.0f} MiB of JSON", file=sys.stderr
    )
    return spent


def tar_restore(archive: Path, into: Path) -> float:
    """``zstd -dc < archive | tar -x`` into *into* (made here): its wall seconds."""
    into.mkdir(parents=True)
    started = time.monotonic()
    with open(archive, "rb") as stored:
        zstd = subprocess.Popen(["zstd", "-dcq"], stdin=stored, stdout=subprocess.PIPE)
        assert zstd.stdout is not None
        tar = subprocess.run(["tar", "-C", str(into), "-xf", "-"], stdin=zstd.stdout, check=False)
        zstd.stdout.close()
        if zstd.wait() or tar.returncode:
            raise SystemExit("zstd -dc | tar -x failed")
    return time.monotonic() - started


def started(command: Sequence[str], rounds: int) -> tuple[float, float]:
    """The median wall and CPU seconds of *rounds* runs of *command* (an interpreter's start)."""
    walls, cpus = [], []
    for _ in range(rounds):
        begun, cpu = time.monotonic(), _cpu()
        subprocess.run(command, check=True)
        walls.append(time.monotonic() - begun)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def cellvault_restore(into: Path) -> float:
    """``python -m cellvault restore --into <into>`` (the settings from the environment)."""
    into.mkdir(parents=True)
    begun = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "cellvault", "restore", "--into", str(into / "cv")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - begun


def _manifest_of(archive: Path) -> Path:
    return archive.with_name(archive.name.removesuffix(".tar.zst") + ".manifest.json.zst")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, required=True, help="a .tar.zst of cellvault's")
    parser.add_argument("--into", type=Path, required=True, help="a scratch folder (deleted)")
    parser.add_argument("--children", type=int, default=2, help="forked writers")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--with-cellvault",
        action="store_true",
        help="time `cellvault restore --into` in each round too (BACKUP_* from the environment)",
    )
    parser.add_argument(
        "--manifest", type=Path, help="its manifest copy (default: beside the archive)"
    )
    args = parser.parse_args(argv)
    cores = len(os.sched_getaffinity(0))
    floor_cpus: list[float] = []

    def floor_run() -> float:
        wall, cpu = floor_restore(args.archive, args.into, args.children)
        floor_cpus.append(cpu)
        return wall

    runs: dict[str, Callable[[], float]] = {
        "floor": floor_run,
        "tar": lambda: tar_restore(args.archive, args.into),
    }
    if args.with_cellvault:
        runs["cellvault"] = lambda: cellvault_restore(args.into)

    def emptied() -> None:
        shutil.rmtree(args.into, ignore_errors=True)
        subprocess.run(["sync"], check=True)

    walls = alternate(runs, args.pairs, emptied)
    shutil.rmtree(args.into, ignore_errors=True)
    bare = started([sys.executable, "-c", "pass"], 5)
    cli = started([sys.executable, "-c", "import cellvault.cli"], 5)
    print(f"medians of {args.pairs} alternating rounds, {args.children} writers")
    tar = against(
        walls,
        "tar",
        {
            "tar": "zstd -dc | tar -x",
            "floor": "bare restore in Python",
            "cellvault": "cellvault restore",
        },
    )
    floor = statistics.median(walls["floor"])
    print(f"2x of tar -x: {2 * tar:.2f} s; left beyond the bare restore: {2 * tar - floor:.2f} s")
    print(f"python -c pass: {bare[0]:.2f} s; import cellvault.cli: {cli[0]:.2f} s (medians of 5)")
    # The least CPU a restore that checks its files against the manifest spends, on
    # every core at once: the bare restore, the manifest read, the command's start.
    manifest = manifest_cpu(args.manifest or _manifest_of(args.archive))
    spent = statistics.median(floor_cpus)
    least = (spent + manifest + cli[1]) / cores
    print(
        f"CPU: bare restore {spent:.2f} s, manifest copy {manifest:.2f} s, "
        f"cellvault's start {cli[1]:.2f} s: {least:.2f} s at best on {cores} cores, "
        f"{least / tar:.2f}x zstd -dc | tar -x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
