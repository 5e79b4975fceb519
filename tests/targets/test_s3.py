"""The S3 target against moto's real S3 server: interrupted uploads, bad credentials, a missing bucket."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest

from cellvault import TargetSpec
from tests.servers.fixtures import OssBucket, S3Bucket
from tests.targets.helpers import committed, make_cell, s3_spec, vault_for


def test_s3_stopped_mid_upload_leaves_no_committed_archive(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    live = make_cell(tmp_path, big=24 << 20)
    spec = s3_spec(s3_bucket, config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2})
    stopped = threading.Event()

    def on_event(event) -> None:  # type: ignore[no-untyped-def]
        # The archive is packed and the stores begin: pull the plug on S3.
        if event.name == "archive.packed" and not stopped.is_set():
            stopped.set()
            s3_bucket.server.stop()

    vault = vault_for(tmp_path, live, spec, on_event=on_event)
    s3 = vault.target("s3")
    s3.multipart_chunk = 5 << 20  # type: ignore[attr-defined]
    s3.fs.retries = 1  # type: ignore[attr-defined]
    s3.retry_timeout = 5
    report = vault.backup()
    assert not report.ok
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok and outcomes["local"].verified
    assert not outcomes["s3"].ok and outcomes["s3"].stage == "upload"
    assert "target s3" in (report.cells[0].error or "")

    s3_bucket.server.restart()
    assert committed(s3_bucket.objects()) == []
    again = vault.backup()
    assert again.ok, again
    assert [a.targets for a in vault.list()] == [("local",), ("local", "s3")]
    # Whatever the cut upload left behind is debris, cleared by the next run.
    keys = s3_bucket.objects()
    stems = {k.split("/")[-1].split(".")[0] for k in keys if "/crm/" in k}
    assert stems == {again.cells[0].archive}


@pytest.mark.parametrize("kind", ["s3", "oss"])
def test_wrong_credentials_name_the_target_and_never_the_secret(
    tmp_path: Path,
    kind: str,
    s3_bucket: S3Bucket,
    oss_bucket: OssBucket,
    captured_logs: io.StringIO,
) -> None:
    live = make_cell(tmp_path)
    secret = "Sup3rS3cretValue-do-not-print"
    if kind == "s3":
        spec = s3_spec(s3_bucket, secret=secret, key="AKIAWRONGKEY")
        # moto accepts any key unless told to check them.
        s3_bucket.server.require_auth(True)
    else:
        spec = TargetSpec(
            "oss",
            f"{oss_bucket.url}/b",
            {**oss_bucket.storage_options, "secret": secret, "skip_instance_cache": True},
        )
    try:
        vault = vault_for(tmp_path, live, spec)
        report = vault.backup()
    finally:
        if kind == "s3":
            s3_bucket.server.require_auth(False)
    assert not report.ok
    failed = next(t for t in report.cells[0].targets if not t.ok)
    assert failed.target == kind
    text = failed.error or ""
    assert f"target {kind}" in text
    assert (
        "credential" in text
        or "Signature" in text
        or "AccessKey" in text
        or "denied" in text.lower()
    )
    everything = text + str(report.to_dict()) + captured_logs.getvalue()
    assert secret not in everything
    assert committed(s3_bucket.objects() if kind == "s3" else oss_bucket.objects()) == []


def test_missing_bucket_is_a_clear_error(
    tmp_path: Path, s3_bucket: S3Bucket, oss_bucket: OssBucket
) -> None:
    live = make_cell(tmp_path)
    specs = [
        TargetSpec(
            "s3",
            "s3://no-such-bucket-cv/x",
            {**s3_bucket.storage_options, "skip_instance_cache": True},
        ),
        TargetSpec(
            "oss",
            "oss://no-such-bucket-cv/x",
            {**oss_bucket.storage_options, "skip_instance_cache": True},
        ),
    ]
    vault = vault_for(tmp_path, live, *specs)
    report = vault.backup()
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok
    for name in ("s3", "oss"):
        assert not outcomes[name].ok
        assert "bucket" in (outcomes[name].error or "").lower(), outcomes[name].error
