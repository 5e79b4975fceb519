"""Leases: one writer per cell and target, takeover of dead and expired holders, renewal."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cellvault import LocalTarget, LockHeld, TargetSpec, hookimpl
from cellvault.lock import Lease
from tests.helpers import SAMPLE, MemTarget, make_vault, snapshot, write_tree


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
    # A live process of this host (our parent) with time left.
    write_lock(
        target,
        {
            "host": socket.gethostname(),
            "pid": os.getppid(),
            "since": iso(-5),
            "expires": iso(3600),
            "token": "parent",
        },
    )
    with pytest.raises(LockHeld, match=f"pid {os.getppid()}"):
        Lease.acquire(target, "crm", "backup")
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


def test_renewal_stops_when_the_lease_was_taken(target: LocalTarget | MemTarget) -> None:
    lease = Lease.acquire(target, "crm", "slow run", ttl=0.3)
    theirs = {"host": "other", "pid": 1, "since": iso(0), "expires": iso(3600), "token": "theirs"}
    assert lease._thread is not None
    for _ in range(5):
        write_lock(target, theirs)
        lease._thread.join(timeout=1)  # it sees another holder and stops renewing
        if not lease._thread.is_alive():
            break
    assert not lease._thread.is_alive()
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


def test_a_claim_left_by_a_run_killed_mid_takeover_does_not_block_the_cell(
    target: LocalTarget | MemTarget,
) -> None:
    stale = {"host": "elsewhere", "pid": 1, "purpose": "stale", "expires": iso(-60)}
    write_lock(target, stale)
    probe = Lease(target, "crm", "probe", ttl=60)
    seen = probe._read()
    assert seen is not None
    # A run won the takeover's claim and was killed before it replaced the lease.
    target.put_bytes(
        probe._claim_key(seen), json.dumps({"token": "dead", "since": iso(-3600)}).encode()
    )
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
        deadline = time.monotonic() + 5
        state = ""
        while state != "Z" and time.monotonic() < deadline:  # killed, not yet reaped
            with open(f"/proc/{child.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        assert state == "Z"
        assert holder_is_stale(holder)
    finally:
        child.kill()
        child.wait()
