"""The OSS target against the suite's OSS-protocol server: retries of failing requests."""

from __future__ import annotations

from pathlib import Path

from tests.ops.test_incremental import snapshot
from tests.servers.fixtures import OssBucket
from tests.targets.helpers import make_cell, oss_spec, vault_for


def test_oss_failing_every_third_request_is_retried(tmp_path: Path, oss_bucket: OssBucket) -> None:
    live = make_cell(tmp_path, big=1 << 20)
    vault = vault_for(tmp_path, live, oss_spec(oss_bucket))
    oss_bucket.server.fail_every(3, status=503)
    report = vault.backup()
    oss_bucket.server.reset_faults()
    assert report.ok, report
    assert any(r.status == 503 for r in oss_bucket.server.request_log)
    assert vault.verify(targets=["oss"]).ok
    out = tmp_path / "out"
    assert vault.restore("latest", into=out, source=["oss"]).ok
    assert snapshot(out / "crm" / "crm") == snapshot(live)
