"""Leases: one writer per cell and target, takeover of dead and expired holders, renewal."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cellvault import LocalTarget, LockHeld, TargetSpec, hookimpl
from cellvault.errors import TargetError
from cellvault.lock import Lease, holder_is_stale
from cellvault.readlease import ReadLease, read_holds
from cellvault.targets.base import ObjectInfo
from tests.helpers import SAMPLE, MemTarget, killed_not_reaped, make_vault, snapshot, write_tree


@pytest.fixture(params=["local", "mem"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> LocalTarget | MemTarget:
    if request.param == "local":
        return LocalTarget(TargetSpec("local", str(tmp_path / "backup")))
    return MemTarget(TargetSpec("mem", f"mem://locks-{tmp_path.name}-{time.monotonic_ns()}"))


def lock_body(target: LocalTarget | MemTarget, cell: str = "crm") -> dict[str, object] | None:
    try:
        return json.loads(target.read_bytes(f".locks/{cell}.lock"))  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def write_lock(target: LocalTarget | MemTarget, body: dict[str, object], cell: str = "crm") -> None:
    target.put_bytes(f".locks/{cell}.lock", json.dumps(body).encode())


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The fields of each log event *name* (cellvault logs structured events)."""
    return [
        {k: v for k, v in r.msg.items() if k not in ("event", "logger", "level", "timestamp")}
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == name
    ]


def iso(delta: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=delta)).isoformat()


