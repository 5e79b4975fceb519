"""stop_processes_under, in a PID namespace of its own: what it stops, what it leaves.

Each test forks; the child enters new PID and mount namespaces, forks
again (the grandchild is pid 1 there), mounts a fresh ``/proc`` and runs
the scenario: every process it can see or signal is one the scenario
started. A wrong match (every process of this user, or of the machine)
stops nothing outside, which makes these tests safe to run against
mutants of the code (``nox -s mutate``, group ``strays``). Root only.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellvault import strays
from cellvault.strays import stop_processes_under
from tests.system_tools import needs_root

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

PYTHON_SLEEP = "import sys, time; print('ready', flush=True); time.sleep(60)"
IGNORES_TERM = (
    "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)
HOLDS_SOCKET = (
    "import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); "
    "s.listen(); print('ready', flush=True); time.sleep(60)"
)


def _in_namespace(tmp_path: Path, scenario: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run *scenario(tmp_path)* as pid 1 of a new PID namespace with its own /proc; its result."""
    needs_root("make PID and mount namespaces")
    out = tmp_path / "result.json"
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        status = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWPID | CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare")
            if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
                raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
            init = os.fork()
            if init == 0:
                code = 1
                try:
                    if libc.mount(b"proc", b"/proc", b"proc", 0, None) != 0:
                        raise OSError(ctypes.get_errno(), "mount proc")
                    result = scenario(tmp_path)
                    out.write_text(json.dumps(result))
                    code = 0
                except BaseException as exc:
                    out.write_text(json.dumps({"error": repr(exc)}))
                finally:
                    os._exit(code)
            _, waited = os.waitpid(init, 0)
            status = os.waitstatus_to_exitcode(waited)
        finally:
            os._exit(status)
    _, waited = os.waitpid(child, 0)
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    assert os.waitstatus_to_exitcode(waited) == 0, result
    return result


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start *argv* (its argv[0] is ``stray``, its program name stays Python's) in *cwd*."""
    process = subprocess.Popen(
        ["stray", *argv[1:]],
        executable=argv[0],
        cwd=cwd,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"
    return process


class _Events(logging.Handler):
    """Collects the structured events logged (each a dict: event, pid, program, ...)."""

    def __init__(self, into: list[dict[str, Any]]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            self.into.append(
                {k: v for k, v in record.msg.items() if k in ("event", "pid", "program")}
            )


def _stops_what_runs_under_the_tree(tmp_path: Path) -> dict[str, Any]:
    tree = tmp_path / "scratch"
    (tree / "data").mkdir(parents=True)
    beside = tmp_path / "scratch-other"  # a name that starts like the tree's, not under it
    beside.mkdir()
    named = tmp_path / "cv-redis-named"  # a scratch server's socket folder, named in its argv
    named.mkdir()
    held = tmp_path / "cv-redis-held"  # one it holds open without naming it
    held.mkdir()
    kept = tmp_path / "kept"  # a socket folder not a scratch server's
    kept.mkdir()
    os.chdir(tree)  # this process works in the tree too: it never stops itself
    python = sys.executable
    started = {
        "cwd": _start([python, "-c", PYTHON_SLEEP], tree / "data"),
        "argv": _start([python, "-c", PYTHON_SLEEP, str(tree / "dump.rdb")], tmp_path),
        "tree itself": _start([python, "-c", PYTHON_SLEEP, str(tree)], tmp_path),
        "ignores TERM": _start([python, "-c", IGNORES_TERM], tree),
        "named socket": _start(
            [python, "-c", PYTHON_SLEEP, "--unixsocket", str(named / "redis.sock")], tree
        ),
        "held socket": _start([python, "-c", HOLDS_SOCKET, str(held / "redis.sock")], tree),
        "other socket": _start([python, "-c", HOLDS_SOCKET, str(kept / "app.sock")], tree),
        "gone socket": _start(  # its socket folder is gone already
            [python, "-c", PYTHON_SLEEP, "--unixsocket", str(tmp_path / "cv-redis-gone" / "s")],
            tree,
        ),
    }
    outside = {
        "beside": _start([python, "-c", PYTHON_SLEEP, str(beside / "x")], beside),
        "elsewhere": _start([python, "-c", PYTHON_SLEEP], tmp_path),
    }
    names = {p.pid: Path(f"/proc/{p.pid}/comm").read_text().strip() for p in started.values()}
    nothing = stop_processes_under([])
    events: list[dict[str, Any]] = []
    handler = _Events(events)
    logger = logging.getLogger("cellvault")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    began = time.monotonic()
    stopped = stop_processes_under([tree], wait=1.0)
    took = time.monotonic() - began
    logger.removeHandler(handler)
    codes = {name: p.wait(timeout=10) for name, p in started.items()}
    alive = {name: p.poll() is None for name, p in outside.items()}
    for p in outside.values():
        p.kill()
        p.wait()
    return {
        "nothing": nothing,
        "stopped": stopped,
        "expected": [f"process {pid} ({name})" for pid, name in names.items()],
        "pids": {name: p.pid for name, p in started.items()},
        "names": names,
        "events": events,
        "codes": codes,
        "alive": alive,
        "took": took,
        "folders": sorted(p.name for p in tmp_path.iterdir()),
        "pid": os.getpid(),
    }


def test_the_processes_under_a_tree_are_stopped_and_no_other(tmp_path: Path) -> None:
    result = _in_namespace(tmp_path, _stops_what_runs_under_the_tree)
    assert result["pid"] == 1  # the scenario ran alone in its namespace
    assert result["nothing"] == []
    assert sorted(result["stopped"]) == sorted(result["expected"])
    assert len(result["stopped"]) == 8
    # Named by the program's name (/proc/PID/comm), not by a command line it may rewrite.
    assert set(result["names"].values()) == {Path(sys.executable).name[:15]}
    assert sorted(result["events"], key=lambda e: e["pid"]) == [
        {"event": "restore.stray_stopped", "pid": int(pid), "program": name}
        for pid, name in sorted(result["names"].items(), key=lambda kv: int(kv[0]))
    ]
    term, kill = -signal.SIGTERM, -signal.SIGKILL
    assert result["codes"] == {
        "cwd": term,
        "argv": term,
        "tree itself": term,
        "ignores TERM": kill,  # SIGKILL once the wait was over
        "named socket": term,
        "held socket": term,
        "other socket": term,
        "gone socket": term,
    }
    assert 1.0 <= result["took"] < 10  # it waited for the one that ignored SIGTERM
    assert result["alive"] == {"beside": True, "elsewhere": True}
    # The scratch servers' socket folders went with them; any other stays.
    assert "cv-redis-named" not in result["folders"]
    assert "cv-redis-held" not in result["folders"]
    assert {"kept", "scratch", "scratch-other"} <= set(result["folders"])


def _waits_only_as_long_as_needed(tmp_path: Path) -> dict[str, Any]:
    tree = tmp_path / "scratch"
    tree.mkdir()
    quick = _start([sys.executable, "-c", PYTHON_SLEEP], tree)
    name = Path(f"/proc/{quick.pid}/comm").read_text().strip()
    began = time.monotonic()
    stopped = stop_processes_under([tree], wait=30.0)
    took = time.monotonic() - began
    code = quick.wait(timeout=10)
    return {
        "stopped": stopped,
        "code": code,
        "took": took,
        "expected": f"process {quick.pid} ({name})",
    }


def test_a_process_that_stops_on_sigterm_is_not_waited_for(tmp_path: Path) -> None:
    result = _in_namespace(tmp_path, _waits_only_as_long_as_needed)
    assert result["stopped"] == [result["expected"]]
    assert result["code"] == -signal.SIGTERM
    assert result["took"] < 10


def test_the_helpers_read_proc(tmp_path: Path) -> None:
    """The /proc readers on this process and on a pid that does not exist."""
    me = os.getpid()
    assert strays._argv(me) == sys.orig_argv
    assert strays._own(me) and strays._cwd(me) == os.getcwd()
    assert strays._comm(me) == Path(f"/proc/{me}/comm").read_text().strip()
    assert not strays._gone(me) and not strays._zombie(me)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "mine.sock"))
        assert tmp_path / "mine.sock" in strays._unix_sockets(me)
    gone = 2**22 + 1  # above any pid_max: no such process
    assert strays._argv(gone) == [] and strays._cwd(gone) == "" and strays._comm(gone) == ""
    assert not strays._own(gone) and strays._gone(gone) and strays._zombie(gone)
    assert strays._unix_sockets(gone) == []
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not strays._zombie(zombie.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert strays._zombie(zombie.pid) and strays._gone(zombie.pid)  # exited, not yet reaped
    zombie.wait()
