"""Object Lock on S3, against moto's: locked archives, the chain rule, prune that waits.

The bucket is created with Object Lock enabled (which turns versioning on);
moto then refuses to delete a locked version, as S3 does. The vault's clock
is the real time here: the store compares retention dates with its own.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from cellvault import Cell, Config, TargetSpec, Vault
from cellvault.retention import RetentionPolicy
from tests.servers.fixtures import OssBucket, S3Bucket, _unique_name
from tests.servers.s3 import S3Server

PREFIX = "paas"


@pytest.fixture
def locked_bucket(s3_server: S3Server) -> S3Bucket:
    """A bucket of its own with Object Lock enabled."""
    s3_server.start()
    s3_server.reset()
    bucket = S3Bucket(s3_server, _unique_name("cv-lock"))
    s3_server.client().create_bucket(Bucket=bucket.name, ObjectLockEnabledForBucket=True)
    return bucket


class Clock:
    """The real time, moved by *offset* (a prune "in the future"), one second per call."""

    def __init__(self) -> None:
        self.offset = dt.timedelta()
        self.ticks = 0

    def __call__(self) -> dt.datetime:
        self.ticks += 1
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        return now + self.offset + dt.timedelta(seconds=self.ticks)


def _vault(tmp_path: Path, bucket: S3Bucket, clock: Clock, **config: Any) -> Vault:
    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True, exist_ok=True)
    (cell / "a.txt").write_text("a\n")
    spec = TargetSpec(
        "s3", f"{bucket.url}/{PREFIX}", {**bucket.storage_options, "skip_instance_cache": True}
    )
    return Vault(
        Config(
            backup_dir=tmp_path / "backup",
            cells=[Cell("crm", [cell])],
            targets=[spec],
            retention=RetentionPolicy(keep_full_days=7, keep_incremental_days=10),
            **config,
        ),
        load_entry_points=False,
        clock=clock,
    )


def _retention(bucket: S3Bucket, key: str) -> tuple[str, dt.datetime]:
    head = bucket.client().head_object(Bucket=bucket.name, Key=key)
    return head["ObjectLockMode"], head["ObjectLockRetainUntilDate"].astimezone(dt.UTC)


def _keys(bucket: S3Bucket, ident: str) -> list[str]:
    return sorted(k for k in bucket.objects() if f"/{ident}." in k)


def test_archives_are_locked_and_the_chain_rule_extends_the_full(
    tmp_path: Path, locked_bucket: S3Bucket
) -> None:
    clock = Clock()
    vault = _vault(tmp_path, locked_bucket, clock, object_lock="governance")
    full = vault.backup(kind="full").cells[0].archive
    full_when = dt.datetime.strptime(full[-15:], "%Y%m%d_%H%M%S").replace(tzinfo=dt.UTC)
    keys = _keys(locked_bucket, full)
    assert len(keys) == 3  # data, manifest copy, sidecar
    for key in keys:
        assert _retention(locked_bucket, key) == ("GOVERNANCE", full_when + dt.timedelta(days=7))

    (tmp_path / "cells" / "crm" / "b.txt").write_text("b\n")
    incr = vault.backup(kind="incremental").cells[0].archive
    incr_when = dt.datetime.strptime(incr[-15:], "%Y%m%d_%H%M%S").replace(tzinfo=dt.UTC)
    # The incremental: its own 10 days; its full: extended to the same date (the chain rule).
    for key in _keys(locked_bucket, incr) + keys:
        assert _retention(locked_bucket, key) == ("GOVERNANCE", incr_when + dt.timedelta(days=10))

    # The store refuses to delete a locked version, whoever asks.
    client = locked_bucket.client()
    data_key = next(k for k in keys if k.endswith(".tar.zst"))
    version = client.head_object(Bucket=locked_bucket.name, Key=data_key)["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):
        client.delete_object(Bucket=locked_bucket.name, Key=data_key, VersionId=version)

    # Thirty days on, the policy would delete the full: prune waits for the lock and says so.
    clock.offset = dt.timedelta(days=30)
    (tmp_path / "cells" / "crm" / "c.txt").write_text("c\n")
    newer = vault.backup(kind="full").cells[0].archive
    report = vault.prune()
    assert report.ok, report
    decisions = {str(d.id): d for d in report.results[0].decisions}
    until = (incr_when + dt.timedelta(days=10)).isoformat().replace("+00:00", "Z")
    for ident in (full, incr):
        assert decisions[ident].keep
        assert f"locked on the store until {until}; pruned after that" in decisions[ident].reasons
    assert decisions[newer].keep
    # What a rule keeps is kept for the rule: the store's lock is not asked about, nor said.
    assert not any(r.startswith("locked on the store") for r in decisions[newer].reasons)
    assert _keys(locked_bucket, full) == keys
    assert vault.restore(full, into=tmp_path / "out", skip_prebackup=True).ok


def test_without_object_lock_nothing_is_locked_and_prune_deletes(
    tmp_path: Path, locked_bucket: S3Bucket
) -> None:
    clock = Clock()
    vault = _vault(tmp_path, locked_bucket, clock)
    full = vault.backup(kind="full").cells[0].archive
    client = locked_bucket.client()
    key = _keys(locked_bucket, full)[0]
    assert "ObjectLockRetainUntilDate" not in client.head_object(Bucket=locked_bucket.name, Key=key)
    clock.offset = dt.timedelta(days=30)
    (tmp_path / "cells" / "crm" / "c.txt").write_text("c\n")
    vault.backup(kind="full")
    report = vault.prune()
    assert [str(d.id) for d in report.results[0].removed] == [full]
    assert _keys(locked_bucket, full) == []


def test_a_bad_lock_mode_is_a_configuration_error(tmp_path: Path, locked_bucket: S3Bucket) -> None:
    from cellvault import ConfigError

    with pytest.raises(ConfigError, match="governance, compliance or off"):
        _vault(tmp_path, locked_bucket, Clock(), object_lock="forever")


def test_an_oss_bucket_retention_policy_is_read_and_respected(
    tmp_path: Path, oss_bucket: OssBucket
) -> None:
    clock = Clock()
    cell = tmp_path / "cells" / "crm"
    cell.mkdir(parents=True)
    (cell / "a.txt").write_text("a\n")
    spec = TargetSpec(
        "oss",
        f"{oss_bucket.url}/{PREFIX}",
        {**oss_bucket.storage_options, "skip_instance_cache": True},
    )
    vault = Vault(
        Config(
            backup_dir=tmp_path / "backup",
            cells=[Cell("crm", [cell])],
            targets=[spec],
            retention=RetentionPolicy(keep_full_days=7, keep_incremental_days=3),
        ),
        load_entry_points=False,
        clock=clock,
    )
    full = vault.backup(kind="full").cells[0].archive
    clock.offset = dt.timedelta(days=10)
    (cell / "b.txt").write_text("b\n")
    vault.backup(kind="full")
    oss_bucket.oss2_bucket().init_bucket_worm(30)
    # The store refuses to delete what its policy keeps ...
    import oss2

    with pytest.raises(oss2.exceptions.OssError) as info:
        oss_bucket.oss2_bucket().delete_object(f"{PREFIX}/crm/{full}.json")
    assert info.value.status == 409
    # ... and prune, reading the policy, would not ask it to. (A dry run: the policy
    # protects the bucket's lease objects too, so a real prune could not take its lease.)
    report = vault.prune(dry_run=True)
    assert report.ok, report
    (decision,) = [d for d in report.results[0].decisions if str(d.id) == full]
    assert decision.keep
    assert any(r.startswith("locked on the store until ") for r in decision.reasons), decision
    target = vault.targets[0]
    until = target.locked_until(target.sidecar(target.archive_ids("crm")[0]))
    assert until is not None
    assert dt.timedelta(days=29) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
