"""DR fencing by epoch against moto's S3: a fenced old primary writes nothing the active site restores."""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

from cellvault import TargetSpec, Vault, hookimpl, load_env
from cellvault.archive import ArchiveId
from cellvault.cli import cli
from cellvault.dr import Site
from cellvault.errors import ConfigError, DrError, Fenced, TargetError
from cellvault.fence import (
    EPOCHS_FOLDER,
    Epoch,
    Fence,
    Heartbeat,
    claim_epoch,
    fence_for,
    host_site_id,
    read_epoch,
    read_heartbeat,
    write_heartbeat,
    written_after_fence,
)
from cellvault.retention import RetentionPolicy
from cellvault.targets.base import ObjectInfo
from cellvault.targets.local import LocalTarget
from tests.dr.test_dr import CELLS, make_site, s3_spec, seed_cells, site_env, trees, utc
from tests.helpers import clock, write_tree
from tests.servers.fixtures import S3Bucket


def epochs(bucket: S3Bucket) -> list[str]:
    return sorted(k.rsplit("/", 1)[1] for k in bucket.objects() if f"/{EPOCHS_FOLDER}/" in k)


def s3_ids(site: Site, cell: str) -> list[str]:
    return [str(i) for i in site.vault.target("s3").archive_ids(cell)]


