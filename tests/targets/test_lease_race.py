"""Two holders racing for one lease on every remote target kind: exactly one wins, every round.

Issue 18 (item 4) and issue 23 (item 3). Each racer has its own target object
(its own client and connection), every primitive it calls is slowed by a
random store latency, and the racers start together. They race to create the
lease (none there) and to take over a stale one (a holder elsewhere whose
lease expired). S3 (moto) creates with ``If-None-Match: *`` and takes over
with ``If-Match`` on the ETag; OSS (the suite's server) and rsync (the suite's
daemon) through a claim made by a conditional create (``x-oss-forbid-overwrite``;
a hard link rsync makes with ``link()``); the local target through ``link()``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cellvault import LocalTarget, LockHeld, TargetSpec
from cellvault.lock import Lease, mark_live
from cellvault.targets.base import Target
from cellvault.targets.oss import OssTarget
from cellvault.targets.rsync import RsyncTarget
from cellvault.targets.s3 import S3Target
from tests.servers.fixtures import OssBucket, RsyncModule, S3Bucket
from tests.targets.helpers import oss_spec, s3_spec

ROUNDS = 10
KEY = ".locks/crm.lock"
_PRIMITIVES = (
    "read_bytes",
    "read_bounded",
    "read_tagged",
    "create_exclusive",
    "replace_if",
    "delete",
    "put_bytes",
)


def slowed(target: Target, seed: int, most: float) -> Target:
    """*target* with a random latency of up to *most* seconds before and after each primitive."""
    rng = random.Random(seed)

    def lagged(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            time.sleep(rng.uniform(0, most))
            try:
                return fn(*args, **kwargs)
            finally:
                time.sleep(rng.uniform(0, most))

        return call

    for name in _PRIMITIVES:
        setattr(target, name, lagged(getattr(target, name)))
    return target


def stale_lease(round_: int) -> bytes:
    expired = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)).isoformat()
    body = {"host": "elsewhere", "pid": 1, "purpose": f"stale {round_}", "expires": expired}
    return json.dumps(body).encode()


def race(make: Callable[[], Target], racers: int, round_: int, most: float) -> list[Lease]:
    """Start *racers* runs at once on their own target objects; the leases won."""
    targets = [slowed(make(), round_ * 100 + i, most) for i in range(racers)]
    barrier = threading.Barrier(racers)
    won: list[Lease] = []
    lost: list[BaseException] = []

    def run(target: Target) -> None:
        barrier.wait()
        try:
            won.append(Lease.acquire(target, "crm", f"racer round {round_}", ttl=120))
        except LockHeld as exc:
            lost.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(won) + len(lost) == racers, "a racer neither won nor was refused"
    return won


def check_rounds(make: Callable[[], Target], *, takeover: bool, most: float = 0.05) -> None:
    plain = make()
    for round_ in range(ROUNDS):
        if takeover:
            plain.put_bytes(KEY, stale_lease(round_))
        won = race(make, 2, round_, most)
        assert len(won) == 1, f"round {round_}: {len(won)} runs hold the lease"
        body = json.loads(plain.read_bytes(KEY))
        assert body["token"] == won[0].token, f"round {round_}: the lease names another run"
        won[0].release()
        with pytest.raises(FileNotFoundError):
            plain.read_bytes(KEY)


@pytest.fixture(params=["s3", "oss", "rsync", "local"])
def make_target(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Target]:
    """A maker of fresh target objects (own client each) on one store of the kind."""
    kind = request.param
    if kind == "s3":
        s3_bucket: S3Bucket = request.getfixturevalue("s3_bucket")
        return lambda: S3Target(s3_spec(s3_bucket))
    if kind == "oss":
        oss_bucket: OssBucket = request.getfixturevalue("oss_bucket")
        return lambda: OssTarget(oss_spec(oss_bucket))
    if kind == "rsync":
        module: RsyncModule = request.getfixturevalue("rsync_module")
        return lambda: RsyncTarget(TargetSpec("nas", module.url_for("nas")))
    return lambda: LocalTarget(TargetSpec("local", str(tmp_path / "backup")))


def test_two_runs_creating_one_lease_one_wins_every_round(
    make_target: Callable[[], Target],
) -> None:
    check_rounds(make_target, takeover=False)


def test_two_runs_taking_over_a_stale_lease_one_wins_every_round(
    make_target: Callable[[], Target],
) -> None:
    check_rounds(make_target, takeover=True)


def renewal_round(make: Callable[[], Target], round_: int, most: float) -> None:
    """A holder renews while another run takes its (stale-looking) lease over."""
    plain = make()
    holder = Lease.acquire(make(), "crm", f"holder round {round_}", ttl=120)
    holder._stop.set()  # no background renewal: this round renews by hand
    # The holder is the slow one (why its lease looks stale): its renewal's read
    # and write are far apart, and the takeover starts somewhere in between.
    slowed(holder.target, round_ * 100, 8 * most)
    head_start = random.Random(round_).uniform(0, 2 * most)
    # Seen as left behind (our host, our pid, a token not live): stale to the taker.
    mark_live(holder.token, live=False)
    barrier = threading.Barrier(2)
    renewed: list[bool] = []
    taken: list[Lease] = []
    refused: list[LockHeld] = []

    def renew() -> None:
        barrier.wait()
        renewed.append(holder._renew_once())

    def take() -> None:
        target = slowed(make(), round_ * 100 + 1, most)
        barrier.wait()
        time.sleep(head_start)
        try:
            taken.append(Lease.acquire(target, "crm", f"taker round {round_}", ttl=120))
        except LockHeld as exc:
            refused.append(exc)

    threads = [threading.Thread(target=renew), threading.Thread(target=take)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(renewed) == 1 and len(taken) + len(refused) == 1, f"round {round_}: a racer hung"
    on_target = json.loads(plain.read_bytes(KEY))["token"]
    if taken:
        # The takeover came last: no renewal may have written over it.
        assert on_target == taken[0].token, f"round {round_}: the taker lost its lease to a renewal"
        taken[0].check()
        with pytest.raises(LockHeld, match="lease was lost"):
            holder.check()
        winner, loser = taken[0], holder
    else:
        assert renewed == [True], f"round {round_}: neither the renewal nor the takeover won"
        assert on_target == holder.token, f"round {round_}: the lease names another run"
        holder.check()
        winner, loser = holder, None
    if renewed == [False]:
        assert taken, f"round {round_}: the renewal lost to no one"
    if loser is not None:
        loser.release()  # not its lease any more: deletes nothing
        assert json.loads(plain.read_bytes(KEY))["token"] == winner.token
    winner.release()
    with pytest.raises(FileNotFoundError):
        plain.read_bytes(KEY)
    # Claims live only while a version is replaced.
    assert [e.name for e in plain.list(".locks")] == [], f"round {round_}: claims left behind"


def test_a_renewal_racing_a_takeover_leaves_exactly_one_holder_every_round(
    make_target: Callable[[], Target],
) -> None:
    for round_ in range(ROUNDS):
        renewal_round(make_target, round_, 0.05)


def test_s3_takes_a_stale_lease_over_only_if_unchanged_since_read(s3_bucket: S3Bucket) -> None:
    """The takeover is S3's compare-and-swap: a PUT with If-Match on the ETag read."""
    target = S3Target(s3_spec(s3_bucket))
    target.put_bytes(KEY, stale_lease(0))
    raw, tag = target.read_tagged(KEY, 1 << 10)
    assert json.loads(raw)["purpose"] == "stale 0"
    # Someone else replaced it meanwhile: the ETag read no longer matches.
    target.put_bytes(KEY, stale_lease(1))
    assert target.replace_if(KEY, b'{"token": "late"}', tag) is False
    assert json.loads(target.read_bytes(KEY))["purpose"] == "stale 1"
    _, tag = target.read_tagged(KEY, 1 << 10)
    assert target.replace_if(KEY, b'{"token": "mine"}', tag) is True
    assert target.replace_if(KEY, b'{"token": "again"}', tag) is False
    assert json.loads(target.read_bytes(KEY)) == {"token": "mine"}
    target.delete(KEY)
    assert target.replace_if(KEY, b"{}", tag) is False  # gone: nothing to replace
    with pytest.raises(FileNotFoundError):
        target.read_bytes(KEY)


