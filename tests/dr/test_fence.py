"""DR fencing by epoch against moto's S3: a fenced old primary writes nothing the active site restores."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cellvault import TargetSpec, Vault, hookimpl, load_env
from cellvault.archive import ArchiveId
from cellvault.cli import cli
from cellvault.dr import Site
from cellvault.errors import ConfigError, DrError, Fenced
from cellvault.fence import (
    EPOCHS_FOLDER,
    Epoch,
    Fence,
    claim_epoch,
    read_epoch,
    written_after_fence,
)
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
