"""Stopping what a killed run left running: the processes working in its scratch trees.

A restore or a drill killed with SIGKILL leaves the helpers it started in
sessions of their own (a scratch ``redis-server`` working in its ``--dir``)
running; the next run that settles the dead one's staging or scratch tree
stops them first (:mod:`cellvault.journal`, :mod:`cellvault.ops.drill`).
Only this user's processes whose working directory or command line is under
one of the trees are stopped, never this process.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from .log import get_logger

__all__ = ["stop_processes_under"]

log = get_logger(__name__)


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [os.fsdecode(a) for a in raw.split(b"\0") if a]


def _own(pid: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid == os.getuid()
    except OSError:
        return False


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    """The program's name (a command line may be rewritten: ``redis-server *:0``)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _unix_sockets(pid: int) -> list[Path]:
    """The paths of the Unix sockets *pid* holds open (a scratch server's listening socket)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[6] in inodes:
            out.append(Path(fields[7]))
    return out


def _processes_under(roots: list[str]) -> dict[int, list[str]]:
    """This user's processes whose command line or working directory is under one of *roots*.

    A ``redis-server`` rewrites its command line (``redis-server *:0``) but
    works in its ``--dir``.
    """
    found: dict[int, list[str]] = {}

    def under(path: str) -> bool:
        return any(path == r or path.startswith(r + "/") for r in roots)

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        argv = _argv(pid)
        if argv and (under(_cwd(pid)) or any(under(a) for a in argv)) and _own(pid):
            found[pid] = argv
    return found


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _zombie(pid)


def stop_processes_under(trees: Iterable[Path], wait: float = 5.0) -> list[str]:
    """Stop the processes of this user that run in, or name, a path under one of *trees*.

    A run killed with SIGKILL leaves the helpers it started in sessions of
    their own running (a scratch ``redis-server`` working in its ``--dir``,
    in the run's scratch tree). Each gets SIGTERM, then SIGKILL after *wait*
    seconds; the private folder of its Unix socket (``cv-redis-*``) is
    removed with it.
    Returns one description per process stopped.
    """
    roots = [str(t) for t in trees]
    if not roots or not Path("/proc").is_dir():
        return []
    found = _processes_under(roots)
    sockets = {pid: _unix_sockets(pid) for pid in found}
    names = {pid: _comm(pid) or Path(argv[0]).name for pid, argv in found.items()}
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    for pid in found:
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    out = []
    for pid, argv in found.items():
        named = [Path(v) for f, v in itertools.pairwise(argv) if f == "--unixsocket"]
        for sock in [*named, *sockets[pid]]:
            if sock.parent.name.startswith("cv-redis-"):  # the scratch server's private folder
                shutil.rmtree(sock.parent, ignore_errors=True)
        out.append(f"process {pid} ({names[pid]})")
        log.warning("restore.stray_stopped", pid=pid, program=names[pid])
    return out


def _zombie(pid: int) -> bool:
    try:
        return ") Z" in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