def test_s3_release_racing_a_takeover_leaves_the_new_holder_its_lease(
    s3_bucket: S3Bucket,
) -> None:
    """A release deletes with If-Match on the ETag read: a lease taken over since stays."""
    target = S3Target(s3_spec(s3_bucket))
    lease = Lease.acquire(target, "crm", "stalled run", ttl=120)
    seen = lease._read()
    assert seen is not None and seen.tag is not None
    theirs = {"host": "elsewhere", "pid": 1, "token": "theirs", "expires": "2999-01-01"}
    target.put_bytes(KEY, json.dumps(theirs).encode())  # taken over between read and delete
    assert lease._replace(seen, None) is False
    assert json.loads(target.read_bytes(KEY))["token"] == "theirs"
    _, tag = target.read_tagged(KEY, 1 << 10)
    assert target.delete_if(KEY, "not-" + tag) is False
    assert target.delete_if(KEY, tag) is True
    assert target.delete_if(KEY, tag) is False  # gone
    with pytest.raises(FileNotFoundError):
        target.read_bytes(KEY)
    lease.release()  # not ours any more: nothing deleted, the renewal stopped


def test_s3_renewal_of_a_lease_taken_meanwhile_does_not_overwrite_it(s3_bucket: S3Bucket) -> None:
    target = S3Target(s3_spec(s3_bucket))
    lease = Lease.acquire(target, "crm", "slow run", ttl=120)
    try:
        assert lease._renew_once() is True
        theirs = {"host": "elsewhere", "pid": 1, "token": "theirs", "expires": "2999-01-01"}
        target.put_bytes(KEY, json.dumps(theirs).encode())
        assert lease._renew_once() is False
        assert json.loads(target.read_bytes(KEY))["token"] == "theirs"
    finally:
        lease.release()
    assert json.loads(target.read_bytes(KEY))["token"] == "theirs"  # not ours to delete


