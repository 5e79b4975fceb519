"""Disaster recovery against moto's S3 (and the OSS test server): push, pull, failover, failback.

Two site directories share one bucket. The drill is the seed's section 5 end
to end: the primary backs up and pushes, the standby pulls, the primary is
destroyed, the standby fails over and serves, then hands back, and the
rebuilt primary takes over again, with every cell compared byte for byte.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from cellvault import Cell, Config, TargetSpec, Vault, hookimpl, load_env
from cellvault.cli import cli
from cellvault.config import read_env_file
from cellvault.dr import (
    MARKER_KEY,
    DrError,
    DrSettings,
    FailoverMarker,
    Site,
)
from cellvault.lock import Lease
from tests.helpers import clock, snapshot, write_tree
from tests.servers.fixtures import OssBucket, S3Bucket
from tests.system_tools import import_module

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "dr"
CELLS = ("crm", "billing", "iam")
PREFIX = "paas/backup"


def load_example_plugin() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "failover_plugin", EXAMPLES / "failover_plugin.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def s3_spec(bucket: S3Bucket) -> TargetSpec:
    return TargetSpec(
        "s3", f"{bucket.url}/{PREFIX}", {**bucket.storage_options, "skip_instance_cache": True}
    )


def make_site(
    base: Path,
    site_id: str,
    storage: TargetSpec,
    *,
    cells: tuple[str, ...] = CELLS,
    start: dt.datetime | None = None,
    plugins: tuple[object, ...] = (),
    **config: Any,
) -> Site:
    """A site: its cells under base/cells, its backups in base/backup, the shared storage."""
    backup = base / "backup"
    vault = Vault(
        Config(
            backup_dir=backup,
            cells=[Cell(c, [base / "cells" / c]) for c in cells],
            targets=[TargetSpec("local", str(backup)), storage],
            **config,
        ),
        load_entry_points=False,
        plugins=plugins,
        clock=clock(start) if start else clock(),
    )
    return Site(vault, site_id)


def seed_cells(base: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    for n, cell in enumerate(CELLS):
        write_tree(
            base / "cells" / cell,
            {
                "config.yaml": f"service: {cell}\nreplicas: {n + 1}\n",
                "data/records.bin": rng.randbytes(20_000 + n * 1000),
                "uploads/2025/readme.txt": f"{cell} uploads\n" * 40,
            },
        )
        (base / "cells" / cell / "current").symlink_to("data/records.bin")


def trees(base: Path) -> dict[str, Any]:
    return {c: snapshot(base / "cells" / c) for c in CELLS}


def committed(bucket: S3Bucket) -> list[str]:
    return sorted(
        k.rsplit("/", 1)[1].removesuffix(".json")
        for k in bucket.objects()
        if k.endswith(".json") and "/cell_" in k and ".manifest" not in k
    )


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)  # type: ignore[misc]


# -- the drill -------------------------------------------------------------------------


def test_drill_push_pull_failover_failback(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    storage = s3_spec(s3_bucket)
    plugin = load_example_plugin()
    upstream = tmp_path / "nginx" / "paas_gateway_upstream.conf"
    upstream.parent.mkdir()
    reloads: list[str] = []
    dns: list[tuple[str, str]] = []
    addresses = {"primary": "10.0.0.10:443", "dr": "10.8.0.10:443"}

    def switch() -> Any:
        return plugin.FailoverSwitch(
            addresses,
            upstream_file=upstream,
            reload=lambda: reloads.append(upstream.read_text()),
            dns=lambda record, address: dns.append((record, address)),
            record="paas.example.com",
        )

    primary_dir, standby_dir = tmp_path / "site-primary", tmp_path / "site-dr"
    primary = make_site(primary_dir, "primary", storage, start=utc(2025, 1, 1, 2))
    standby = make_site(standby_dir, "dr", storage, start=utc(2025, 1, 2, 2), plugins=(switch(),))
    started = time.monotonic()

    # 1. The primary: a full backup and two incrementals. The first two go to its
    # own directory only; the push brings them to the object storage.
    seed_cells(primary_dir)
    assert primary.vault.backup(kind="full", targets=["local"]).ok
    (primary_dir / "cells" / "crm" / "config.yaml").write_text("service: crm\nreplicas: 5\n")
    (primary_dir / "cells" / "billing" / "data" / "records.bin").unlink()
    inc = primary.vault.backup(kind="incremental", targets=["local"])
    assert inc.ok and {c.kind for c in inc.cells} == {"incremental"}
    assert committed(s3_bucket) == []

    pushed = primary.push()
    assert pushed.ok and pushed.mode == "push", pushed
    assert len(pushed.copied) == 6
    assert [c.present for c in pushed.cells] == [0, 0, 0]
    assert committed(s3_bucket) == sorted(a.id for a in primary.vault.list(targets=["local"]))
    # Idempotent: nothing is copied twice.
    again = primary.push()
    assert again.ok and again.copied == [] and [c.present for c in again.cells] == [2, 2, 2]

    # A backup that goes to both targets at once: the push has nothing to do.
    write_tree(primary_dir / "cells" / "iam", {"users/alice.json": '{"role": "admin"}'})
    assert primary.vault.backup(kind="incremental").ok
    assert primary.push().copied == []

    # 2. The standby: prepare (directories, checks, pull), then a pull finds nothing new.
    prepared = standby.prepare()
    assert prepared.ok, prepared
    assert {c.target: c.ok for c in prepared.checks} == {"local": True, "s3": True}
    assert prepared.pull is not None and len(prepared.pull.copied) == 9
    assert {c: h.count for c, h in prepared.holdings.items()} == dict.fromkeys(CELLS, 3)
    assert (standby_dir / "backup" / "logs").is_dir()
    assert not any(k.startswith(f"{PREFIX}/.dr/probe") for k in s3_bucket.objects())
    assert standby.pull().copied == []
    status = standby.status()
    assert status.ok and status.active is None
    assert {(lag.cell, lag.behind, lag.ahead, lag.lag_seconds) for lag in status.lag} == {
        (c, 0, 0, 0.0) for c in CELLS
    }
    assert {r.site_id for r in status.sites} == {"primary", "dr"}

    # 3. The primary is gone: its data and its backups.
    before = trees(primary_dir)
    shutil.rmtree(primary_dir)

    # 4. Failover on the standby, restoring the newest archives.
    report = standby.failover(restore="latest")
    assert report.ok, report
    assert trees(standby_dir) == before
    assert report.marker is not None
    assert report.marker.site_id == "dr" and report.marker.previous_site == "primary"
    assert set(report.marker.restored) == set(CELLS)
    assert report.marker.restored == report.marker.verified
    assert set(report.marker_written) == {"s3", "local"}
    assert report.verify is not None and report.verify.ok and len(report.verify.results) == 3
    assert [h.ok for h in report.hooks] == [True]
    assert "server 10.8.0.10:443;" in upstream.read_text() and len(reloads) == 1
    assert dns == [("paas.example.com", "10.8.0.10:443")]
    assert any("DNS" in step for step in report.steps)
    remote = FailoverMarker.from_json(s3_bucket.objects()[f"{PREFIX}/{MARKER_KEY}"])
    assert remote == report.marker
    local_marker = standby.local_marker()
    assert local_marker == report.marker

    # A second failover is refused; so is a push from the (rebuilt) primary.
    with pytest.raises(DrError, match="already in effect"):
        standby.failover()
    rebuilt = make_site(primary_dir, "primary", storage, start=utc(2025, 1, 3, 2))
    with pytest.raises(DrError, match="must not push"):
        rebuilt.push()
    assert standby.status().active == "dr"

    # 5. The standby serves and takes backups: chained onto the pulled archives,
    # one to both targets, one to its own directory only (the hand-back pushes it).
    (standby_dir / "cells" / "crm" / "orders.csv").write_text("id,total\n1,99\n")
    dr_inc = standby.vault.backup(kind="incremental")
    assert dr_inc.ok and {c.kind for c in dr_inc.cells} == {"incremental"}, dr_inc
    (standby_dir / "cells" / "billing" / "config.yaml").write_text("service: billing\nmode: dr\n")
    shutil.rmtree(standby_dir / "cells" / "iam" / "uploads")
    assert standby.vault.backup(kind="incremental", targets=["local"]).ok

    # 6. Failback, first step on the active site: final backup, push, hand-back.
    handback = standby.failback()
    assert handback.ok and handback.step == "handback", handback
    assert handback.marker is not None and handback.marker.handback is not None
    handed = dict(handback.marker.handback.archives)
    assert set(handed) == set(CELLS)
    assert handback.push is not None and handback.push.ok
    served = trees(standby_dir)

    # 7. Then on the rebuilt primary: prepare, take over.
    assert rebuilt.prepare().ok
    takeover = rebuilt.failback()
    assert takeover.ok and takeover.step == "takeover", takeover
    assert takeover.restore is not None and takeover.restore.ok
    assert {c.cell: c.archive for c in takeover.restore.cells} == handed
    assert trees(primary_dir) == served
    assert MARKER_KEY not in {k.removeprefix(f"{PREFIX}/") for k in s3_bucket.objects()}
    history = sorted(k for k in s3_bucket.objects() if "/.dr/history/" in k)
    assert [k.rsplit("_", 2)[-2] for k in history] == ["failover", "failback"]
    assert rebuilt.status().active is None
    assert takeover.marker is not None and takeover.marker.event == "failback"
    assert any("back to site primary" in step for step in takeover.steps)

    # The primary pushes again; the standby's next pull retires its copy of the marker.
    assert rebuilt.push().ok
    pulled = standby.pull()
    assert pulled.ok and any("has ended" in w for w in pulled.warnings), pulled
    assert standby.local_marker() is None
    assert (standby_dir / "backup" / ".cellvault" / "dr" / "history").is_dir()
    print(f"\ndrill: {time.monotonic() - started:.2f}s")


def test_failover_hook_failure_is_reported_and_the_marker_stands(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    class Broken:
        @hookimpl
        def cellvault_failover(self, marker: FailoverMarker) -> None:
            raise RuntimeError("the DNS API answered 403")

    plugin = load_example_plugin()
    calls: list[tuple[str, str]] = []
    working = plugin.FailoverSwitch(
        {"dr": "10.8.0.10:443"}, dns=lambda r, a: calls.append((r, a)), record="paas"
    )
    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "p", "primary", storage)
    seed_cells(tmp_path / "p")
    assert primary.vault.backup().ok
    standby = make_site(
        tmp_path / "s", "dr", storage, start=utc(2025, 1, 2), plugins=(working, Broken())
    )
    report = standby.failover()
    assert not report.ok
    assert report.marker is not None and report.marker.restored == {}
    assert "403" in (report.error or "") and "by hand" in (report.error or "")
    assert [h.ok for h in report.hooks].count(False) == 1
    assert calls == [("paas", "10.8.0.10:443")]  # the other plugin was still called
    assert standby.status().active == "dr"


def test_failover_refuses_when_the_newest_backup_is_not_here_or_does_not_verify(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "p", "primary", storage)
    seed_cells(tmp_path / "p")
    assert primary.vault.backup().ok
    standby = make_site(tmp_path / "s", "dr", storage, start=utc(2025, 1, 2))
    assert standby.pull().ok
    (tmp_path / "p" / "cells" / "crm" / "late.txt").write_text("after the last pull")
    assert primary.vault.backup(cells=["crm"]).ok

    refused = standby.failover(pull=False)
    assert not refused.ok and refused.marker is None
    assert "does not hold the newest" in (refused.error or "")
    assert standby.status().active is None

    # The pull brings it, but this site's copy is damaged: the verify stops it.
    assert standby.pull().ok
    newest = max((tmp_path / "s" / "backup" / "crm").glob("cell_crm_*.tar.zst"))
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    newest.write_bytes(bytes(raw))
    bad = standby.failover()
    assert not bad.ok and "do not verify" in (bad.error or ""), bad
    assert standby.status().active is None
    forced = standby.failover(force=True)
    assert forced.marker is not None and forced.marker.forced
    assert "crm" not in forced.marker.verified


def test_pull_rejects_a_damaged_copy_and_still_copies_what_does_not_need_it(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "p", "primary", storage, cells=("crm",))
    seed_cells(tmp_path / "p")
    damaged = primary.vault.backup(kind="full").cells[0].archive
    (tmp_path / "p" / "cells" / "crm" / "more.txt").write_text("more")
    chained = primary.vault.backup(kind="incremental").cells[0].archive
    newer = primary.vault.backup(kind="full").cells[0].archive
    key = f"{PREFIX}/crm/{damaged}.tar.zst"
    data = bytearray(s3_bucket.objects()[key])
    data[100] ^= 0x01
    s3_bucket.client().put_object(Bucket=s3_bucket.name, Key=key, Body=bytes(data))

    standby = make_site(tmp_path / "s", "dr", storage, cells=("crm",))
    pulled = standby.pull()
    assert not pulled.ok
    assert pulled.copied == [newer]
    error = pulled.cells[0].error or ""
    assert f"archive {damaged}" in error and "sha256" in error, error
    assert (
        f"archive {chained}: its chain needs archive {damaged}, which could not be copied" in error
    )
    local = tmp_path / "s" / "backup" / "crm"
    assert not (local / f"{damaged}.json").exists() and not (local / f"{chained}.json").exists()
    assert standby.vault.verify(targets=["local"]).ok
    spool = tmp_path / "s" / "backup" / ".cellvault" / "spool"
    assert not spool.exists() or not any(p.is_file() for p in spool.rglob("*"))


def test_pull_refuses_a_manifest_copy_larger_than_its_sidecar_allows(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "p", "primary", storage, cells=("crm",))
    seed_cells(tmp_path / "p")
    archive = primary.vault.backup(kind="full").cells[0].archive
    # Planted: 4 MiB where the sidecar declares a manifest of a few hundred bytes.
    key = f"{PREFIX}/crm/{archive}.manifest.json.zst"
    s3_bucket.client().put_object(Bucket=s3_bucket.name, Key=key, Body=b"\0" * (4 << 20))

    standby = make_site(tmp_path / "s", "dr", storage, cells=("crm",))
    pulled = standby.pull()
    assert not pulled.ok and pulled.copied == []
    error = pulled.cells[0].error or ""
    assert f"archive {archive}" in error, error
    assert "its manifest copy is larger than its sidecar allows" in error, error
    local = tmp_path / "s" / "backup" / "crm"
    assert not local.exists() or not any(local.iterdir())
    spool = tmp_path / "s" / "backup" / ".cellvault" / "spool"
    assert not spool.exists() or not any(p.is_file() for p in spool.rglob("*"))


def test_push_of_a_damaged_archive_aborts_its_multipart_upload(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "p", "primary", storage, cells=("crm",))
    seed_cells(tmp_path / "p")
    (tmp_path / "p" / "cells" / "crm" / "big.bin").write_bytes(random.Random(5).randbytes(12 << 20))
    archive = primary.vault.backup(targets=["local"]).cells[0].archive
    s3 = primary.vault.target("s3")
    s3.multipart_chunk = 5 << 20  # type: ignore[attr-defined]
    data = tmp_path / "p" / "backup" / "crm" / f"{archive}.tar.zst"
    raw = bytearray(data.read_bytes())
    raw[-1000] ^= 0x10  # near the end: two parts are uploaded before the check fails
    data.write_bytes(bytes(raw))

    pushed = primary.push()
    assert not pushed.ok and pushed.copied == []
    assert "sha256" in (pushed.cells[0].error or "")
    assert [k for k in s3_bucket.objects() if "/crm/" in k] == []
    assert s3_bucket.server.uploads(s3_bucket.name) == {}


def test_a_cell_locked_by_another_run_is_left_to_it(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    storage = s3_spec(s3_bucket)
    primary = make_site(tmp_path / "p", "primary", storage, cells=("crm", "billing"))
    seed_cells(tmp_path / "p")
    assert primary.vault.backup().ok
    standby = make_site(tmp_path / "s", "dr", storage, cells=("crm", "billing"))
    with Lease.acquire(standby.local, "crm", "sync from s3 (another cron run)"):
        pulled = standby.pull()
    assert pulled.ok
    by_cell = {c.cell: c for c in pulled.cells}
    assert by_cell["crm"].locked and "another cron run" in by_cell["crm"].locked
    assert by_cell["crm"].copied == () and len(by_cell["billing"].copied) == 1
    assert len(standby.pull().copied) == 1  # the next run does it


def test_retention_of_the_destination_decides_what_is_worth_copying(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    storage = s3_spec(s3_bucket)
    times = iter([utc(2025, 1, 1, 2), utc(2025, 1, 10, 2), utc(2025, 1, 12, 2)])
    primary = make_site(tmp_path / "p", "primary", storage, cells=("crm",))
    primary.vault.clock = lambda: next(times)
    seed_cells(tmp_path / "p")
    old = primary.vault.backup(kind="full", targets=["local"]).cells[0].archive
    full = primary.vault.backup(kind="full", targets=["local"]).cells[0].archive
    (tmp_path / "p" / "cells" / "crm" / "x").write_text("x")
    inc = primary.vault.backup(kind="incremental", targets=["local"]).cells[0].archive
    primary.vault.clock = lambda: utc(2025, 1, 12, 3)
    pushed = primary.push()
    assert pushed.ok
    # Older than 7 days at 2025-01-12, not the newest full: the storage would prune it.
    assert pushed.copied == [full, inc]
    assert pushed.cells[0].skipped == (old,)


def test_push_to_oss_spools_and_pull_from_it(tmp_path: Path, oss_bucket: OssBucket) -> None:
    storage = TargetSpec(
        "oss",
        f"{oss_bucket.url}/{PREFIX}",
        {**oss_bucket.storage_options, "skip_instance_cache": True},
    )
    primary = make_site(tmp_path / "p", "primary", storage, cells=("crm",))
    seed_cells(tmp_path / "p")
    (tmp_path / "p" / "cells" / "crm" / "big.bin").write_bytes(random.Random(3).randbytes(3 << 20))
    assert primary.vault.backup(targets=["local"]).ok
    pushed = primary.push(verify=True)
    assert pushed.ok and len(pushed.copied) == 1, pushed
    standby = make_site(tmp_path / "s", "dr", storage, cells=("crm",))
    assert standby.pull(verify=True).copied == pushed.copied
    assert standby.vault.verify(targets=["local"]).ok
    out = tmp_path / "out"
    assert standby.vault.restore("latest", into=out, source=["local"]).ok
    assert snapshot(out / "crm" / "crm") == snapshot(tmp_path / "p" / "cells" / "crm")


# -- a pull killed mid-copy ------------------------------------------------------------------


def site_env(base: Path, bucket: S3Bucket, site: str, **extra: str) -> dict[str, str]:
    return {
        "BACKUP_DIR": str(base / "backup"),
        "BACKUP_CELLS": "crm media",
        "BACKUP_CELLS_ROOT": str(base / "cells"),
        "BACKUP_TARGETS": "local,s3",
        "BACKUP_S3_BUCKET": bucket.name,
        "BACKUP_S3_PREFIX": PREFIX,
        "BACKUP_S3_ENDPOINT": bucket.endpoint,
        "BACKUP_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": bucket.key,
        "AWS_SECRET_ACCESS_KEY": bucket.secret,
        "DR_SITE_ID": site,
        **extra,
    }


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def test_pull_killed_mid_copy_leaves_no_half_archive_and_resumes(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    primary_dir, standby_dir = tmp_path / "primary", tmp_path / "standby"
    write_tree(primary_dir / "cells" / "crm", {"a.txt": "alpha\n" * 1000})
    big = random.Random(7).randbytes(50 << 20)
    write_tree(primary_dir / "cells" / "media", {"video.bin": big})
    primary = Site(
        Vault(load_env(site_env(primary_dir, s3_bucket, "primary")), load_entry_points=False)
    )
    t0 = time.monotonic()
    assert primary.vault.backup(kind="full", targets=["local"]).ok
    (primary_dir / "cells" / "crm" / "b.txt").write_text("beta")
    write_tree(primary_dir / "cells" / "media", {"thumb.jpg": b"\xff\xd8" * 100})
    assert primary.vault.backup(kind="incremental", targets=["local"]).ok
    t1 = time.monotonic()
    pushed = primary.push()
    push_seconds = time.monotonic() - t1
    assert pushed.ok and len(pushed.copied) == 4
    print(
        f"\nbackup 50 MiB+: {t1 - t0:.2f}s; push {pushed.bytes / 2**20:.1f} MiB in "
        f"{push_seconds:.2f}s ({pushed.bytes / 2**20 / push_seconds:.1f} MiB/s)"
    )
    media = sorted(a.id for a in primary.vault.list(["media"]))
    big_archive = media[0]
    total = next(a.size for a in primary.vault.list(["media"]) if a.id == big_archive)

    env = {
        **os.environ,
        **site_env(standby_dir, s3_bucket, "dr", DR_PULL_ONLY="1", BACKUP_JOBS="1"),
    }
    spool = standby_dir / "backup" / ".cellvault" / "spool" / "sync" / "local" / "media"
    child = subprocess.Popen(
        [sys.executable, "-m", "cellvault", "sync"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        def growing() -> int:
            for part in spool.glob("*.part") if spool.is_dir() else ():
                try:
                    size = part.stat().st_size
                except FileNotFoundError:
                    continue
                if 0 < size < total:
                    return size
            return 0

        seen = wait_for(growing, 60, "the big archive's spool file to grow")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert seen < total

    # No half archive: every sidecar has its whole data, and it verifies.
    standby = Site(Vault(load_env(site_env(standby_dir, s3_bucket, "dr")), load_entry_points=False))
    local = standby_dir / "backup"
    sidecars = sorted(p.stem for p in local.glob("*/cell_*.json") if ".manifest" not in p.name)
    assert big_archive not in sidecars
    for stem in sidecars:
        assert (local / stem.split("_")[1] / f"{stem}.tar.zst").is_file()
    if sidecars:
        assert standby.vault.verify(targets=["local"], all_archives=True).ok
    assert list(spool.glob("*.part")), "the killed copy left its spool file"

    # Run again: the debris goes, the rest is copied, nothing twice.
    t2 = time.monotonic()
    again = standby.pull()
    pull_seconds = time.monotonic() - t2
    assert again.ok, again
    assert set(again.copied).isdisjoint(sidecars)
    assert sorted(set(again.copied) | set(sidecars)) == sorted(pushed.copied)
    assert big_archive in again.copied
    media_sync = next(c for c in again.cells if c.cell == "media")
    assert any(d.endswith(".part") for d in media_sync.debris)
    assert not spool.exists() or not list(spool.iterdir())
    assert standby.vault.verify(targets=["local"], all_archives=True).ok
    assert standby.pull().copied == []
    print(
        f"pull after the kill: {again.bytes / 2**20:.1f} MiB in {pull_seconds:.2f}s "
        f"({again.bytes / 2**20 / pull_seconds:.1f} MiB/s)"
    )
    out = tmp_path / "out"
    assert standby.vault.restore("latest", cells=["media"], into=out, source=["local"]).ok
    assert (out / "media" / "media" / "video.bin").read_bytes() == big


# -- the command line ----------------------------------------------------------------------


def test_command_line_sync_status_failover(tmp_path: Path, s3_bucket: S3Bucket) -> None:
    primary_dir, standby_dir = tmp_path / "primary", tmp_path / "standby"
    seed_cells(primary_dir)
    runner = CliRunner()

    def run(env: dict[str, str], *args: str) -> Any:
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert "Traceback" not in result.output + result.stderr
        return result

    penv = {**site_env(primary_dir, s3_bucket, "primary"), "BACKUP_CELLS": " ".join(CELLS)}
    senv = {
        **site_env(standby_dir, s3_bucket, "dr", DR_PULL_ONLY="1"),
        "BACKUP_CELLS": " ".join(CELLS),
    }
    assert run(penv, "backup", "--target", "local").exit_code == 0
    pushed = run(penv, "sync")
    assert pushed.exit_code == 0, pushed.output + pushed.stderr
    assert (
        pushed.output.count("copied cell_") == 3
        and "sync (push, site primary): ok" in pushed.output
    )

    prepared = run(senv, "dr", "prepare")
    assert prepared.exit_code == 0, prepared.output + prepared.stderr
    assert "ok   target s3" in prepared.output and "prepare site dr: ok" in prepared.output
    pulled = run(senv, "--json", "sync")
    assert pulled.exit_code == 0
    body = json.loads(pulled.output)
    assert body["ok"] and body["mode"] == "pull" and body["cells"][0]["copied"] == []

    # A concurrent run: the cell is skipped with a message, exit 0.
    standby = Site(Vault(load_env(senv), load_entry_points=False))
    with Lease.acquire(standby.local, "crm", "sync from s3"):
        locked = run(senv, "sync", "--cell", "crm")
    assert locked.exit_code == 0
    assert "skip crm s3 -> local: cell crm on target local is locked by sync" in locked.stderr

    status = run(senv, "dr", "status", "--json")
    assert status.exit_code == 0
    state = json.loads(status.output)
    assert state["active"] is None and {lag["behind"] for lag in state["lag"]} == {0}

    failed = run(senv, "dr", "failover", "--restore", "latest")
    assert failed.exit_code == 0, failed.output + failed.stderr
    assert "Next steps:" in failed.output and "failover to site dr: ok" in failed.output
    assert trees(standby_dir) == trees(primary_dir)
    again = run(senv, "dr", "failover")
    assert again.exit_code == 1 and "already in effect" in again.stderr
    text = run(penv, "dr", "status")
    assert "active: dr since" in text.output
    refused = run(penv, "sync")
    assert refused.exit_code == 1 and "must not push" in refused.stderr


# -- examples and configuration ---------------------------------------------------------------


def test_env_examples_configure_both_sites() -> None:
    primary = read_env_file(EXAMPLES / "env.primary.example")
    standby = read_env_file(EXAMPLES / "env.standby.example")
    p_settings, s_settings = DrSettings.from_env(primary), DrSettings.from_env(standby)
    assert (p_settings.site_id, p_settings.pull_only) == ("primary", False)
    assert (s_settings.site_id, s_settings.pull_only) == ("dr", True)
    assert p_settings.storage == s_settings.storage == ("s3",)
    for env in (primary, standby):
        config = load_env(env)
        assert [t.name for t in config.target_specs] == ["local", "s3"]
        assert config.dr_site_id == env["DR_SITE_ID"] and config.dr_targets == ("s3",)
        assert DrSettings.from_config(config) == DrSettings.from_env(env)
    assert {k: primary[k] for k in primary if k.startswith("BACKUP_S3")} == {
        k: standby[k] for k in standby if k.startswith("BACKUP_S3")
    }


def test_cron_example_lines_run_cellvault() -> None:
    lines = [
        line
        for line in (EXAMPLES / "cron.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    commands = [line.split(None, 5)[5] for line in lines]
    assert any("sync --pull-only" in c and "env.standby" in c for c in commands)
    assert any("backup --type full" in c and c.endswith("backup.log 2>&1") for c in commands)
    assert [line.split()[0] for line in lines if "--pull-only" in line] == ["*/15"]


def test_kubernetes_example_parses() -> None:
    yaml = import_module("yaml", ".[test]")  # PyYAML (the test extra) reads the example
    docs = list(yaml.safe_load_all((EXAMPLES / "deploy_standby.yaml.example").read_text()))
    kinds = [d["kind"] for d in docs]
    for kind in ("Namespace", "Deployment", "Service", "CronJob"):
        assert kind in kinds
    pull = next(
        d for d in docs if d["kind"] == "CronJob" and d["metadata"]["name"] == "cellvault-pull"
    )
    assert pull["spec"]["schedule"] == "*/15 * * * *"
    container = pull["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["cellvault", "sync", "--pull-only"]
    assert container["envFrom"][0]["secretRef"]["name"] == "cellvault-dr-env"
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in docs} == {"paas-dr"}


def test_failover_plugin_example_from_env(tmp_path: Path) -> None:
    plugin = load_example_plugin()
    upstream = tmp_path / "upstream.conf"
    switch = plugin.FailoverSwitch.from_env(
        {
            "DR_SWITCH_UPSTREAM_FILE": str(upstream),
            "DR_SWITCH_UPSTREAM_PRIMARY": "10.0.0.10:443",
            "DR_SWITCH_UPSTREAM_DR": "10.8.0.10:443",
            "DR_SWITCH_RELOAD": "true",
        }
    )
    marker = FailoverMarker(site_id="dr", at=utc(2025, 1, 2), host="standby-1")
    switch.cellvault_failover(marker)
    assert "server 10.8.0.10:443;" in upstream.read_text()
    with pytest.raises(LookupError, match="no address for site 'elsewhere'"):
        switch.cellvault_failover(FailoverMarker(site_id="elsewhere", at=utc(2025, 1, 2), host="h"))


def test_settings_and_marker_round_trip() -> None:
    settings = DrSettings.from_env(
        {"DR_SITE_ID": "x"}, {"DR_SITE_ID": "dr", "DR_TARGET": "s3, oss"}
    )
    assert settings == DrSettings("dr", False, ("s3", "oss"))
    with pytest.raises(Exception, match="DR_PULL_ONLY"):
        DrSettings.from_env({"DR_PULL_ONLY": "maybe"})
    with pytest.raises(Exception, match="invalid DR_SITE_ID"):
        DrSettings.from_env({"DR_SITE_ID": "Site A"})
    marker = FailoverMarker(
        site_id="dr",
        at=utc(2025, 1, 2, 3, 4, 5),
        host="h",
        previous_site="primary",
        restored={"crm": "cell_crm_20250102_030000"},
    )
    assert FailoverMarker.from_json(marker.to_json()) == marker
    assert json.loads(marker.to_json())["at"] == "2025-01-02T03:04:05Z"
    with pytest.raises(DrError, match="unusable"):
        FailoverMarker.from_json(b'{"site": 1}')


def test_dr_watch_examples_run_the_watch() -> None:
    yaml = import_module("yaml", ".[test]")  # PyYAML (the test extra) reads the example
    docs = list(yaml.safe_load_all((EXAMPLES / "dr-watch-deployment.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["cellvault", "dr", "watch"]
    env = {e["name"]: e["value"] for e in container["env"]}
    config = load_env(
        {**env, "BACKUP_DIR": "/backup/paas", "BACKUP_CELLS": "crm", "BACKUP_CELLS_ROOT": "/srv"}
    )
    from cellvault.dr import WatchSettings
    from cellvault.traffic.k8s import K8sSwitch

    settings = WatchSettings.from_config(config)
    assert settings.primary == "primary" and len(settings.urls) == 2
    assert K8sSwitch.parse(env["DR_SWITCH_K8S"]).name == "paas-gateway"
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["rules"][0]["verbs"] == ["get", "patch"]
    assert pod["serviceAccountName"] == "cellvault-dr-watch"
    unit = (EXAMPLES / "cellvault-dr-watch.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.split()[-2:] == ["dr", "watch"]


def test_pull_refuses_a_forged_archive_and_copies_the_signed_ones(
    tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    from cellvault.signing import generate_keypair

    site_key = generate_keypair(tmp_path / "site.key")
    storage = s3_spec(s3_bucket)
    primary = make_site(
        tmp_path / "p", "primary", storage, cells=("crm",), signing_key=site_key.private
    )
    seed_cells(tmp_path / "p")
    forged = primary.vault.backup(kind="full").cells[0].archive
    (tmp_path / "p" / "cells" / "crm" / "more.txt").write_text("more")
    chained = primary.vault.backup(kind="incremental").cells[0].archive
    newer = primary.vault.backup(kind="full").cells[0].archive
    # Someone with write access to the bucket changes a signed field of the oldest sidecar.
    key = f"{PREFIX}/crm/{forged}.json"
    body = json.loads(s3_bucket.objects()[key])
    body["roots"] = {"crm": "/etc"}
    s3_bucket.client().put_object(Bucket=s3_bucket.name, Key=key, Body=json.dumps(body).encode())

    standby = make_site(
        tmp_path / "s", "dr", storage, cells=("crm",), verify_keys=[site_key.public_key]
    )
    pulled = standby.pull()
    assert not pulled.ok
    assert pulled.copied == [newer]
    error = pulled.cells[0].error or ""
    assert f"archive {forged}" in error and "does not match the sidecar" in error, error
    assert (
        f"archive {chained}: its chain needs archive {forged}, which could not be copied" in error
    )
    local = tmp_path / "s" / "backup" / "crm"
    assert not (local / f"{forged}.json").exists() and not (local / f"{chained}.json").exists()
    # What arrived is the signed original, still signed.
    assert "signature" in json.loads((local / f"{newer}.json").read_text())
    assert standby.vault.verify(targets=["local"], level="full").ok