def dead_pid() -> int:
    """A pid no process has: above the kernel's limit."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1000
    except OSError:
        return 2**22 + 1000


# -- the lease itself ----------------------------------------------------------------------


def test_second_lease_is_refused_naming_the_holder(target: LocalTarget | MemTarget) -> None:
    first = Lease.acquire(target, "crm", "backup run abc")
    try:
        with pytest.raises(LockHeld) as info:
            Lease.acquire(target, "crm", "backup run def")
        message = str(info.value)
        assert "cell crm" in message and target.name in message
        assert "backup run abc" in message
        assert f"host {socket.gethostname()}" in message
        assert f"pid {os.getpid()}" in message
        assert f"since {first.since.isoformat()}" in message
        assert info.value.holder["pid"] == os.getpid()
        assert info.value.holder["token"] == first.token
        assert info.value.hint and "wait" in info.value.hint
        # Other cells are independent.
        with Lease.acquire(target, "billing", "backup run def"):
            pass
    finally:
        first.release()
    assert lock_body(target) is None
    # Once released, it can be taken again.
    Lease.acquire(target, "crm", "backup run ghi").release()


def test_lease_body(target: LocalTarget | MemTarget) -> None:
    with Lease.acquire(target, "crm", "restore", ttl=60) as lease:
        body = lock_body(target)
        assert body is not None
        assert body["host"] == socket.gethostname()
        assert body["pid"] == os.getpid()
        assert body["purpose"] == "restore"
        assert body["token"] == lease.token
        expires = dt.datetime.fromisoformat(str(body["expires"]))
        assert 50 < (expires - dt.datetime.now(dt.UTC)).total_seconds() <= 60
    assert lock_body(target) is None


def test_lease_of_a_dead_process_on_this_host_is_taken_over(
    target: LocalTarget | MemTarget,
) -> None:
    write_lock(
        target,
        {
            "host": socket.gethostname(),
            "pid": dead_pid(),
            "purpose": "backup run dead",
            "since": iso(-60),
            "expires": iso(3600),
            "token": "dead",
        },
    )
    with Lease.acquire(target, "crm", "backup run new") as lease:
        assert lock_body(target)["token"] == lease.token  # type: ignore[index]


def test_lease_of_a_dead_process_without_expiry_is_taken_over(
    target: LocalTarget | MemTarget,
) -> None:
    write_lock(target, {"host": socket.gethostname(), "pid": dead_pid(), "purpose": "hand-written"})
    with Lease.acquire(target, "crm", "backup run new") as lease:
        assert lock_body(target)["token"] == lease.token  # type: ignore[index]


def test_a_finished_process_leaves_a_stale_lease(target: LocalTarget | MemTarget) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    write_lock(
        target,
        {
            "host": socket.gethostname(),
            "pid": int(proc.stdout),
            "since": iso(-1),
            "expires": iso(3600),
            "token": "gone",
        },
    )
    Lease.acquire(target, "crm", "backup").release()


def test_live_holders_are_respected(target: LocalTarget | MemTarget) -> None:
    # A live process of this host with time left: a child of ours (not our parent, which
    # a mutant of the liveness check, sending a real signal, would stop).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(
            target,
            {
                "host": socket.gethostname(),
                "pid": other.pid,
                "since": iso(-5),
                "expires": iso(3600),
                "token": "other",
            },
        )
        with pytest.raises(LockHeld, match=f"pid {other.pid}"):
            Lease.acquire(target, "crm", "backup")
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=0.5)  # asked whether it runs, not signalled
    finally:
        other.kill()
        other.wait()
    # Another host's pid means nothing here: only its expiry counts.
    write_lock(
        target,
        {
            "host": "some-other-host",
            "pid": dead_pid(),
            "since": iso(-5),
            "expires": iso(3600),
            "token": "remote",
        },
    )
    with pytest.raises(LockHeld, match="host some-other-host"):
        Lease.acquire(target, "crm", "backup")
    assert lock_body(target)["token"] == "remote"  # type: ignore[index]


def test_expired_lease_is_taken_over(target: LocalTarget | MemTarget) -> None:
    write_lock(
        target,
        {
            "host": "some-other-host",
            "pid": 1234,
            "since": iso(-600),
            "expires": iso(-1),
            "token": "expired",
        },
    )
    with Lease.acquire(target, "crm", "backup") as lease:
        assert lock_body(target)["token"] == lease.token  # type: ignore[index]


def test_unreadable_lease_is_taken_over(target: LocalTarget | MemTarget) -> None:
    target.put_bytes(".locks/crm.lock", b"\x00garbage{")
    Lease.acquire(target, "crm", "backup").release()
    target.put_bytes(".locks/crm.lock", b"[1, 2]")
    Lease.acquire(target, "crm", "backup").release()


def test_renewal_keeps_a_lease_alive_past_its_ttl(target: LocalTarget | MemTarget) -> None:
    lease = Lease.acquire(target, "crm", "long backup", ttl=0.3)
    try:
        first_expiry = lock_body(target)["expires"]  # type: ignore[index]
        time.sleep(0.75)  # more than two ttls
        body = lock_body(target)
        assert body is not None and body["token"] == lease.token
        assert body["expires"] != first_expiry
        assert dt.datetime.fromisoformat(str(body["expires"])) > dt.datetime.now(dt.UTC)
        with pytest.raises(LockHeld):
            Lease.acquire(target, "crm", "another run", ttl=0.3)
    finally:
        lease.release()
    assert lock_body(target) is None


def test_without_renewal_a_lease_expires(target: LocalTarget | MemTarget) -> None:
    crashed = Lease.acquire(target, "crm", "crashed run", ttl=0.3)
    # Its holder stops renewing, as a killed run would (same pid here: only expiry helps).
    crashed._stop.set()
    assert crashed._thread is not None
    crashed._thread.join(timeout=5)
    time.sleep(0.4)
    with Lease.acquire(target, "crm", "next run") as lease:
        assert lock_body(target)["token"] == lease.token  # type: ignore[index]


def test_release_deletes_only_our_own_lease(target: LocalTarget | MemTarget) -> None:
    lease = Lease.acquire(target, "crm", "slow run", ttl=60)
    # Meanwhile the lease was judged stale and taken by another run.
    theirs = {"host": "other", "pid": 1, "since": iso(0), "expires": iso(3600), "token": "theirs"}
    write_lock(target, theirs)
    lease.release()
    assert lock_body(target) == theirs
    lease.release()  # twice is harmless
    assert lock_body(target) == theirs


def test_renewal_stops_when_the_lease_was_taken(
    target: LocalTarget | MemTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="cellvault")
    lease = Lease.acquire(target, "crm", "slow run", ttl=0.3)
    theirs = {"host": "other", "pid": 1, "since": iso(0), "expires": iso(3600), "token": "theirs"}
    assert lease._thread is not None
    # A thread of its own, which never keeps the process alive.
    assert (lease._thread.name, lease._thread.daemon) == ("lease-crm", True)
    for _ in range(5):
        write_lock(target, theirs)
        lease._thread.join(timeout=1)  # it sees another holder and stops renewing
        if not lease._thread.is_alive():
            break
    assert not lease._thread.is_alive()
    assert events(caplog, "lock.lost") == [{"target": target.name, "cell": "crm"}]
    time.sleep(0.25)
    assert lock_body(target) == theirs
    lease.release()
    assert lock_body(target) == theirs


def test_a_lease_being_taken_by_another_thread_is_not_stale(tmp_path: Path) -> None:
    """Between its create and the start of its renewal, a lease of ours is still held."""
    created = threading.Event()
    go_on = threading.Event()

    class SlowTarget(MemTarget):
        def create_exclusive(self, key: str, data: bytes) -> bool:
            done = super().create_exclusive(key, data)
            if done and threading.current_thread().name == "slow":
                created.set()
                assert go_on.wait(30)
            return done

    target = SlowTarget(TargetSpec("mem", f"mem://slow-{time.monotonic_ns()}"))
    leases: list[Lease] = []
    thread = threading.Thread(
        target=lambda: leases.append(Lease.acquire(target, "crm", "first")), name="slow"
    )
    thread.start()
    try:
        assert created.wait(30)
        with pytest.raises(LockHeld, match="locked by first"):
            Lease.acquire(target, "crm", "second")
    finally:
        go_on.set()
        thread.join(30)
    (lease,) = leases
    assert lock_body(target)["token"] == lease.token  # type: ignore[index]
    lease.release()
    assert lock_body(target) is None


# -- backups competing for a cell --------------------------------------------------------------


def test_two_vaults_in_threads_never_interleave(
    cells_root: Path, backup_dir: Path, tmp_path: Path
) -> None:
    crm = write_tree(cells_root / "crm", SAMPLE)
    holding = threading.Event()
    release = threading.Event()

    class HoldTheLock:
        @hookimpl
        def cellvault_before_backup(self, cell, archive):  # type: ignore[no-untyped-def]
            holding.set()
            assert release.wait(30)

    first = make_vault(backup_dir, {"crm": [crm]}, plugins=[HoldTheLock()])
    second = make_vault(backup_dir, {"crm": [crm]})
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault("first", first.backup()))
    thread.start()
    try:
        assert holding.wait(30)
        refused = second.backup()
    finally:
        release.set()
        thread.join(30)
    cell = refused.cells[0]
    assert not refused.ok and cell.stage == "lock"
    assert "locked by backup run" in (cell.error or "")
    assert f"pid {os.getpid()}" in (cell.error or "")
    assert cell.targets[0].stage == "lock"
    assert results["first"].ok
    (archive,) = first.list()
    assert archive.id == results["first"].cells[0].archive
    assert first.verify().ok
    # The lock is free again: a later run goes through.
    later = second.backup()
    assert later.ok and later.cells[0].archive != archive.id


def test_a_run_that_waited_never_overwrites_a_committed_archive(
    cells_root: Path, backup_dir: Path, tmp_path: Path
) -> None:
    """Both runs chose the same stamp; the one that got the lock second must not store."""
    from tests.helpers import times_clock, utc

    crm = write_tree(cells_root / "crm", SAMPLE)
    when = utc(2025, 1, 1, 2)
    first = make_vault(backup_dir, {"crm": [crm]}, clock=times_clock([when]))
    ran: list[str] = []

    def run_first_meanwhile(event):  # type: ignore[no-untyped-def]
        if event.name == "backup.started" and not ran:
            ran.append(first.backup().cells[0].archive or "")

    second = make_vault(
        backup_dir, {"crm": [crm]}, clock=times_clock([when]), on_event=run_first_meanwhile
    )
    report = second.backup(kind="incremental")
    assert ran == ["cell_crm_20250101_020000"]
    cell = report.cells[0]
    assert not cell.ok and cell.stage == "lock"
    assert "another run committed archive cell_crm_20250101_020000" in (cell.error or "")
    # The first run's archive is whole and restorable.
    (info,) = first.list()
    assert info.kind == "full"
    assert first.verify().ok
    assert first.restore("latest", into=tmp_path / "out").ok
    assert snapshot(tmp_path / "out" / "crm" / "crm") == snapshot(crm)


def test_racing_threads_commit_only_whole_archives(
    cells_root: Path, backup_dir: Path, tmp_path: Path
) -> None:
    crm = write_tree(cells_root / "crm", {**SAMPLE, "big.bin": os.urandom(1 << 20)})
    vaults = [make_vault(backup_dir, {"crm": [crm]}) for _ in range(3)]
    barrier = threading.Barrier(len(vaults))
    reports = [None] * len(vaults)

    def run(i: int) -> None:
        barrier.wait()
        reports[i] = vaults[i].backup()  # type: ignore[call-overload]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(vaults))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    cells = [r.cells[0] for r in reports]  # type: ignore[union-attr]
    ok = [c for c in cells if c.ok]
    assert ok, [c.error for c in cells]
    for c in cells:
        if not c.ok:
            assert c.stage == "lock"
            assert "locked by" in (c.error or "") or "another run committed" in (c.error or "")
    # Each successful run has its own archive, and every committed archive is whole.
    assert len({c.archive for c in ok}) == len(ok)
    assert sorted(a.id for a in vaults[0].list()) == sorted(c.archive for c in ok)  # type: ignore[misc]
    verify = vaults[0].verify(all_archives=True)
    assert verify.ok and len(verify.results) == len(ok)
    assert not list((backup_dir / ".locks").iterdir())


CHILD = """
    import sys, time
    from pathlib import Path
    from cellvault import Cell, Config, Vault, hookimpl

    backup_dir, crm, markers = map(Path, sys.argv[1:4])

    class Hold:
        @hookimpl
        def cellvault_before_backup(self, cell, archive):
            (markers / "locked").write_text(archive)
            deadline = time.monotonic() + 30
            while not (markers / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.02)

    vault = Vault(Config(backup_dir=backup_dir, cells=[Cell("crm", [crm])]), plugins=[Hold()],
                  load_entry_points=False)
    report = vault.backup()
    print(report.cells[0].archive if report.ok else report.cells[0].error)
    sys.exit(0 if report.ok else 1)
