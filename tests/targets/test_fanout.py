"""Several targets at once against real servers: the seed's variables, fan-out, incrementals and prune on object storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellvault import Vault, load_env
from tests.ops.test_incremental import snapshot
from tests.servers.fixtures import OssBucket, S3Bucket
from tests.servers.rsyncd import RsyncModule
from tests.targets.helpers import committed, make_cell, oss_spec, s3_spec, vault_for


def test_seed_variables_back_up_to_four_targets_at_once(
    tmp_path: Path,
    s3_bucket: S3Bucket,
    oss_bucket: OssBucket,
    rsync_module: RsyncModule,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ossfs.core

    # ossfs hands files from 100 MiB up to oss2's resumable multipart upload
    # (which splits from 10 MiB); lower its switch so the 12 MiB archive takes
    # the multipart path, as a large archive does in production.
    monkeypatch.setattr(ossfs.core, "SIMPLE_TRANSFER_THRESHOLD", 5 << 20)
    monkeypatch.setenv("HOME", str(tmp_path))  # oss2 keeps its upload checkpoints there
    live = make_cell(tmp_path, big=12 << 20)
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELL_CRM_PATHS": str(live),
        "BACKUP_TARGETS": "local,s3,oss,nas",
        "BACKUP_S3_BUCKET": s3_bucket.name,
        "BACKUP_S3_PREFIX": "paas/backup",
        "BACKUP_S3_ENDPOINT": s3_bucket.endpoint,
        "AWS_ACCESS_KEY_ID": s3_bucket.key,
        "AWS_SECRET_ACCESS_KEY": s3_bucket.secret,
        "BACKUP_OSS_BUCKET": oss_bucket.name,
        "BACKUP_OSS_PREFIX": "paas/backup",
        "BACKUP_OSS_ENDPOINT": oss_bucket.endpoint,
        "OSS_ACCESS_KEY_ID": oss_bucket.key,
        "OSS_ACCESS_KEY_SECRET": oss_bucket.secret,
        "BACKUP_NAS_RSYNC": rsync_module.host_module_for("nas")[0].replace(
            "::", f":{rsync_module.daemon.port}::"
        ),
    }
    # host::module/path with a port: the URL form carries it.
    env["BACKUP_NAS_RSYNC"] = rsync_module.url_for("nas")
    vault = Vault(load_env(env), load_entry_points=False)
    # Small parts, so that the 12 MiB archive goes up as a multipart upload.
    vault.target("s3").multipart_chunk = 5 << 20  # type: ignore[attr-defined]
    report = vault.backup()
    assert report.ok, report
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert set(outcomes) == {"local", "s3", "oss", "nas"}
    assert all(o.ok and o.verified for o in outcomes.values())
    archive = report.cells[0].archive
    assert committed(s3_bucket.objects()) == [f"paas/backup/crm/{archive}.json"]
    assert committed(oss_bucket.objects()) == [f"paas/backup/crm/{archive}.json"]
    assert list(oss_bucket.server.requests_matching("POST", "uploads")), "OSS multipart upload"
    assert s3_bucket.server.uploads(s3_bucket.name) == {}, "no S3 multipart upload left open"
    assert (rsync_module.root / "nas" / "crm" / f"{archive}.json").is_file()
    assert vault.list()[0].targets == ("local", "s3", "oss", "nas")

    before = snapshot(live)
    for name in ("s3", "oss", "nas", "local"):
        verify = vault.verify(targets=[name])
        assert verify.ok and len(verify.results) == 1, verify
        out = tmp_path / f"restore-{name}"
        restored = vault.restore("latest", into=out, source=[name])
        assert restored.ok and restored.cells[0].target == name, restored
        assert snapshot(out / "crm" / "crm") == before


def test_incrementals_and_prune_on_object_storage(
    tmp_path: Path, s3_bucket: S3Bucket, oss_bucket: OssBucket
) -> None:
    live = make_cell(tmp_path)
    vault = vault_for(tmp_path, live, s3_spec(s3_bucket), oss_spec(oss_bucket))
    assert vault.backup(kind="full").ok
    (live / "docs" / "b.txt").write_text("beta")
    inc = vault.backup(kind="incremental")
    assert inc.ok and inc.cells[0].kind == "incremental"
    for name in ("s3", "oss"):
        out = tmp_path / f"r-{name}"
        assert vault.restore("latest", into=out, source=[name]).ok
        assert snapshot(out / "crm" / "crm") == snapshot(live)
