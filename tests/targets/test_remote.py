"""S3, OSS and NAS targets against real servers: fan-out, faults, credentials.

No mocks of s3fs or ossfs: moto's S3 server, the OSS-protocol server of the
test suite and a real rsync daemon answer over HTTP and the rsync protocol.
"""

from __future__ import annotations

import io
import logging
import os
import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault import Cell, Config, TargetSpec, Vault, load_env
from cellvault.log import configure_logging
from tests.servers.fixtures import OssBucket, S3Bucket
from tests.servers.rsyncd import RsyncModule

from ..test_incremental import snapshot


def make_cell(root: Path, big: int = 0) -> Path:
    live = root / "crm"
    (live / "docs").mkdir(parents=True)
    (live / "docs" / "a.txt").write_text("alpha\n" * 100)
    (live / "empty").mkdir()
    (live / "link").symlink_to("docs/a.txt")
    if big:
        (live / "big.bin").write_bytes(random.Random(1).randbytes(big))
    return live


def vault_for(tmp_path: Path, live: Path, *specs: TargetSpec, **kwargs: object) -> Vault:
    backup_dir = tmp_path / "backup"
    targets = [TargetSpec("local", str(backup_dir)), *specs]
    return Vault(
        Config(backup_dir=backup_dir, cells=[Cell("crm", [live])], targets=targets),
        load_entry_points=False,
        **kwargs,
    )  # type: ignore[arg-type]


def committed(objects: dict[str, bytes]) -> list[str]:
    return sorted(
        k for k in objects if k.endswith(".json") and "/cell_" in k and ".manifest" not in k
    )


def s3_spec(bucket: S3Bucket, **extra: object) -> TargetSpec:
    options = {**bucket.storage_options, "skip_instance_cache": True, **extra}
    return TargetSpec("s3", f"{bucket.url}/backups", options)


def oss_spec(bucket: OssBucket) -> TargetSpec:
    return TargetSpec(
        "oss", f"{bucket.url}/backups", {**bucket.storage_options, "skip_instance_cache": True}
    )


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("json", logging.DEBUG, stream)
    try:
        yield stream
    finally:
        logging.getLogger("cellvault").removeHandler(handler)


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


def test_any_fsspec_url_is_a_target(tmp_path: Path) -> None:
    live = make_cell(tmp_path)
    vault = vault_for(
        tmp_path, live, TargetSpec("mem", "memory://cellvault-test-" + os.urandom(4).hex())
    )
    assert type(vault.target("mem")).__name__ == "FsspecTarget"
    assert vault.backup().ok
    out = tmp_path / "out"
    assert vault.restore("latest", into=out, source=["mem"]).ok
    assert snapshot(out / "crm" / "crm") == snapshot(live)


def test_rsync_read_only_module_fails_that_target_only(
    tmp_path: Path, rsync_module: RsyncModule
) -> None:
    live = make_cell(tmp_path)
    vault = vault_for(tmp_path, live, TargetSpec("nas", rsync_module.url_for("nas")))
    assert vault.backup().ok
    rsync_module.set_read_only(True)
    try:
        report = vault.backup()
    finally:
        rsync_module.set_read_only(False)
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok
    assert not outcomes["nas"].ok and "target nas" in (outcomes["nas"].error or "")
    assert len(list((rsync_module.root / "nas" / "crm").glob("*.json"))) == 1


@pytest.fixture
def tiny_mount(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a NAS that fills up."""
    mount = tmp_path / "nas"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a tmpfs for the full-NAS test: {proc.stderr.decode()}")
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_nas_mount_commits_nothing_there(tmp_path: Path, tiny_mount: Path) -> None:
    live = make_cell(tmp_path, big=3 << 20)
    vault = vault_for(tmp_path, live, TargetSpec("nas", str(tiny_mount)))
    report = vault.backup()
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok
    assert not outcomes["nas"].ok
    assert "No space left" in (outcomes["nas"].error or ""), outcomes["nas"].error
    assert list(tiny_mount.rglob("cell_*.json")) == []
    assert [
        p.name for p in tiny_mount.rglob("*") if p.is_file() and not p.name.endswith(".lock")
    ] == []


def test_read_only_nas_mount_is_a_clear_error(tmp_path: Path, tiny_mount: Path) -> None:
    live = make_cell(tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    vault = vault_for(tmp_path, live, TargetSpec("nas", str(tiny_mount)))
    report = vault.backup()
    outcomes = {t.target: t for t in report.cells[0].targets}
    assert outcomes["local"].ok
    assert not outcomes["nas"].ok
    assert "Read-only" in (outcomes["nas"].error or ""), outcomes["nas"].error


def test_rsync_over_ssh_backs_up_verifies_and_restores(tmp_path: Path, ssh_server) -> None:  # type: ignore[no-untyped-def]
    """``BACKUP_NAS_RSYNC=user@host:path``: rsync through a real sshd on 127.0.0.1."""
    from cellvault.config import _rsync_url

    live = make_cell(tmp_path)
    nas_dir = tmp_path / "nas-over-ssh"
    url = _rsync_url(f"{ssh_server.user}@127.0.0.1:{nas_dir}")
    assert url == f"rsync+ssh://{ssh_server.user}@127.0.0.1/{nas_dir}"
    # The seed's form carries no port; the test server's is given in the URL.
    url = url.replace("@127.0.0.1/", f"@127.0.0.1:{ssh_server.port}/")
    spec = TargetSpec("nas", url, {"ssh_options": ssh_server.ssh_options})
    vault = vault_for(tmp_path, live, spec)
    report = vault.backup()
    assert report.ok, report
    archive = report.cells[0].archive
    assert (nas_dir / "crm" / f"{archive}.json").is_file()
    (live / "docs" / "b.txt").write_text("beta")
    assert vault.backup(kind="incremental").ok
    assert vault.verify(targets=["nas"]).ok
    out = tmp_path / "out"
    assert vault.restore("latest", into=out, source=["nas"]).ok
    assert snapshot(out / "crm" / "crm") == snapshot(live)
    assert vault.prune(targets=["nas"]).ok