"""


def test_two_processes_never_interleave(cells_root: Path, backup_dir: Path, tmp_path: Path) -> None:
    crm = write_tree(cells_root / "crm", SAMPLE)
    markers = tmp_path / "markers"
    markers.mkdir()
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD))
    env = {**os.environ, "CELLVAULT_LOAD_PLUGINS": ""}
    child = subprocess.Popen(
        [sys.executable, str(script), str(backup_dir), str(crm), str(markers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while not (markers / "locked").exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        vault = make_vault(backup_dir, {"crm": [crm]})
        refused = vault.backup()
        cell = refused.cells[0]
        assert not cell.ok and cell.stage == "lock"
        assert f"pid {child.pid}" in (cell.error or "")
        assert f"host {socket.gethostname()}" in (cell.error or "")
    finally:
        (markers / "go").write_text("")
        out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "Traceback" not in err
    archive = out.strip()
    assert [a.id for a in vault.list()] == [archive]
    assert vault.verify().ok
    # The child is gone and released its lease: the next run goes through.
    again = vault.backup()
    assert again.ok and again.cells[0].archive != archive


# -- atomic takeover (issue 18) ------------------------------------------------------------


class SlowLocalTarget(LocalTarget):
    """A local target whose every primitive is slowed by a random latency (a far store)."""

    def __init__(self, spec: TargetSpec, seed: int) -> None:
        super().__init__(spec)
        import random

        self.rng = random.Random(seed)

    def _lag(self) -> None:
        time.sleep(self.rng.uniform(0, 0.06))

    def read_bytes(self, key: str) -> bytes:
        self._lag()
        data = super().read_bytes(key)
        self._lag()
        return data

    def create_exclusive(self, key: str, data: bytes) -> bool:
        self._lag()
        return super().create_exclusive(key, data)

    def delete(self, key: str) -> None:
        self._lag()
        super().delete(key)


@pytest.mark.parametrize("racers", [2, 4])
def test_a_stale_lease_is_taken_over_by_exactly_one_run_each_round(
    tmp_path: Path, racers: int
) -> None:
    root = tmp_path / "backup"
    plain = LocalTarget(TargetSpec("local", str(root)))
    for round_ in range(6):
        write_lock(
            plain,
            {"host": "elsewhere", "pid": 1, "purpose": f"stale {round_}", "expires": iso(-60)},
        )
        barrier = threading.Barrier(racers)
        won: list[Lease] = []
        lost: list[BaseException] = []

        def race(
            seed: int,
            barrier: threading.Barrier = barrier,
            won: list[Lease] = won,
            lost: list[BaseException] = lost,
        ) -> None:
            target = SlowLocalTarget(TargetSpec("local", str(root)), seed)
            barrier.wait()
            try:
                won.append(Lease.acquire(target, "crm", "racer", ttl=60))
            except LockHeld as exc:
                lost.append(exc)

        threads = [threading.Thread(target=race, args=(round_ * 10 + i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(won) == 1, f"round {round_}: {len(won)} winners"
        assert len(lost) == racers - 1
        assert lock_body(plain)["token"] == won[0].token  # type: ignore[index]
        won[0].release()
    # The claims are cleaned up with the leases that made them.
    assert [p.name for p in (root / ".locks").iterdir()] == []


def test_a_run_whose_lease_was_taken_commits_nothing(target: LocalTarget | MemTarget) -> None:
    lease = Lease.acquire(target, "crm", "slow run", ttl=60)
    write_lock(target, {"host": "elsewhere", "pid": 1, "token": "theirs", "expires": iso(60)})
    with pytest.raises(LockHeld, match="lease was lost"):
        lease.check()
    lease.release()


def test_a_committed_sidecar_records_the_lease_token(tmp_path: Path) -> None:
    cell = write_tree(tmp_path / "cells" / "crm", SAMPLE)
    vault = make_vault(tmp_path / "backup", {"crm": [cell]})
    assert vault.backup().ok
    (sidecar,) = vault.targets[0].archives("crm")
    assert sidecar.lease is not None and len(sidecar.lease) == 16


def stale_with_claim(target: LocalTarget | MemTarget, *, token: str, since: str) -> dict[str, Any]:
    """A stale lease of crm, and the claim of its takeover made by run *token* at *since*."""
    stale = {"host": "elsewhere", "pid": 1, "purpose": "stale", "expires": iso(-60)}
    write_lock(target, stale)
    probe = Lease(target, "crm", "probe", ttl=60)
    seen = probe._read()
    assert seen is not None
    target.put_bytes(probe._claim_key(seen), json.dumps({"token": token, "since": since}).encode())
    return stale


def test_a_claim_left_by_a_run_that_died_mid_takeover_does_not_block_the_cell(
    target: LocalTarget | MemTarget,
) -> None:
    # A run won the takeover's claim and was killed before it replaced the lease.
    stale_with_claim(target, token="dead", since=iso(-3600))
    lease = Lease.acquire(target, "crm", "next run", ttl=60)
    assert lock_body(target)["token"] == lease.token  # type: ignore[index]
    lease.release()
    assert lock_body(target) is None


def test_a_zombie_holder_is_not_alive() -> None:
    """A killed holder not yet reaped (a container without a reaping init) holds nothing."""
    from cellvault.lock import holder_is_stale

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    child = subprocess.Popen(["sleep", "30"])
    try:
        holder = {"host": socket.gethostname(), "pid": child.pid, "expires": later}
        assert not holder_is_stale(holder)  # alive and not expired
        child.kill()
        killed_not_reaped(child.pid)
        assert holder_is_stale(holder)
    finally:
        child.kill()
        child.wait()


def test_a_holder_of_another_user_is_alive() -> None:
    """kill(pid, 0) refused (EPERM): the process exists, so the lease is held."""
    from cellvault.lock import holder_is_stale

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    child = subprocess.Popen(["sleep", "30"])
    try:
        holder = {"host": socket.gethostname(), "pid": child.pid, "expires": later}
        assert not holder_is_stale(holder)  # our own child: kill(pid, 0) answers
        time.sleep(0.2)
        assert child.poll() is None  # asking sent it no signal that ends it (SIGHUP, SIGTERM)
        if os.geteuid() != 0:
            return
        probe = os.fork()
        if probe == 0:  # as another user: this root-owned child cannot be signalled
            try:
                os.setuid(65534)
                os._exit(0 if holder_is_stale(holder) is False else 1)
            finally:
                os._exit(2)
        _, status = os.waitpid(probe, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_zombie_whose_name_holds_parentheses_is_not_alive(tmp_path: Path) -> None:
    """The state follows the last ')' of /proc/<pid>/stat: a name may hold ') S ('."""
    from cellvault.lock import holder_is_stale

    odd = tmp_path / "a) S (b"
    odd.symlink_to(Path(sys.executable))
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        holder = {"host": socket.gethostname(), "pid": child.pid, "expires": later}
        deadline = time.monotonic() + 5
        name = ""
        while name != "(a) S (b)" and time.monotonic() < deadline:
            with open(f"/proc/{child.pid}/stat") as f:
                line = f.read()
            name = line[line.find("(") : line.rfind(")") + 1]
        assert name == "(a) S (b)"
        assert not holder_is_stale(holder)
        child.kill()
        state = ""
        while state != "Z" and time.monotonic() < deadline + 5:
            with open(f"/proc/{child.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        assert state == "Z"
        assert holder_is_stale(holder)
    finally:
        child.kill()
        child.wait()


def test_a_lease_lost_refuses_the_commit(target: LocalTarget | MemTarget) -> None:
    lease = Lease.acquire(target, "crm", "backup")
    try:
        lease.check()
        target.delete(lease.key)
        with pytest.raises(LockHeld) as info:
            lease.check()
        assert info.value.message == (
            f"cell crm on target {target.name}: the lease was lost (taken over after it "
            "expired); nothing is committed"
        )
        assert info.value.holder == {}
        theirs = {"host": "elsewhere", "pid": 7, "token": "theirs", "expires": iso(600)}
        write_lock(target, theirs)
        with pytest.raises(LockHeld) as info:
            lease.check()
        assert info.value.holder == theirs
    finally:
        lease.release()


class TaggedMem(MemTarget):
    """A store with a compare-and-swap (as S3's If-Match): a write's answer may be lost."""

    conditional_replace = True
    lose_answer = False
    race: bytes | None = None

    def read_tagged(self, key: str, limit: int) -> tuple[bytes, str]:
        raw = self.read_bounded(key, limit)
        return raw, hashlib.sha256(raw).hexdigest()

    def replace_if(self, key: str, data: bytes, tag: str) -> bool:
        if self.race is not None:  # another run wrote between our read and our write
            self.put_bytes(key, self.race)
            self.race = None
        with self._lock:
            current = self.data.get(key)
            if current is None or hashlib.sha256(current).hexdigest() != tag:
                return False
            self.data[key] = bytes(data)
        return not self.lose_answer

    def delete_if(self, key: str, tag: str) -> bool:
        with self._lock:
            current = self.data.get(key)
            if current is None or hashlib.sha256(current).hexdigest() != tag:
                return False
            del self.data[key]
        return True


def test_a_renewal_on_a_compare_and_swap_store(tmp_path: Path) -> None:
    target = TaggedMem(TargetSpec("tagged", f"mem://tagged-{tmp_path.name}-{time.monotonic_ns()}"))
    lease = Lease.acquire(target, "crm", "slow run", ttl=120)
    try:
        before = json.loads(target.read_bytes(lease.key))["expires"]
        time.sleep(0.01)
        assert lease._renew_once() is True
        assert json.loads(target.read_bytes(lease.key))["expires"] > before
        # The write went through, its answer was lost: still ours.
        target.lose_answer = True
        assert lease._renew_once() is True
        assert json.loads(target.read_bytes(lease.key))["token"] == lease.token
        target.lose_answer = False
        # Taken between the read and the write: lost, and the taker's lease stays.
        theirs = {"host": "elsewhere", "pid": 7, "token": "theirs", "expires": iso(600)}
        target.race = json.dumps(theirs).encode()
        assert lease._renew_once() is False
        assert json.loads(target.read_bytes(lease.key)) == theirs
    finally:
        lease.release()
    assert json.loads(target.read_bytes(lease.key)) == theirs


# -- read leases -------------------------------------------------------------------------


def read_leases(target: LocalTarget | MemTarget, cell: str = "crm") -> list[str]:
    try:
        return sorted(e.name for e in target.list(".locks") if e.name.startswith(f"{cell}.read-"))
    except FileNotFoundError:
        return []


def test_a_read_lease_names_the_archives_it_reads_until_it_is_released(
    target: LocalTarget | MemTarget,
) -> None:
    assert read_holds(target, "crm") == {}  # no .locks at all
    lease = ReadLease.acquire(target, "crm", ["cell_crm_1", "cell_crm_2"], "restore", ttl=60)
    try:
        assert lease.key == f".locks/crm.read-{lease.token}.lock"
        assert read_leases(target) == [f"crm.read-{lease.token}.lock"]
        assert lock_body(target) is None  # the cell's lease was held only for a moment
        body = json.loads(target.read_bytes(lease.key))
        expires = dt.datetime.fromisoformat(body.pop("expires"))
        assert 50 < (expires - dt.datetime.now(dt.UTC)).total_seconds() <= 60
        assert body == {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "purpose": "restore",
            "since": lease.since.isoformat(),
            "token": lease.token,
            "archives": ["cell_crm_1", "cell_crm_2"],
        }
        who = f"restore on host {socket.gethostname()} (pid {os.getpid()}) since {lease.since.isoformat()}"
        assert read_holds(target, "crm") == {"cell_crm_1": who, "cell_crm_2": who}
        assert read_holds(target, "billing") == {}
    finally:
        lease.release()
    assert read_leases(target) == []
    assert read_holds(target, "crm") == {}
    # Released, its token is no longer this process's: a copy of it left behind is stale.
    target.put_bytes(lease.key, lease._body())
    assert read_holds(target, "crm") == {}


def test_a_read_lease_is_renewed_while_it_is_held(target: LocalTarget | MemTarget) -> None:
    with ReadLease.acquire(target, "crm", ["cell_crm_1"], "drill", ttl=0.6) as lease:
        first = json.loads(target.read_bytes(lease.key))["expires"]
        time.sleep(1.0)
        assert json.loads(target.read_bytes(lease.key))["expires"] > first
        assert read_holds(target, "crm") == {
            "cell_crm_1": f"drill on host {socket.gethostname()} (pid {os.getpid()}) "
            f"since {lease.since.isoformat()}"
        }
    assert read_leases(target) == []


def test_a_read_lease_waits_for_a_prune_but_not_for_a_backup(
    target: LocalTarget | MemTarget, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        Lease.acquire(target, "crm", "backup run abc"),
        ReadLease.acquire(target, "crm", ["cell_crm_1"], "restore", wait=0),
    ):
        assert len(read_leases(target)) == 1
    prune = Lease.acquire(target, "crm", "prune run abc")
    try:
        with pytest.raises(LockHeld) as info:
            ReadLease.acquire(target, "crm", ["cell_crm_1"], "restore", wait=0)
        assert info.value.message == (
            f"cell crm on target {target.name}: a prune has run for more than 0s, so the "
            "restore cannot protect the archives it reads"
        )
        assert info.value.holder["token"] == prune.token
        assert read_leases(target) == []
        caplog.set_level(logging.INFO, logger="cellvault")
        started = time.monotonic()
        threading.Timer(0.7, prune.release).start()
        with ReadLease.acquire(target, "crm", ["cell_crm_1"], "restore", wait=30):
            waited = time.monotonic() - started
            assert len(read_leases(target)) == 1
        assert 0.7 <= waited < 10
        waits = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
        waits = [m for m in waits if m.get("event") == "readlease.waiting"]
        assert waits and waits[0]["cell"] == "crm" and waits[0]["target"] == target.name
        assert waits[0]["holder"]["purpose"] == "prune run abc"
    finally:
        prune.release()


def test_read_holds_pass_over_what_is_not_a_live_read_lease(
    target: LocalTarget | MemTarget,
) -> None:
    here = {"host": socket.gethostname(), "since": "2025-01-01T00:00:00+00:00"}
    gone = {**here, "pid": dead_pid(), "expires": iso(600), "archives": ["cell_crm_1"]}
    old = {"host": "elsewhere", "pid": 1, "expires": iso(-1), "archives": ["cell_crm_2"]}
    live = {
        "host": "elsewhere",
        "pid": 7,
        "expires": iso(600),
        "since": "s",
        "archives": ["cell_crm_3", 4],
    }
    for name, raw in {
        "crm.read-gone.lock": json.dumps(gone).encode(),
        "crm.read-old.lock": json.dumps(old).encode(),
        "crm.read-torn.lock": b'{"archives": ["cell_crm_4"]',
        "crm.read-list.lock": b'["cell_crm_5"]',
        "crm.read-big.lock": b" " * (64 << 10) + json.dumps(live).encode(),
        "crm.read-none.lock": json.dumps({**live, "archives": None}).encode(),
        "crm.read-live.lock": json.dumps(live).encode(),
        "crmx.read-live.lock": json.dumps({**live, "archives": ["cell_crmx_1"]}).encode(),
        "crm.lock": json.dumps({**live, "archives": ["cell_crm_6"]}).encode(),
    }.items():
        target.put_bytes(f".locks/{name}", raw)
    if isinstance(target, LocalTarget):
        (Path(target.spec.url) / ".locks" / "crm.read-dir.lock").mkdir()
    who = "a reader on host elsewhere (pid 7) since s"
    assert read_holds(target, "crm") == {"cell_crm_3": who, "4": who}
    # A lease of exactly the largest size read is believed.
    body = json.dumps({**live, "archives": ["cell_crm_7"]}).encode()
    target.put_bytes(".locks/crm.read-full.lock", body + b" " * ((64 << 10) - len(body)))
    assert read_holds(target, "crm")["cell_crm_7"] == who


class Vanishing(MemTarget):
    """A store whose listing names a read lease that is gone when read (released meanwhile)."""

    def list(self, folder: str) -> list[ObjectInfo]:
        return [ObjectInfo("crm.read-aaa.lock", 10), *super().list(folder)]


def test_a_read_lease_released_while_listed_is_passed_over(tmp_path: Path) -> None:
    target = Vanishing(TargetSpec("mem", f"mem://vanishing-{tmp_path.name}-{time.monotonic_ns()}"))
    live = {"host": "elsewhere", "pid": 7, "expires": iso(600), "since": "s"}
    target.put_bytes(".locks/crm.read-zzz.lock", json.dumps({**live, "archives": ["a"]}).encode())
    assert read_holds(target, "crm") == {"a": "a reader on host elsewhere (pid 7) since s"}


class Failing(MemTarget):
    """A store that refuses writes or deletes on demand (and records the cell leases taken)."""

    fail_put = False
    fail_delete = False

    def __init__(self, spec: TargetSpec) -> None:
        super().__init__(spec)
        self.taken: list[dict[str, Any]] = []

    def put_bytes(self, key: str, data: bytes) -> None:
        if self.fail_put:
            raise PermissionError(errno.EACCES, "refused")
        super().put_bytes(key, data)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        created = super().create_exclusive(key, data)
        if created and key == ".locks/crm.lock":
            self.taken.append(json.loads(data))
        return created

    def delete(self, key: str) -> None:
        if self.fail_delete:
            raise PermissionError(errno.EACCES, "refused")
        super().delete(key)


def test_a_read_lease_that_cannot_be_written_renewed_or_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = Failing(TargetSpec("mem", f"mem://failing-{tmp_path.name}-{time.monotonic_ns()}"))
    caplog.set_level(logging.DEBUG, logger="cellvault")
    lease = ReadLease.acquire(target, "crm", ["cell_crm_1"], "restore", ttl=0.3)
    try:
        assert lease._thread is not None
        assert (lease._thread.name, lease._thread.daemon) == ("read-lease-crm", True)
        # The cell's lease was held for the moment of the creation, named for it.
        (taken,) = target.taken
        assert taken["purpose"] == "restore (taking a read lease)"
        expires = dt.datetime.fromisoformat(taken["expires"])
        assert (expires - dt.datetime.now(dt.UTC)).total_seconds() < 1  # the ttl asked for
        assert events(caplog, "readlease.acquired") == [{"target": "mem", "cell": "crm"}]
        target.fail_put = True
        time.sleep(0.5)
        failed = events(caplog, "readlease.renew_failed")
        assert failed and failed[0] == {
            "target": "mem",
            "cell": "crm",
            "error": "[Errno 13] refused",
        }
        target.fail_delete = True
    finally:
        lease.release()  # never raises: the lease then expires by itself
    assert events(caplog, "readlease.release_failed") == [
        {"target": "mem", "cell": "crm", "error": "[Errno 13] refused"}
    ]
    target.fail_delete = False
    with pytest.raises(TargetError) as info:
        ReadLease.acquire(target, "crm", ["cell_crm_1"], "restore")
    assert info.value.message == (
        "target mem: cannot read lease on cell crm (PermissionError: [Errno 13] refused)"
    )
    # A read lease never created is released without error.
    ReadLease(target, "crm", ("cell_crm_1",), "restore").release()


def test_a_takeover_is_won_through_a_claim_named_after_the_stale_lease(
    tmp_path: Path,
) -> None:
    class Recording(LocalTarget):
        created: ClassVar[list[str]] = []

        def create_exclusive(self, key: str, data: bytes) -> bool:
            Recording.created.append(key)
            return super().create_exclusive(key, data)

    target = Recording(TargetSpec("local", str(tmp_path / "backup")))
    stale = {"host": "elsewhere", "pid": 7, "token": "old", "purpose": "p", "expires": iso(-60)}
    write_lock(target, stale)
    digest = hashlib.sha256(target.read_bytes(".locks/crm.lock")).hexdigest()[:32]
    Recording.created.clear()
    with Lease.acquire(target, "crm", "backup"):
        # A create of the lease (refused: the stale one is there), then the claim of the
        # stale version, deleted once the lease was replaced: only the lease is left.
        assert Recording.created == [".locks/crm.lock", f".locks/crm.takeover.{digest}"]
        assert sorted(e.name for e in target.list(".locks")) == ["crm.lock"]


def test_claims_left_by_runs_that_died_mid_takeover_are_taken_over_three_deep(
    target: LocalTarget | MemTarget,
) -> None:
    """A stale claim is taken through a claim named after it, and so on, three deep; not four."""
    write_lock(target, {"host": "elsewhere", "pid": 1, "purpose": "stale", "expires": iso(-60)})
    probe = Lease(target, "crm", "probe", ttl=60)
    seen = probe._read()
    assert seen is not None
    # Each run killed after winning the claim of the one before it.
    key = probe._claim_key(seen)
    chain = []
    for i in range(4):
        body = json.dumps({"token": f"dead{i}", "since": iso(-3600)}).encode()
        target.put_bytes(key, body)
        chain.append(key)
        key = f"{key}.{hashlib.sha256(body).hexdigest()[:8]}"
    # Four deep: the last one is past the depth tried, so the cell stays locked.
    with pytest.raises(LockHeld, match="changed hands"):
        Lease.acquire(target, "crm", "next run", ttl=60)
    target.delete(chain[-1])
    # Three deep: taken over, and every claim is gone with the lease.
    lease = Lease.acquire(target, "crm", "next run", ttl=60)
    assert lock_body(target)["token"] == lease.token  # type: ignore[index]
    lease.release()
    assert [e.name for e in target.list(".locks")] == []


class Flapping(MemTarget):
    """A store where another run's claim is there at each create and gone at each read."""

    flaps = 0

    def create_exclusive(self, key: str, data: bytes) -> bool:
        if ".takeover." in key and self.flaps > 0:
            self.flaps -= 1
            return False
        return super().create_exclusive(key, data)


def test_a_claim_released_between_the_create_and_the_read_is_tried_again_three_times(
    tmp_path: Path,
) -> None:
    target = Flapping(TargetSpec("mem", f"mem://flapping-{tmp_path.name}-{time.monotonic_ns()}"))
    probe = Lease(target, "crm", "probe", ttl=60)
    target.flaps = 3
    assert probe._claim(".locks/crm.takeover.a") is True
    assert target.flaps == 0
    target.flaps = 5
    assert probe._claim(".locks/crm.takeover.b") is False  # not without end
    assert target.flaps == 1
    assert [e.name for e in target.list(".locks")] == ["crm.takeover.a"]


class LostClaimAnswer(MemTarget):
    """A store where the create of a claim goes through and its answer is lost (a retry says "exists")."""

    def create_exclusive(self, key: str, data: bytes) -> bool:
        created = super().create_exclusive(key, data)
        return created and ".takeover." not in key


def test_a_claim_whose_create_answer_was_lost_is_known_as_ours(tmp_path: Path) -> None:
    target = LostClaimAnswer(TargetSpec("mem", f"mem://lost-{tmp_path.name}-{time.monotonic_ns()}"))
    write_lock(target, {"host": "elsewhere", "pid": 1, "purpose": "stale", "expires": iso(-60)})
    with Lease.acquire(target, "crm", "next run", ttl=60) as lease:
        assert lock_body(target)["token"] == lease.token  # type: ignore[index]
        assert [e.name for e in target.list(".locks")] == ["crm.lock"]


@pytest.mark.parametrize("claim", [b"\x00torn{", b"[]", b'{"token": "t"}', b'{"since": 7}'])
def test_a_damaged_claim_is_no_ones(target: LocalTarget | MemTarget, claim: bytes) -> None:
    """A claim is written whole: one that is not a claim's JSON is taken over at once."""
    write_lock(target, {"host": "elsewhere", "pid": 1, "purpose": "stale", "expires": iso(-60)})
    probe = Lease(target, "crm", "probe", ttl=3600)
    seen = probe._read()
    assert seen is not None
    target.put_bytes(probe._claim_key(seen), claim)
    with Lease.acquire(target, "crm", "next run", ttl=3600) as lease:
        assert lock_body(target)["token"] == lease.token  # type: ignore[index]
    assert [e.name for e in target.list(".locks")] == []


def test_a_release_on_a_compare_and_swap_store_deletes_our_version(tmp_path: Path) -> None:
    target = TaggedMem(TargetSpec("tagged", f"mem://tagged-{tmp_path.name}-{time.monotonic_ns()}"))
    lease = Lease.acquire(target, "crm", "run", ttl=120)
    assert lock_body(target)["token"] == lease.token  # type: ignore[index]
    lease.release()
    assert lock_body(target) is None
    assert target.data == {}


class Overtaken(MemTarget):
    """A store where another run takes a stale claim over while we win the claim named after it."""

    def create_exclusive(self, key: str, data: bytes) -> bool:
        created = super().create_exclusive(key, data)
        if created and key.startswith(".locks/crm.takeover.a."):
            self.put_bytes(
                ".locks/crm.takeover.a", json.dumps({"token": "other", "since": iso(0)}).encode()
            )
        return created


def test_a_stale_claim_taken_by_another_run_meanwhile_is_theirs(tmp_path: Path) -> None:
    target = Overtaken(TargetSpec("mem", f"mem://overtaken-{tmp_path.name}-{time.monotonic_ns()}"))
    target.put_bytes(
        ".locks/crm.takeover.a", json.dumps({"token": "dead", "since": iso(-3600)}).encode()
    )
    probe = Lease(target, "crm", "probe", ttl=60)
    assert probe._claim(".locks/crm.takeover.a") is False
    assert json.loads(target.read_bytes(".locks/crm.takeover.a"))["token"] == "other"


def test_an_expiry_without_a_zone_is_utc_and_a_holder_without_one_is_respected(
    target: LocalTarget | MemTarget,
) -> None:
    naive = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    holder = {"host": "elsewhere", "pid": 7, "token": "theirs"}
    for expires in ((naive + dt.timedelta(hours=1)).isoformat(), "soon", None):
        write_lock(target, {**holder} if expires is None else {**holder, "expires": expires})
        with pytest.raises(LockHeld, match="host elsewhere"):
            Lease.acquire(target, "crm", "backup")
    write_lock(target, {**holder, "expires": (naive - dt.timedelta(hours=1)).isoformat()})
    with Lease.acquire(target, "crm", "backup") as lease:
        assert lock_body(target)["token"] == lease.token  # type: ignore[index]


def test_a_lease_that_cannot_be_deleted_is_left_to_expire_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = Failing(TargetSpec("mem", f"mem://undeletable-{tmp_path.name}-{time.monotonic_ns()}"))
    caplog.set_level(logging.WARNING, logger="cellvault")
    lease = Lease.acquire(target, "crm", "run", ttl=60)
    target.fail_delete = True
    lease.release()  # never raises: the lease then expires by itself
    assert events(caplog, "lock.release_failed") == [
        {"target": "mem", "cell": "crm", "error": "[Errno 13] refused", "expires_in": 60}
    ]
    assert lock_body(target)["token"] == lease.token  # type: ignore[index]
    # Released, its token is no longer this process's: what it left is stale at once.
    assert holder_is_stale(lock_body(target))  # type: ignore[arg-type]
    # A lease never taken is released without error.
    target.fail_delete = False
    Lease(target, "crm", "never taken").release()


def test_a_renewal_that_fails_is_said_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = Failing(TargetSpec("mem", f"mem://unwritable-{tmp_path.name}-{time.monotonic_ns()}"))
    caplog.set_level(logging.WARNING, logger="cellvault")
    with Lease.acquire(target, "crm", "run", ttl=0.3) as lease:
        target.fail_put = True
        deadline = time.monotonic() + 10
        while len(events(caplog, "lock.renew_failed")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        failed = events(caplog, "lock.renew_failed")
        assert len(failed) >= 2  # the thread goes on after a failure
        assert failed[0] == {"target": "mem", "cell": "crm", "error": "[Errno 13] refused"}
        assert lease._thread is not None and lease._thread.is_alive()
        target.fail_put = False


class Answers(MemTarget):
    """A store whose create of the lease goes through with its answer lost, or is refused once
    for a lease released meanwhile, or fails."""

    mode = ""

    def create_exclusive(self, key: str, data: bytes) -> bool:
        if key == ".locks/crm.lock" and self.mode == "fail":
            raise PermissionError(errno.EACCES, "refused")
        if key == ".locks/crm.lock" and self.mode == "released":
            self.mode = ""
            return False
        created = super().create_exclusive(key, data)
        return created and not (key == ".locks/crm.lock" and self.mode == "lost")


def test_taking_a_lease_says_what_it_did_and_knows_its_own_lost_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = Answers(TargetSpec("mem", f"mem://answers-{tmp_path.name}-{time.monotonic_ns()}"))
    caplog.set_level(logging.DEBUG, logger="cellvault")
    with Lease.acquire(target, "crm", "backup"):
        pass
    assert events(caplog, "lock.acquired") == [
        {"target": "mem", "cell": "crm", "purpose": "backup"}
    ]
    stale = {"host": "elsewhere", "pid": 1, "purpose": "stale", "expires": iso(-60)}
    write_lock(target, stale)
    with Lease.acquire(target, "crm", "backup"):
        pass
    assert events(caplog, "lock.expired") == [{"target": "mem", "cell": "crm", "holder": stale}]
    for mode in ("lost", "released"):  # ours after all; gone when read: tried again
        target.mode = mode
        with Lease.acquire(target, "crm", "backup") as lease:
            assert lock_body(target)["token"] == lease.token  # type: ignore[index]
    target.mode = "fail"
    with pytest.raises(TargetError) as info:
        Lease.acquire(target, "crm", "backup")
    assert info.value.message.startswith("target mem: cannot lock cell crm (PermissionError")


def test_a_holder_without_a_purpose_is_named_a_run(target: LocalTarget | MemTarget) -> None:
    write_lock(target, {"host": "elsewhere", "pid": 7, "token": "t", "expires": iso(600)})
    with pytest.raises(
        LockHeld, match=r"^cell crm on target .* is locked by a run on host elsewhere"
    ):
        Lease.acquire(target, "crm", "backup")


def test_a_takeover_whose_claim_another_run_holds_is_lost_and_retried(
    target: LocalTarget | MemTarget, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    from cellvault import lock

    # Another run is taking the stale lease over right now: it holds the fresh claim.
    stale = stale_with_claim(target, token="other", since=iso(0))
    live = set(lock._LIVE)
    with pytest.raises(LockHeld) as info:
        Lease.acquire(target, "crm", "next run", ttl=60)
    assert str(info.value).startswith(
        f"cell crm on target {target.name}: the lock changed hands while taking it"
    )
    # Each of the three attempts saw the stale lease and lost its takeover.
    assert events(caplog, "lock.takeover_lost") == [{"target": target.name, "cell": "crm"}] * 3
    assert live == lock._LIVE  # the failed attempt's token is not kept as live
    assert lock_body(target) == stale


def test_a_lease_of_exactly_the_size_limit_is_read(target: LocalTarget | MemTarget) -> None:
    from cellvault.lock import MAX_LEASE_BYTES

    body = {"host": "elsewhere", "pid": 1, "purpose": "at the limit", "expires": iso(600)}
    raw = json.dumps(body).encode()
    target.put_bytes(".locks/crm.lock", raw + b" " * (MAX_LEASE_BYTES - len(raw)))
    with pytest.raises(LockHeld, match="is locked by at the limit on host elsewhere"):
        Lease.acquire(target, "crm", "backup")
    target.put_bytes(".locks/crm.lock", raw + b" " * (MAX_LEASE_BYTES + 1 - len(raw)))
    Lease.acquire(target, "crm", "backup").release()  # over the limit: unreadable, stale