def test_rsync_creates_a_lease_as_a_link_read_back_without_following_it(
    rsync_module: RsyncModule,
) -> None:
    target = RsyncTarget(TargetSpec("nas", rsync_module.url_for("nas")))
    assert target.create_exclusive(KEY, b'{"token": "mine"}') is True
    assert target.create_exclusive(KEY, b'{"token": "theirs"}') is False
    assert target.read_bytes(KEY) == b'{"token": "mine"}'
    assert [e.name for e in target.list(".locks")] == ["crm.lock"]
    # A renewal replaces the link with a plain file; a link planted at any
    # other key is read as its text, never followed.
    target.put_bytes(KEY, b'{"token": "mine", "renewed": 1}')
    assert target.read_bytes(KEY) == b'{"token": "mine", "renewed": 1}'
    (rsync_module.root / "nas" / "crm").mkdir(parents=True)
    (rsync_module.root / "nas" / "crm" / "x.json").symlink_to("/etc/passwd")
    assert target.read_bytes("crm/x.json") == b"/etc/passwd"
    target.delete(KEY)
    with pytest.raises(FileNotFoundError):
        target.read_bytes(KEY)


def test_an_rsync_call_that_hangs_is_stopped_with_what_it_started(tmp_path: Path) -> None:
    """Item 5 of issue 18: every wait has a bound. A stand-in rsync that starts a
    child holding its output open and never ends is stopped, group and all."""
    fake = tmp_path / "rsync"
    pidfile = tmp_path / "child.pid"
    fake.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nexec sleep 300\n")
    fake.chmod(0o755)
    target = RsyncTarget(
        TargetSpec("nas", "rsync://127.0.0.1:1/m/x", {"rsync": str(fake), "timeout": 1})
    )
    with pytest.raises(TimeoutError, match="did not finish within 4 s"):
        target.list("crm")
    child = int(pidfile.read_text())
    for _ in range(100):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the child {child} rsync started is still running")