def test_a_fenced_primary_refuses_backup_push_and_prune_and_the_standby_restores_none_of_it(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary_dir, standby_dir = tmp_path / "primary", tmp_path / "standby"
    primary = make_site(primary_dir, "primary", storage, start=utc(2025, 1, 1, 2))
    standby = make_site(standby_dir, "dr", storage, start=utc(2025, 1, 2, 2))
    seed_cells(primary_dir)
    assert primary.vault.backup(kind="full").ok
    assert standby.prepare().ok
    before = trees(primary_dir)

    # The standby fails over while the primary keeps running (a partition).
    report = standby.failover(restore="latest")
    assert report.ok, report
    assert report.epoch == 1 and epochs(s3_bucket) == ["0000000001.json"]
    assert trees(standby_dir) == before
    on_s3 = {c: s3_ids(primary, c) for c in CELLS}

    # The old primary goes on as if nothing happened: every writer refuses.
    write_tree(primary_dir / "cells" / "crm", {"late.txt": "written on the fenced primary\n"})
    with pytest.raises(Fenced) as fenced:
        primary.vault.backup(kind="incremental")
    message = str(fenced.value)
    assert "site dr holds epoch 1" in message and "refused" in message
    assert fenced.value.active == "dr" and fenced.value.since.startswith("2025-01-02T")
    assert "dr failback" in (fenced.value.hint or "") and "dr prepare" in (fenced.value.hint or "")
    # Its own directory is not a shared target: a local-only backup is allowed.
    assert primary.vault.backup(kind="incremental", targets=["local"]).ok
    with pytest.raises(DrError, match="site dr is active"):
        primary.push()  # the failover marker says it first; the epoch would too
    with pytest.raises(Fenced, match="; prune refused, nothing was written to the shared"):
        primary.vault.prune()
    # A dry run writes nothing: the fenced site may still see what a prune would do.
    dry = primary.vault.prune(dry_run=True)
    assert dry.ok and dry.dry_run and {r.target for r in dry.results} == {"local", "s3"}
    assert {c: s3_ids(primary, c) for c in CELLS} == on_s3

    # The standby pulls and restores: nothing of the fenced primary's comes back.
    pulled = standby.pull()
    assert pulled.ok and pulled.copied == []
    restored = standby.vault.restore("latest", skip_prebackup=True)
    assert restored.ok and trees(standby_dir) == before

    # The command line says the same, with exit 1 and no traceback.
    runner = CliRunner()
    env = {**site_env(primary_dir, s3_bucket, "primary"), "BACKUP_CELLS": " ".join(CELLS)}
    for args, says in (
        (["backup"], "is fenced: site dr holds epoch 1"),
        (["sync"], "must not push"),
        (["prune"], "is fenced: site dr holds epoch 1"),
    ):
        result = runner.invoke(cli, args, env=env)
        assert result.exit_code == 1, (args, result.output, result.stderr)
        assert says in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output + result.stderr
    assert {c: s3_ids(primary, c) for c in CELLS} == on_s3


class _FenceOnSnapshot:
    """Has the standby take the epoch while the primary's backup is reading its cells."""

    def __init__(self, standby: Site) -> None:
        self.standby = standby
        self.done = threading.Lock()
        self.taken = False

    @hookimpl
    def cellvault_after_snapshot(self, cell: Any, archive: str, error: str | None) -> None:
        with self.done:
            if not self.taken:
                self.standby.context.fence.take("failover", now=self.standby.context.now())
                self.taken = True


def test_a_backup_fenced_while_it_runs_commits_nothing_to_the_shared_target(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    standby = make_site(tmp_path / "standby", "dr", storage, start=utc(2025, 1, 2, 2))
    hook = _FenceOnSnapshot(standby)
    primary = make_site(
        tmp_path / "primary", "primary", storage, start=utc(2025, 1, 1, 2), plugins=(hook,)
    )
    seed_cells(tmp_path / "primary")
    report = primary.vault.backup(kind="full")
    assert hook.taken
    assert not report.ok
    # Committed locally (its own directory), never on the shared target.
    assert all(s3_ids(primary, c) == [] for c in CELLS)
    assert all("is fenced: site dr holds epoch 1" in str(c.error) for c in report.cells), report


class _FenceOnFirstDelete:
    """Makes the primary's local target have the standby take the epoch at its first deletion."""

    def __init__(self, standby: Site) -> None:
        self.standby = standby
        self.taken = False

    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> LocalTarget | None:
        if spec.name != "local":
            return None
        hook = self

        class Fencing(LocalTarget):
            def delete_archive(self, sidecar: Any) -> None:
                super().delete_archive(sidecar)
                if not hook.taken:
                    hook.standby.context.fence.take("failover", now=hook.standby.context.now())
                    hook.taken = True

        return Fencing(spec)


def test_a_prune_fenced_while_it_runs_deletes_nothing_more_on_the_shared_target(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    standby = make_site(tmp_path / "standby", "dr", storage, start=utc(2025, 1, 2, 2))
    hook = _FenceOnFirstDelete(standby)
    primary = make_site(
        tmp_path / "primary",
        "primary",
        storage,
        start=utc(2025, 1, 1, 2),
        plugins=(hook,),
        retention=RetentionPolicy(keep_full_days=None, keep_incremental_days=None, keep_last=1),
    )
    seed_cells(tmp_path / "primary")
    assert primary.vault.backup(kind="full").ok and primary.vault.backup(kind="full").ok
    on_s3 = {c: s3_ids(primary, c) for c in CELLS}
    assert all(len(ids) == 2 for ids in on_s3.values())
    # The prune starts unfenced, on the local target first; the standby takes over meanwhile.
    report = primary.vault.prune()
    assert hook.taken and not report.ok
    shared = [r for r in report.results if r.target == "s3"]
    assert sorted(r.cell for r in shared) == sorted(CELLS)
    for r in shared:
        assert not r.removed and "is fenced: site dr holds epoch 1" in str(r.error)
        assert f"pruning cell {r.cell} on target s3 refused" in str(r.error)
    assert {c: s3_ids(primary, c) for c in CELLS} == on_s3


def test_pull_and_restore_pass_over_what_a_fenced_site_wrote_after_the_fence(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary_dir = tmp_path / "primary"
    primary = make_site(primary_dir, "primary", storage, start=utc(2025, 1, 1, 2))
    # The standby's clock is behind the primary's: its epoch begins before the
    # primary's last backup, which the primary wrote believing itself active.
    standby = make_site(tmp_path / "standby", "dr", storage, start=utc(2025, 1, 1, 2, 30))
    assert primary.context.fence.take("failback", now=utc(2025, 1, 1, 1)).number == 1
    seed_cells(primary_dir)
    first = primary.vault.backup(kind="full")
    assert first.ok
    write_tree(primary_dir / "cells" / "crm", {"late.txt": "after the fence\n"})
    assert primary.vault.backup(kind="full", cells=["crm"]).ok
    stamps = s3_ids(primary, "crm")
    assert len(stamps) == 2
    first, late = (primary.local.sidecar(ArchiveId.parse(i)).meta for i in stamps)
    assert first.epoch == late.epoch == 1
    fence_at = ArchiveId.parse(stamps[-1]).when - dt.timedelta(seconds=1)
    assert ArchiveId.parse(stamps[0]).when < fence_at
    taken = standby.context.fence.take("failover", now=fence_at)
    assert taken.number == 2

    pulled = standby.pull()
    assert pulled.ok
    crm = next(c for c in pulled.cells if c.cell == "crm")
    assert [line.split(":")[0] for line in crm.ignored] == [stamps[-1]]
    assert "a fenced site's write, ignored" in crm.ignored[0]
    assert [str(i) for i in standby.local.archive_ids("crm")] == stamps[:1]

    # A restore straight from the shared target passes over it too.
    into = tmp_path / "restored"
    result = standby.vault.restore("latest", cells=["crm"], source=["s3"], into=into)
    assert result.ok and result.cells[0].archive == stamps[0]
    assert not (into / "crm" / "crm" / "late.txt").exists()
    # Named by its id, it is restored: nothing is lost.
    named = standby.vault.restore(stamps[-1], cells=["crm"], source=["s3"], into=tmp_path / "x")
    assert named.ok and named.cells[0].archive == stamps[-1]


def test_two_standbys_racing_for_the_epoch_exactly_one_wins(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    sites = [make_site(tmp_path / f"dr{n}", f"dr{n}", storage) for n in range(4)]
    barrier = threading.Barrier(len(sites))
    won: list[Epoch] = []
    lost: list[str] = []

    def race(site: Site) -> None:
        barrier.wait()
        try:
            won.append(site.context.fence.take("failover", now=utc(2025, 1, 3), over=0))
        except DrError as exc:
            lost.append(str(exc))

    threads = [threading.Thread(target=race, args=(s,)) for s in sites]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 3, (won, lost)
    assert all(f"site {won[0].site}" in text for text in lost), lost
    assert read_epoch(sites[0].storage)[0] == won[0]
    assert epochs(s3_bucket) == ["0000000001.json"]


def test_two_standbys_failing_over_at_once_only_one_becomes_active(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "primary", "primary", storage)
    seed_cells(tmp_path / "primary")
    assert primary.vault.backup(kind="full").ok
    standbys = [make_site(tmp_path / f"dr{n}", f"dr{n}", storage) for n in range(2)]
    for s in standbys:
        assert s.prepare().ok
    barrier = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def fail_over(site: Site) -> None:
        barrier.wait()
        try:
            outcomes[site.site_id] = site.failover()
        except DrError as exc:
            outcomes[site.site_id] = exc

    threads = [threading.Thread(target=fail_over, args=(s,)) for s in standbys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [k for k, v in outcomes.items() if not isinstance(v, Exception) and v.ok]
    assert len(winners) == 1, outcomes
    epoch = read_epoch(standbys[0].storage)[0]
    marker = standbys[0].marker()[0]
    assert epoch is not None and marker is not None
    assert epoch.site == marker.site_id == winners[0]


def test_failback_hands_the_epoch_back_and_fences_the_standby(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary_dir, standby_dir = tmp_path / "primary", tmp_path / "standby"
    primary = make_site(primary_dir, "primary", storage, start=utc(2025, 1, 1, 2))
    standby = make_site(standby_dir, "dr", storage, start=utc(2025, 1, 1, 2, 30))
    seed_cells(primary_dir)
    assert primary.vault.backup(kind="full").ok
    assert standby.prepare().ok
    assert standby.failover(restore="latest").epoch == 1
    # The standby serves and backs up to the shared storage.
    write_tree(standby_dir / "cells" / "crm", {"during.txt": "written during the failover\n"})
    assert standby.vault.backup(kind="incremental").ok
    handback = standby.failback()
    assert handback.ok and handback.step == "handback", handback
    primary.vault.clock = clock(utc(2025, 1, 1, 4))  # the primary is back, later in the day
    takeover = primary.failback(skip_prebackup=True)
    assert takeover.ok and takeover.epoch == 2, takeover
    assert (primary_dir / "cells" / "crm" / "during.txt").is_file()
    assert epochs(s3_bucket) == ["0000000001.json", "0000000002.json"]
    # Now the standby is the fenced one; the primary writes again.
    with pytest.raises(Fenced, match="site primary holds epoch 2"):
        standby.vault.backup()
    assert primary.vault.backup(kind="incremental").ok
    assert primary.push().ok


def test_a_vault_without_dr_is_never_fenced_and_a_bad_epoch_record_is_not_believed(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    env = site_env(tmp_path, s3_bucket, "primary")
    (tmp_path / "cells" / "crm").mkdir(parents=True)
    (tmp_path / "cells" / "crm" / "a.txt").write_text("a\n")
    (tmp_path / "cells" / "media").mkdir()
    vault = Vault(load_env(env), load_entry_points=False)
    assert vault.fence.check("backup") is None
    assert vault.backup().ok
    vault.target("s3").put_bytes(f"{EPOCHS_FOLDER}/0000000007.json", b'{"epoch": 3}')
    assert vault.fence.current() is None
    assert vault.backup().ok
    with pytest.raises(ConfigError, match="needs a shared"):
        claim_epoch([], "x", reason="t", now=utc(2025, 1, 1))


def test_safety_backups_stay_local_and_never_count_toward_the_lag(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary_dir, standby_dir = tmp_path / "primary", tmp_path / "standby"
    primary = make_site(primary_dir, "primary", storage, start=utc(2025, 1, 1, 2))
    standby = make_site(standby_dir, "dr", storage, start=utc(2025, 1, 1, 2, 30))
    seed_cells(primary_dir)
    seed_cells(standby_dir, seed=7)  # the standby's cells hold older data of their own
    assert primary.vault.backup(kind="full").ok
    assert standby.prepare().ok
    report = standby.failover(restore="latest")
    assert report.ok and report.restore is not None
    safety = {c.cell: c.safety_backup for c in report.restore.cells}
    assert all(safety.values()), safety

    status = standby.status()
    for lag in status.lag:
        assert lag.safety == (safety[lag.cell],)
        assert (lag.behind, lag.ahead, lag.lag_seconds, lag.leader) == (0, 0, 0.0, "even")
    text = CliRunner().invoke(
        cli,
        ["dr", "status"],
        env={
            **site_env(standby_dir, s3_bucket, "dr"),
            "BACKUP_CELLS": " ".join(CELLS),
        },
    )
    assert "is a pre-restore safety backup (not counted)" in text.output, text.output
    listed = CliRunner().invoke(
        cli,
        ["list", "--cell", "crm", "--target", "local"],
        env={**site_env(standby_dir, s3_bucket, "dr"), "BACKUP_CELLS": " ".join(CELLS)},
    )
    line = next(x for x in listed.output.splitlines() if x.startswith(safety["crm"]))
    assert line.endswith("[safety backup: stays on this site]"), listed.output
    # The push of the active standby leaves them here.
    pushed = standby.push()
    assert pushed.ok and pushed.copied == []
    assert all(any("safety backup" in line for line in c.ignored) for c in pushed.cells)
    assert all(safety[c] not in s3_ids(standby, c) for c in CELLS)
    # Asked for, they go.
    assert len(standby.push(include_safety=True).copied) == len(CELLS)

    # A new backup on the standby: it is ahead of the storage by that archive.
    assert standby.vault.backup(kind="incremental", targets=["local"]).ok
    lag = next(x for x in standby.status().lag if x.cell == "crm")
    assert (lag.ahead, lag.behind, lag.leader) == (1, 0, "local")
    assert lag.lag_seconds is not None and lag.lag_seconds > 0
    assert lag.ahead_archives != (safety["crm"],)


def test_written_after_the_fence_means_an_older_epoch_stamped_after_the_claim() -> None:
    at = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
    current = Epoch(number=3, site="dr", at=at)
    later = at + dt.timedelta(seconds=1)
    assert written_after_fence(2, later, current)
    assert not written_after_fence(2, at, current)  # stamped at the claim: before it took hold
    assert not written_after_fence(2, at - dt.timedelta(seconds=1), current)
    assert not written_after_fence(3, later, current)  # the current epoch's own writes
    assert not written_after_fence(None, later, current)  # written before any fencing


def test_a_fenced_site_is_told_who_holds_the_epoch_and_what_to_do(tmp_path: Path) -> None:
    shared = LocalTarget(TargetSpec("nas", str(tmp_path / "nas")))
    at = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
    claim_epoch([shared], "dr", reason="failover", now=at)
    assert Fence("dr", [shared]).check("backup") == Epoch(1, "dr", at, "failover")
    assert Fence("primary", []).check("backup") is None  # no shared target: nothing to fence
    with pytest.raises(Fenced) as info:
        Fence("primary", [shared]).check("backup of cell crm")
    assert info.value.message == (
        "this site (primary) is fenced: site dr holds epoch 1 since 2025-03-01T12:00:00Z "
        "(failover); backup of cell crm refused, nothing was written to the shared targets"
    )
    assert info.value.hint == (
        "if site dr took over, run 'cellvault dr failback' there and then here to hand back; "
        "to serve as its standby instead, set DR_PULL_ONLY=1 and run 'cellvault dr prepare' here"
    )
    assert (info.value.active, info.value.since) == ("dr", "2025-03-01T12:00:00Z")


# -- the records, the claim and the heartbeats, on folders ------------------------
# Quick tests of each rule of cellvault.fence (the mutation group runs these).

AT = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def folder(tmp_path: Path, name: str) -> LocalTarget:
    return LocalTarget(TargetSpec(name, str(tmp_path / name)))


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The fields of each log event *name* (cellvault logs structured events)."""
    return [
        {k: v for k, v in r.msg.items() if k not in ("event", "logger", "level", "timestamp")}
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == name
    ]


@pytest.fixture
def far_east(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's local time zone is UTC+8 (the records are written in UTC whatever it is)."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_records_are_written_in_utc_whatever_the_local_time_zone(
    far_east: None, tmp_path: Path
) -> None:
    assert dt.datetime(2025, 3, 1, 12, 0).astimezone().utcoffset() == dt.timedelta(hours=8)
    epoch = Epoch(1, "dr", AT)
    assert epoch.to_json() == (
        b'{"at": "2025-03-01T12:00:00Z", "epoch": 1, "host": "", "reason": "failover", '
        b'"site": "dr"}\n'
    )
    assert Heartbeat("dr", AT).to_json().startswith(b'{"at": "2025-03-01T12:00:00Z", ')
    shared = folder(tmp_path, "a")
    write_heartbeat(Fence("dr", [shared]), now=AT, source="backup")
    assert shared.read_bytes(".dr/heartbeats/dr.json").startswith(b'{"at": "2025-03-01T12:00:00Z"')


def broken(tmp_path: Path, name: str) -> LocalTarget:
    """A target whose folder is a file: every call fails (a TargetError through guard)."""
    (tmp_path / name).write_text("not a folder\n")
    return LocalTarget(TargetSpec(name, str(tmp_path / name)))


@pytest.mark.parametrize(
    ("hostname", "site"),
    [
        ("Web-01.example.com", "web-01"),
        ("__Bad Host!!.lan", "bad-host"),
        ("db_2", "db_2"),
        (".example.com", "site"),
        ("-_-", "site"),
        ("a" * 70, "a" * 63),
    ],
)
def test_the_host_site_id_is_the_short_host_name_made_a_site_id(
    monkeypatch: pytest.MonkeyPatch, hostname: str, site: str
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: hostname)
    assert host_site_id() == site


def test_an_epoch_record_is_written_and_read_back_exactly() -> None:
    plus_one = dt.timezone(dt.timedelta(hours=1))
    epoch = Epoch(3, "dr", dt.datetime(2025, 3, 1, 13, 0, tzinfo=plus_one), "failback", "h1")
    assert epoch.key == ".dr/epochs/0000000003.json"
    raw = epoch.to_json()
    assert raw == (
        b'{"at": "2025-03-01T12:00:00Z", "epoch": 3, "host": "h1", "reason": "failback", '
        b'"site": "dr"}\n'
    )
    back = Epoch.from_json(raw, name=epoch.key)
    assert back == Epoch(3, "dr", AT, "failback", "h1")
    assert back.at.tzinfo is dt.UTC
    # Reason and host are optional; a time with an offset is read as UTC.
    bare = b'{"epoch": 12, "site": "a_b-1", "at": "2025-03-01T14:00:00+02:00"}'
    assert Epoch.from_json(bare, name="x/0000000012.json") == Epoch(12, "a_b-1", AT, "", "")


@pytest.mark.parametrize(
    ("record", "name", "error"),
    [
        (
            {"epoch": 0, "site": "dr", "at": "2025-03-01T12:00:00Z"},
            "0000000000.json",
            "epoch 0 is not a positive integer",
        ),
        (
            {"epoch": -2, "site": "dr", "at": "2025-03-01T12:00:00Z"},
            "0000000001.json",
            "epoch -2 is not a positive integer",
        ),
        (
            {"epoch": True, "site": "dr", "at": "2025-03-01T12:00:00Z"},
            "0000000001.json",
            "epoch True is not a positive integer",
        ),
        (
            {"epoch": "1", "site": "dr", "at": "2025-03-01T12:00:00Z"},
            "0000000001.json",
            "epoch '1' is not a positive integer",
        ),
        (
            {"epoch": 1, "site": "Dr", "at": "2025-03-01T12:00:00Z"},
            "0000000001.json",
            "site 'Dr' is not a site id",
        ),
        (
            {"epoch": 1, "site": 7, "at": "2025-03-01T12:00:00Z"},
            "0000000001.json",
            "site 7 is not a site id",
        ),
        (
            {"epoch": 1, "site": "dr", "at": "2025-03-01T12:00:00"},
            "0000000001.json",
            "its time has no time zone",
        ),
        (
            {"epoch": 1, "site": "dr", "at": "noon"},
            "0000000001.json",
            "Invalid isoformat string: 'noon'",
        ),
        (
            {"epoch": 1, "site": "dr", "at": "2025-03-01T12:00:00z"},
            "0000000001.json",
            "Invalid isoformat string: '2025-03-01T12:00:00z'",
        ),
        ({"epoch": 1, "at": "2025-03-01T12:00:00Z"}, "0000000001.json", "'site'"),
        ({"site": "dr", "at": "2025-03-01T12:00:00Z"}, "0000000001.json", "'epoch'"),
        ({"epoch": 1, "site": "dr"}, "0000000001.json", "'at'"),
        (["epoch"], "0000000001.json", "the epoch record is a list, not an object"),
    ],
)
def test_an_epoch_record_that_is_not_one_is_refused_with_what_is_wrong(
    record: Any, name: str, error: str
) -> None:
    key = f"{EPOCHS_FOLDER}/{name}"
    with pytest.raises(DrError) as info:
        Epoch.from_json(json.dumps(record).encode(), name=key)
    assert info.value.message == f"epoch record {key} is unusable ({error})"


@pytest.mark.parametrize(
    "name", ["0000000002.json", "000000001.json", "0000000001.jsonx", "1.json"]
)
def test_an_epoch_record_under_another_name_than_its_number_is_refused(name: str) -> None:
    raw = Epoch(1, "dr", AT).to_json()
    with pytest.raises(DrError) as info:
        Epoch.from_json(raw, name=f"{EPOCHS_FOLDER}/{name}")
    assert info.value.message == f"epoch record {EPOCHS_FOLDER}/{name} names epoch 1, not its own"
    assert Epoch.from_json(raw, name="0000000001.json").number == 1  # a bare name is one too


def test_the_current_epoch_is_the_highest_valid_record_of_the_first_target_that_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cellvault")
    down, arbiter, copy = broken(tmp_path, "down"), folder(tmp_path, "a"), folder(tmp_path, "b")
    assert read_epoch([arbiter, copy]) == (None, "a", [])  # no epochs folder at all
    assert read_epoch([]) == (None, None, [])
    none, where, errors = read_epoch([down])
    assert (none, where, len(errors)) == (None, None, 1)
    assert errors[0].startswith("target down: cannot list the epochs (NotADirectoryError")
    copy.put_bytes(Epoch(1, "primary", AT).key, Epoch(1, "primary", AT).to_json())
    arbiter.put_bytes(Epoch(2, "dr", AT).key, Epoch(2, "dr", AT).to_json())
    arbiter.put_bytes(Epoch(1, "primary", AT).key, Epoch(1, "primary", AT).to_json())
    # Not records: a folder named like one, another name, a temporary file.
    (tmp_path / "a" / EPOCHS_FOLDER / "0000000009.json").mkdir()
    arbiter.put_bytes(f"{EPOCHS_FOLDER}/0000000008.json.bak", b"{}")
    arbiter.put_bytes(f"{EPOCHS_FOLDER}/notes.txt", b"x")
    # An unusable record above the others is reported and passed over.
    arbiter.put_bytes(f"{EPOCHS_FOLDER}/0000000005.json", b'{"epoch": 4}')
    epoch, where, errors = read_epoch([down, arbiter, copy])
    assert (epoch, where) == (Epoch(2, "dr", AT), "a")
    assert len(errors) == 1 and errors[0].startswith("target down: cannot list the epochs (")
    assert arbiter.distrusted() == [
        (
            "a",
            f"{EPOCHS_FOLDER}/0000000005.json",
            f"epoch record {EPOCHS_FOLDER}/0000000005.json is unusable ('site')",
        )
    ]
    assert events(caplog, "dr.record_unreadable") == [
        {
            "target": "a",
            "key": f"{EPOCHS_FOLDER}/0000000005.json",
            "error": f"epoch record {EPOCHS_FOLDER}/0000000005.json is unusable ('site')",
        }
    ]
    assert read_epoch([copy, arbiter])[:2] == (Epoch(1, "primary", AT), "b")
    # Only unusable records: none.
    lone = folder(tmp_path, "c")
    lone.put_bytes(f"{EPOCHS_FOLDER}/0000000001.json", b"[]")
    assert read_epoch([lone]) == (None, "c", [])


def test_a_claim_takes_the_next_number_on_the_arbiter_and_copies_it_to_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arbiter, copy, down = folder(tmp_path, "a"), folder(tmp_path, "b"), broken(tmp_path, "down")
    plus_one = dt.timezone(dt.timedelta(hours=1))
    caplog.set_level(logging.INFO, logger="cellvault")
    first = claim_epoch(
        [arbiter, copy, down], "dr", reason="failover", now=AT.astimezone(plus_one), host="h"
    )
    assert first == Epoch(1, "dr", AT, "failover", "h")
    assert first.at.tzinfo is dt.UTC
    assert arbiter.read_bytes(first.key) == first.to_json() == copy.read_bytes(first.key)
    (failed,) = events(caplog, "fence.copy_failed")
    assert failed["target"] == "down"
    assert failed["error"].startswith("target down: cannot copy epoch 1 (NotADirectoryError")
    assert events(caplog, "fence.claimed") == [{"epoch": 1, "site": "dr", "reason": "failover"}]
    second = claim_epoch([arbiter], "primary", reason="failback", now=AT, over=1)
    assert (second.number, second.site, second.reason) == (2, "primary", "failback")
    assert claim_epoch([arbiter], "dr", reason="t", now=AT).number == 3
    assert [e.name for e in arbiter.list(EPOCHS_FOLDER)].count("0000000003.json") == 1
    # A claim over an outdated view loses: someone took epoch 3 since.
    with pytest.raises(DrError) as info:
        claim_epoch([arbiter], "primary", reason="failback", now=AT, over=2)
    assert info.value.message == (
        "site dr took epoch 3 (t at 2025-03-01T12:00:00Z) since this site (primary) looked; "
        "it did not become active"
    )
    assert info.value.hint == "see 'cellvault dr status'; only one site may be active at a time"
    assert read_epoch([arbiter])[0] == Epoch(3, "dr", AT, "t")
    # Over 0 on an arbiter without epochs: epoch 1.
    fresh = folder(tmp_path, "f")
    assert claim_epoch([fresh], "dr", reason="t", now=AT, over=0).number == 1
    # Over a number an arbiter without epochs never saw (a new arbiter, the view read from
    # a copy): the numbers go on from what the claimant saw.
    assert claim_epoch([folder(tmp_path, "g")], "dr", reason="t", now=AT, over=4).number == 5
    with pytest.raises(ConfigError) as empty:
        claim_epoch([], "dr", reason="t", now=AT)
    assert empty.value.message == "claiming an epoch needs a shared (object-storage) target"


def test_a_claim_of_a_number_already_taken_names_who_took_it(tmp_path: Path) -> None:
    arbiter = folder(tmp_path, "a")
    claim_epoch([arbiter], "dr", reason="failover", now=AT)
    # Epoch 2 exists but cannot be read: the claim of 2 loses to it.
    arbiter.put_bytes(f"{EPOCHS_FOLDER}/0000000002.json", b"{}")
    with pytest.raises(DrError) as info:
        claim_epoch([arbiter], "primary", reason="failback", now=AT)
    assert info.value.message == (
        "epoch 2 was claimed first by site dr (failover at 2025-03-01T12:00:00Z); "
        "this site (primary) did not become active"
    )
    assert info.value.hint == "see 'cellvault dr status'; only one site may be active at a time"
    lone = folder(tmp_path, "b")
    lone.put_bytes(f"{EPOCHS_FOLDER}/0000000001.json", b"{}")
    with pytest.raises(DrError) as info:
        claim_epoch([lone], "primary", reason="failback", now=AT)
    assert info.value.message == (
        "epoch 1 was claimed first by another site; this site (primary) did not become active"
    )


def test_a_claim_needs_a_reachable_arbiter(tmp_path: Path) -> None:
    down, copy = broken(tmp_path, "down"), folder(tmp_path, "b")
    with pytest.raises(DrError) as info:
        claim_epoch([down, copy], "dr", reason="failover", now=AT)
    assert info.value.message.startswith(
        "cannot read the epochs on the arbiter down: target down: cannot list the epochs "
        "(NotADirectoryError"
    )
    assert info.value.hint == (
        "the first shared target decides which site is active; it must be reachable"
    )
    assert not (tmp_path / "b" / EPOCHS_FOLDER).exists()  # nothing copied
    full = FullDisk(TargetSpec("full", str(tmp_path / "full")))
    with pytest.raises(TargetError) as failed:
        claim_epoch([full, copy], "dr", reason="failover", now=AT)
    assert failed.value.message == (
        "target full: cannot claim epoch 1 (OSError: [Errno 28] No space left on device)"
    )
    assert read_epoch([copy]) == (None, "b", [])


class Flaky(LocalTarget):
    """A folder whose listing names records that fail when read (gone, or an I/O error)."""

    def __init__(self, spec: TargetSpec, fail: dict[str, OSError], *, no_folder: bool = False):
        super().__init__(spec)
        self.fail, self.no_folder = fail, no_folder

    def list(self, folder: str) -> list[ObjectInfo]:
        if self.no_folder:
            raise FileNotFoundError(folder)  # an object store without the prefix
        return [*super().list(folder), *(ObjectInfo(n, 10) for n in self.fail)]

    def read_bounded(self, key: str, limit: int) -> bytes:
        error = self.fail.get(key.rsplit("/", 1)[-1])
        if error is not None:
            raise error
        return super().read_bounded(key, limit)


def test_an_epoch_record_that_vanishes_or_fails_when_read(tmp_path: Path) -> None:
    spec = TargetSpec("a", str(tmp_path / "a"))
    gone = Flaky(spec, {"0000000009.json": FileNotFoundError("0000000009.json")})
    gone.put_bytes(Epoch(2, "dr", AT).key, Epoch(2, "dr", AT).to_json())
    assert read_epoch([gone]) == (Epoch(2, "dr", AT), "a", [])  # the next one down
    assert read_epoch([Flaky(spec, {}, no_folder=True)]) == (None, "a", [])
    failing = Flaky(spec, {"0000000009.json": OSError(errno.EIO, "Input/output error")})
    epoch, where, errors = read_epoch([failing, folder(tmp_path, "b")])
    assert (epoch, where) == (None, "b")
    assert errors == [
        "target a: cannot read an epoch record (OSError: [Errno 5] Input/output error) "
        f"(check that {tmp_path / 'a'} is reachable and writable, and the credentials)"
    ]


class FullDisk(LocalTarget):
    """A folder that lists and reads but cannot take a new record."""

    def create_exclusive(self, key: str, data: bytes) -> bool:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_fence_takes_the_epoch_once_and_checks_who_holds_it(tmp_path: Path) -> None:
    arbiter, copy = folder(tmp_path, "a"), folder(tmp_path, "b")
    dr, primary = Fence("dr", [arbiter, copy]), Fence("primary", [arbiter, copy])
    assert dr.names == frozenset({"a", "b"}) and Fence("x", []).names == frozenset()
    assert dr.current() is None and Fence("x", []).current() is None
    assert dr.check("backup") is None and primary.check("backup") is None
    taken = dr.take("failover", now=AT, host="h")
    assert taken == Epoch(1, "dr", AT, "failover", "h")
    # Taking what this site holds claims nothing new.
    assert dr.take("again", now=AT + dt.timedelta(hours=1)) == taken
    assert [e.name for e in arbiter.list(EPOCHS_FOLDER)] == ["0000000001.json"]
    assert dr.current() == taken and dr.check("backup") == taken
    with pytest.raises(Fenced):
        primary.check("push")
    # The other site takes it over what it saw.
    assert primary.take("failback", now=AT, over=1) == Epoch(2, "primary", AT, "failback")
    with pytest.raises(DrError, match="site primary took epoch 2"):
        dr.take("failover", now=AT, over=1)
    with pytest.raises(Fenced):
        dr.check("prune")
    assert primary.check("prune") == Epoch(2, "primary", AT, "failback")
    with pytest.raises(ConfigError, match="needs a shared"):
        Fence("x", []).take("failover", now=AT)


@attrs.define
class DrSettings:
    dr_site_id: str = ""
    dr_targets: tuple[str, ...] = ()


def test_the_fence_of_a_vault_is_its_site_id_and_its_shared_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "Host-7.lan")
    local, s3, oss = folder(tmp_path, "local"), folder(tmp_path, "s3"), folder(tmp_path, "oss")
    targets = [local, s3, oss]
    plain = fence_for(DrSettings(), targets)
    assert (plain.site, [t.name for t in plain.storage], plain.dr) == (
        "host-7",
        ["s3", "oss"],
        False,
    )
    named = fence_for(DrSettings("dr"), targets)
    assert (named.site, [t.name for t in named.storage], named.dr) == ("dr", ["s3", "oss"], True)
    chosen = fence_for(DrSettings("", ("oss", "local")), targets)
    assert (chosen.site, [t.name for t in chosen.storage], chosen.dr) == (
        "host-7",
        ["local", "oss"],
        True,
    )
    assert fence_for(DrSettings(), [local]).storage == []


def test_a_heartbeat_record_is_written_and_read_back_exactly() -> None:
    plus_one = dt.timezone(dt.timedelta(hours=1))
    beat = Heartbeat("dr", dt.datetime(2025, 3, 1, 13, 0, tzinfo=plus_one), "backup", "h1")
    assert Heartbeat.key("dr") == ".dr/heartbeats/dr.json"
    raw = beat.to_json()
    assert (
        raw == b'{"at": "2025-03-01T12:00:00Z", "host": "h1", "site": "dr", "source": "backup"}\n'
    )
    assert Heartbeat.from_json(raw) == Heartbeat("dr", AT, "backup", "h1")
    assert Heartbeat.from_json(b'{"site": "dr", "at": "2025-03-01T12:00:00Z"}') == Heartbeat(
        "dr", AT, "", ""
    )
    assert Heartbeat("dr", AT) == Heartbeat("dr", AT, "heartbeat", "")
    for raw, error in [
        (b'{"site": "dr", "at": "2025-03-01T12:00:00"}', "its time has no time zone"),
        (b'{"site": "dr"}', "'at'"),
        (b'{"at": "2025-03-01T12:00:00Z"}', "'site'"),
        (b'{"site": "D R", "at": "2025-03-01T12:00:00Z"}', "site 'D R' is not a plain name"),
        (b'{"site": "dr", "at": "soon"}', "Invalid isoformat string: 'soon'"),
        (
            b'{"site": "dr", "at": "2025-03-01T12:00:00z"}',
            "Invalid isoformat string: '2025-03-01T12:00:00z'",
        ),
        (b"7", "the heartbeat record is a number, not an object"),
    ]:
        with pytest.raises(DrError) as info:
            Heartbeat.from_json(raw)
        assert info.value.message == f"heartbeat record is unusable ({error})"


def test_heartbeats_are_written_everywhere_and_the_newest_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, down = folder(tmp_path, "a"), folder(tmp_path, "b"), broken(tmp_path, "down")
    assert read_heartbeat([a, b], "dr") == (None, [])
    write_heartbeat(Fence("dr", [b]), now=AT, source="backup")
    assert read_heartbeat([a, b], "dr") == (Heartbeat("dr", AT, "backup", ""), [])
    caplog.set_level(logging.WARNING, logger="cellvault")
    errors = write_heartbeat(Fence("dr", [a, down, b]), now=AT, source="backup", host="h")
    assert len(errors) == 1 and errors[0].startswith(
        "down: target down: cannot write a heartbeat ("
    )
    assert events(caplog, "fence.heartbeat_failed") == [
        {"target": "down", "error": errors[0].removeprefix("down: ")}
    ]
    assert a.read_bytes(".dr/heartbeats/dr.json") == Heartbeat("dr", AT, "backup", "h").to_json()
    assert b.read_bytes(".dr/heartbeats/dr.json") == a.read_bytes(".dr/heartbeats/dr.json")
    later = AT + dt.timedelta(minutes=5)
    assert write_heartbeat(Fence("dr", [b]), now=later, source="heartbeat") == []
    # The newest of the targets, whichever order they are asked in; the failures are reported.
    for order in ([a, down, b], [b, a, down]):
        beat, errors = read_heartbeat(order, "dr")
        assert beat == Heartbeat("dr", later, "heartbeat", "")
        assert len(errors) == 1 and errors[0].startswith(
            "down: target down: cannot read a heartbeat ("
        ), errors
    # Equal times: the first read stays.
    write_heartbeat(Fence("dr", [a]), now=later, source="backup")
    assert read_heartbeat([a, b], "dr")[0] == Heartbeat("dr", later, "backup", "")
    assert read_heartbeat([b, a], "dr")[0] == Heartbeat("dr", later, "heartbeat", "")
    a.put_bytes(".dr/heartbeats/dr.json", b"{")
    beat, errors = read_heartbeat([a, b], "dr")
    assert beat == Heartbeat("dr", later, "heartbeat", "")
    assert errors == [
        "a: heartbeat record is unusable (the heartbeat record is not JSON "
        "(Expecting property name enclosed in double quotes: line 1 column 2 (char 1)))"
    ]
    b.put_bytes(".dr/heartbeats/dr.json", Heartbeat("primary", later).to_json())
    assert read_heartbeat([b], "dr") == (
        None,
        ["b: the heartbeat of site dr names site primary"],
    )
