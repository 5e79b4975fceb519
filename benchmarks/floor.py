"""The least CPU a backup written in Python spends on a tree, beside ``tar -c | zstd -T0``'s.

A full backup must, per regular file, open it (no link followed), ``fstat``
it, read it, list its extended attributes, close it and hash it (the
manifest's sha256), and it must compress the stream. This script times only
that: *children* forked processes (as the backup's readers) each take every
n-th file of the tree and do those six calls from a plain Python loop, with
nothing else (no tar header, no manifest entry, no pipe); then ``tar -c |
zstd -T0 -q`` of the same tree, whose compressor's CPU seconds stand for the
compression any tool must do. Prints the CPU seconds of each part and the
wall time the sum needs at best on this machine's cores, next to tar's wall
time: a lower bound for the ratio the many-files benchmark measures
(``benchmarks/many_files.py --backup-pairs``), for a packer whose work per file
is Python code. Warm cache: run it after a backup of the same tree.

    python benchmarks/floor.py --tree /scratch/mf/cells/crm
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def files_of(tree: Path) -> list[str]:
    """The regular files under *tree*, by path, in walk order."""
    found: list[str] = []
    for folder, _, names in os.walk(tree):
        found.extend(os.path.join(folder, name) for name in sorted(names))
    return found


def read_all(paths: Sequence[str]) -> int:
    """Open, fstat, read, list the attributes of, close and hash each file; their bytes."""
    opened, fstat, read, close = os.open, os.fstat, os.read, os.close
    listxattr, sha256 = os.listxattr, hashlib.sha256
    total = 0
    for path in paths:
        fd = opened(path, _FLAGS)
        size = fstat(fd).st_size
        data = read(fd, size)
        listxattr(fd)
        close(fd)
        sha256(data).hexdigest()
        total += len(data)
    return total


def children_cpu(paths: list[str], children: int) -> tuple[float, float]:
    """:func:`read_all` of *paths* shared by *children* forked processes: their CPU and wall seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    pids = []
    for k in range(children):
        pid = os.fork()
        if pid == 0:  # the child: its share, then gone
            code = 1
            try:
                read_all(paths[k::children])
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit("a child failed to read its files")
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def tar_zstd(tree: Path) -> tuple[float, float]:
    """``tar -c | zstd -T0 -q > /dev/null`` of *tree*: wall seconds, and zstd's CPU seconds."""
    started = time.monotonic()
    with subprocess.Popen(
        ["tar", "-C", str(tree.parent), "-c", tree.name], stdout=subprocess.PIPE
    ) as tar:
        zstd = subprocess.Popen(
            ["zstd", "-T0", "-q", "-c"], stdin=tar.stdout, stdout=subprocess.DEVNULL
        )
        assert tar.stdout is not None
        tar.stdout.close()
        _, status, usage = os.wait4(zstd.pid, 0)
        zstd.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if tar.returncode or zstd.returncode:
        raise SystemExit("tar | zstd failed")
    return wall, usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="the cell folder to read")
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    paths = files_of(args.tree)
    cores = len(os.sched_getaffinity(0))
    read_all(paths)  # the cache warm
    reads: list[float] = []
    tars: list[float] = []
    zstds: list[float] = []
    for _ in range(args.rounds):
        reads.append(children_cpu(paths, args.children)[0])
        wall, cpu = tar_zstd(args.tree)
        tars.append(wall)
        zstds.append(cpu)
    read_cpu, tar_wall, zstd_cpu = (sorted(x)[len(x) // 2] for x in (reads, tars, zstds))
    least = (read_cpu + zstd_cpu) / cores
    print(f"{len(paths):,} files, {cores} cores; medians of {args.rounds} rounds")
    print(f"per-file calls and sha256 in Python ({args.children} processes): {read_cpu:.2f} s CPU")
    print(f"zstd -T0 of the tar stream: {zstd_cpu:.2f} s CPU")
    print(f"their sum on {cores} cores, at best: {least:.2f} s wall")
    print(f"tar -c | zstd -T0: {tar_wall:.2f} s wall")
    print(f"lower bound of the backup's ratio to tar | zstd: {least / tar_wall:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
