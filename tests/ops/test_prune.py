"""Prune on real targets: what goes, what stays, and that what stays restores."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellvault import Cell, Config, TargetSpec, Vault, hookimpl
from cellvault.archive import Sidecar
from cellvault.cli import cli
from cellvault.config import load_toml
from cellvault.lock import Lease
from cellvault.ops.prune import prune_cell
from cellvault.readlease import ReadLease
from cellvault.report import Failure
from cellvault.retention import RetentionPolicy
from cellvault.run import Event
from cellvault.targets.local import LocalTarget, set_immutable
from tests.system_tools import needs_root, unavailable

from .test_incremental import age, snapshot

START = dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now


def setup(root: Path, **config: object) -> tuple[Vault, Path, Clock]:
    live = root / "crm"
    live.mkdir(parents=True)
    (live / "base.txt").write_text("base")
    age(live, 100)
    clock = Clock()
    cfg = Config(backup_dir=root / "backup", cells=[Cell("crm", [live])], **config)  # type: ignore[arg-type]
    return Vault(cfg, load_entry_points=False, clock=clock), live, clock


def files_of(backup: Path, archive: str) -> list[Path]:
    return sorted((backup / "crm").glob(f"{archive}*"))


def test_seed_defaults_and_what_a_prune_deletes(tmp_path: Path) -> None:
    vault, live, clock = setup(tmp_path)
    made = []
    # Ten days of the seed's schedule: a full at 02:00, incrementals every 6 hours.
    for day in range(10):
        clock.now = START + dt.timedelta(days=day)
        made.append(vault.backup(kind="full").cells[0].archive)
        for step in range(1, 4):
            clock.now = START + dt.timedelta(days=day, hours=6 * step)
            (live / f"d{day}s{step}").write_text(f"{day}-{step}")
            age(live / f"d{day}s{step}", 10)
            made.append(vault.backup(kind="incremental").cells[0].archive)
    clock.now = START + dt.timedelta(days=9, hours=20)

    dry = vault.prune(dry_run=True)
    assert dry.ok and dry.dry_run
    doomed = [str(d.id) for r in dry.results for d in r.removed]
    assert doomed, "ten days of backups under a 7/3-day policy must lose some"
    assert all(files_of(tmp_path / "backup", a) for a in made), "a dry run deletes nothing"

    report = vault.prune()
    assert report.ok
    assert [str(d.id) for r in report.results for d in r.removed] == doomed
    for archive in doomed:
        assert files_of(tmp_path / "backup", archive) == []
    kept = [a.id for a in vault.list()]
    assert set(kept) == set(made) - set(doomed)
    # Fulls of the last 7 days and incrementals of the last 3 days (with their chains) stay.
    for info in vault.list():
        when = dt.datetime.strptime(info.id[-15:], "%Y%m%d_%H%M%S").replace(tzinfo=dt.UTC)
        age_days = (clock.now - when).total_seconds() / 86400
        assert age_days <= 7 or info.id == kept[-1]
    assert vault.verify(all_archives=True).ok


def test_prune_clears_debris_and_respects_a_held_lease(tmp_path: Path) -> None:
    vault, _, clock = setup(tmp_path)
    vault.backup()
    debris = tmp_path / "backup" / "crm" / "cell_crm_20000101_000000.tar.zst"
    debris.write_bytes(b"half an upload")
    other = tmp_path / "backup" / "crm" / "README.txt"
    other.write_text("not ours")

    target = vault.target("local")
    lease = Lease.acquire(target, "crm", "a test holding the cell")
    try:
        held = vault.prune()
    finally:
        lease.release()
    assert not held.ok
    assert "locked by a test holding the cell" in (held.results[0].error or "")
    assert debris.exists()

    clock.now += dt.timedelta(minutes=1)
    report = vault.prune()
    assert report.ok
    assert report.results[0].debris == ("crm/cell_crm_20000101_000000.tar.zst",)
    assert not debris.exists()
    assert other.exists(), "files that are not cellvault's are left alone"


def test_per_target_retention_from_toml(tmp_path: Path) -> None:
    live = tmp_path / "crm"
    live.mkdir()
    (live / "a").write_text("a")
    config = tmp_path / "cellvault.toml"
    config.write_text(
        f"""
backup_dir = "{tmp_path / "backup"}"
[retention]
keep_full_days = 0
keep_incremental_days = 0
keep_last = 1
[cells.crm]
paths = ["{live}"]
[targets.local]
url = "{tmp_path / "backup"}"
[targets.cold]
url = "{tmp_path / "cold"}"
[targets.cold.retention]
keep_full_days = 0
keep_incremental_days = 0
keep_last = 3
"""
    )
    cfg = load_toml(config)
    assert cfg.retention_for("local").keep_last == 1
    assert cfg.retention_for("cold").keep_last == 3
    clock = Clock()
    vault = Vault(cfg, load_entry_points=False, clock=clock)
    for hour in range(4):
        clock.now = START + dt.timedelta(hours=hour)
        assert vault.backup(kind="full").ok
    assert vault.prune().ok
    listing = {a.id: a.targets for a in vault.list()}
    assert sorted(listing.values()).count(("local", "cold")) == 1
    assert len(listing) == 3


def test_cli_prune_dry_run_and_json(tmp_path: Path) -> None:
    vault, _, _ = setup(tmp_path)
    vault.backup()
    env = {
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(tmp_path),
        "BACKUP_KEEP_LAST": "1",
    }
    runner = CliRunner()
    result = runner.invoke(cli, ["prune", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "keep" in result.output and "newest archive of the cell" in result.output
    result = runner.invoke(cli, ["--json", "prune"], env=env)
    assert result.exit_code == 0
    assert '"dry_run": false' in result.output
    bad = runner.invoke(cli, ["prune"], env={**env, "BACKUP_KEEP_LAST": "many"})
    assert bad.exit_code == 2
    assert "BACKUP_KEEP_LAST" in bad.output


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["full", "incremental", "incremental"]), st.integers(1, 40)),
        min_size=1,
        max_size=12,
    ),
    keep_last=st.one_of(st.none(), st.integers(0, 4)),
    keep_daily=st.one_of(st.none(), st.integers(0, 3)),
    full_days=st.one_of(st.none(), st.floats(0, 3)),
    inc_days=st.one_of(st.none(), st.floats(0, 2)),
)
def test_after_any_prune_every_kept_archive_restores(
    steps: list[tuple[str, int]],
    keep_last: int | None,
    keep_daily: int | None,
    full_days: float | None,
    inc_days: float | None,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="cv-prune-"))
    try:
        policy = RetentionPolicy(
            keep_full_days=full_days,
            keep_incremental_days=inc_days,
            keep_last=keep_last,
            keep_daily=keep_daily,
        )
        vault, live, clock = setup(root, retention=policy)
        expected: dict[str, dict[str, tuple]] = {}
        for n, (kind, hours) in enumerate(steps):
            clock.now += dt.timedelta(hours=hours)
            (live / f"f{n}").write_text(str(n))
            age(live / f"f{n}", 10)
            if n and n % 3 == 0:
                (live / f"f{n - 1}").unlink()
            report = vault.backup(kind=kind)
            assert report.ok
            expected[report.cells[0].archive] = snapshot(live)
        clock.now += dt.timedelta(hours=5)
        assert vault.prune().ok
        kept = [a.id for a in vault.list()]
        assert kept, "a cell never loses its newest archive"
        assert kept[-1] == list(expected)[-1]
        for archive in kept:
            out = root / "out" / archive
            restored = vault.restore(archive, into=out)
            assert restored.ok, restored
            assert snapshot(out / "crm" / "crm") == expected[archive]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_prune_on_a_second_target_type(tmp_path: Path) -> None:
    """The same decisions through the generic fsspec target."""
    vault, _, clock = setup(
        tmp_path,
        targets=[
            TargetSpec("local", str(tmp_path / "backup")),
            TargetSpec("mem", f"memory://cv-prune-{uuid.uuid4().hex}"),
        ],
        retention=RetentionPolicy(keep_full_days=None, keep_incremental_days=None, keep_last=2),
    )
    for hour in range(4):
        clock.now = START + dt.timedelta(hours=hour)
        assert vault.backup(kind="full").ok
    # One target named: only it is pruned.
    only = vault.prune(targets=["mem"])
    assert only.ok and [(r.target, r.cell, len(r.removed)) for r in only.results] == [
        ("mem", "crm", 2)
    ]
    kept = [("local",), ("local",), ("local", "mem"), ("local", "mem")]
    assert [a.targets for a in vault.list()] == kept
    assert vault.prune().ok
    assert [a.targets for a in vault.list()] == [("local", "mem"), ("local", "mem")]
    # A cell no longer configured, named: known by its archives on the targets, and pruned.
    clock.now = START + dt.timedelta(hours=5)
    assert vault.backup(kind="full").ok
    gone = Vault(attrs.evolve(vault.config, cells=[]), load_entry_points=False, clock=clock)
    report = gone.prune(["crm"])
    assert report.ok and sorted((r.target, len(r.removed)) for r in report.results) == [
        ("local", 1),
        ("mem", 1),
    ]


class Failures:
    """The failures a vault alerts, as the alert channels receive them."""

    def __init__(self) -> None:
        self.seen: list[Failure] = []

    @hookimpl
    def cellvault_backup_failed(self, failure: Failure) -> None:
        self.seen.append(failure)


def test_a_cell_that_cannot_be_pruned_is_alerted_naming_cell_and_target(tmp_path: Path) -> None:
    vault, _, _ = setup(tmp_path)
    assert vault.backup().ok
    failures = Failures()
    alerting = Vault(vault.config, load_entry_points=False, plugins=[failures])
    lease = Lease.acquire(vault.target("local"), "crm", "a test holding the cell")
    try:
        held = alerting.prune()
    finally:
        lease.release()
    (result,) = held.results
    assert (result.target, result.cell, result.decisions) == ("local", "crm", ())
    assert result.dry_run is False
    assert result.error and "locked by a test holding the cell" in result.error
    (failure,) = failures.seen
    assert (failure.operation, failure.stage, failure.cell, failure.target, failure.error) == (
        "prune",
        "prune",
        "crm",
        "local",
        result.error,
    )


def test_prune_of_named_cells_touches_only_them(tmp_path: Path) -> None:
    lives = {name: tmp_path / name for name in ("crm", "billing")}
    for live in lives.values():
        live.mkdir()
        (live / "base.txt").write_text("base")
        age(live, 100)
    clock = Clock()
    cfg = Config(
        backup_dir=tmp_path / "backup",
        cells=[Cell(name, [live]) for name, live in lives.items()],
        retention=RetentionPolicy(keep_full_days=None, keep_incremental_days=None),
    )
    vault = Vault(cfg, load_entry_points=False, clock=clock)
    for hours in (0, 1):
        clock.now = START + dt.timedelta(hours=hours)
        assert vault.backup(kind="full").ok
    report = vault.prune(cells=["crm"])
    assert [(r.cell, len(r.removed)) for r in report.results] == [("crm", 1)]
    assert len(vault.list("crm")) == 1
    assert len(vault.list("billing")) == 2


def test_a_dry_run_says_what_a_prune_would_do_and_honours_read_leases(tmp_path: Path) -> None:
    vault, _, clock = setup(tmp_path, retention=RetentionPolicy(None, None))
    made = []
    for hours in (0, 1, 2):
        clock.now = START + dt.timedelta(hours=hours)
        made.append(vault.backup(kind="full").cells[0].archive)
    debris = tmp_path / "backup" / "crm" / "cell_crm_20000101_000000.tar.zst"
    debris.write_bytes(b"half an upload")
    target = vault.target("local")
    with ReadLease.acquire(target, "crm", [made[0]], "a restore reading it", wait=0):
        (result,) = vault.prune(dry_run=True).results
    assert (result.target, result.cell, result.dry_run, result.ok) == ("local", "crm", True, True)
    assert result.debris == ("crm/cell_crm_20000101_000000.tar.zst",)
    assert [str(d.id) for d in result.removed] == [made[1]]
    (held,) = [d for d in result.decisions if str(d.id) == made[0]]
    assert held.keep and held.reasons[-1].startswith("held by a restore reading it on host ")
    assert debris.exists() and [a.id for a in vault.list()] == made
    # The prune itself keeps what a read lease holds, and deletes the rest.
    with ReadLease.acquire(target, "crm", [made[0]], "a restore reading it", wait=0):
        (done,) = vault.prune().results
    assert [str(d.id) for d in done.removed] == [made[1]]
    assert [a.id for a in vault.list()] == [made[0], made[2]]


class RecordingTarget(LocalTarget):
    """A local target that remembers the leases taken on it."""

    leases: list[dict[str, object]]
    deleted: list[str]

    def create_exclusive(self, key: str, data: bytes) -> bool:
        if key.startswith(".locks/") and key.endswith(".lock"):  # not the claim of a release
            self.leases.append(json.loads(data))
        return super().create_exclusive(key, data)

    def delete_archive(self, sidecar: Sidecar) -> None:
        self.deleted.append(str(sidecar.id))
        super().delete_archive(sidecar)


def test_a_prune_holds_the_cell_s_lease_as_a_prune_and_deletes_newest_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Read leases wait for a lease held by a prune (it deletes archives) and not for
    # any other: the lease must say "prune".
    vault, _, clock = setup(tmp_path)
    made = []
    for hours in (0, 1, 2):
        clock.now = START + dt.timedelta(hours=hours)
        made.append(vault.backup(kind="full").cells[0].archive)
    target = RecordingTarget(TargetSpec("local", str(tmp_path / "backup")))
    target.leases, target.deleted = [], []
    caplog.set_level(logging.INFO, logger="cellvault.ops.prune")
    now = START + dt.timedelta(days=2, hours=1)
    result = prune_cell(target, "crm", RetentionPolicy(None, None), now, lock_ttl=900)
    assert (result.target, result.cell, result.ok, result.dry_run) == ("local", "crm", True, False)
    # Newest first: no committed archive ever needs one already gone.
    assert target.deleted == [made[1], made[0]]
    records = [r.msg for r in caplog.records if r.name == "cellvault.ops.prune"]
    assert [(r["event"], r["target"], r["archive"]) for r in records] == [  # type: ignore[index]
        ("archive.pruned", "local", made[1]),
        ("archive.pruned", "local", made[0]),
    ]
    assert records[0]["reasons"] == ["full, 2.0 days old, kept by no rule"]  # type: ignore[index]
    (lease,) = target.leases
    assert lease["purpose"] == "prune"
    held = dt.datetime.fromisoformat(str(lease["expires"])) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=600) < held <= dt.timedelta(seconds=900)  # not the default 120


class Recorded:
    """Makes the "local" target a RecordingTarget, and keeps it."""

    def __init__(self) -> None:
        self.made: list[RecordingTarget] = []

    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> RecordingTarget | None:
        if spec.name != "local":
            return None
        target = RecordingTarget(spec)
        target.leases, target.deleted = [], []
        self.made.append(target)
        return target


def test_a_prune_takes_its_lease_for_the_configured_time_says_each_cell_and_ages_run_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vault, _, clock = setup(
        tmp_path, lock_ttl=900, log_keep_days=1, retention=RetentionPolicy(None, None)
    )
    made = []
    for hours in (0, 1, 2):
        clock.now = START + dt.timedelta(hours=hours)
        made.append(vault.backup(kind="full").cells[0].archive)
    # Run logs: twelve of earlier prunes, five days old (real time: their age is their mtime).
    logs = tmp_path / "backup" / "logs"
    old = [logs / f"prune_20240101_0000{n:02d}.log" for n in range(12)]
    five_days_ago = dt.datetime.now(dt.UTC).timestamp() - 5 * 86400
    for n, path in enumerate(old):
        path.write_text("an earlier prune\n")
        os.utime(path, (five_days_ago + n, five_days_ago + n))
    events: list[Event] = []
    recorded = Recorded()
    pruning = Vault(
        vault.config,
        load_entry_points=False,
        plugins=[recorded],
        clock=clock,
        on_event=events.append,
    )
    clock.now = START + dt.timedelta(days=2, hours=1)
    assert pruning.prune(dry_run=True).ok
    assert all(p.exists() for p in old)  # a dry run touches no run log either
    report = pruning.prune()
    assert report.ok
    assert [d for t in recorded.made for d in t.deleted] == [made[1], made[0]]
    (lease,) = [lease for t in recorded.made for lease in t.leases if lease["purpose"] == "prune"]
    held = dt.datetime.fromisoformat(str(lease["expires"])) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(seconds=600) < held <= dt.timedelta(seconds=900)  # the configured 900
    said = [(e.name, e.cell, e.target, e.data) for e in events if e.name == "prune.cell"]
    assert said[-1] == (
        "prune.cell",
        "crm",
        "local",
        {"removed": [made[0], made[1]], "dry_run": False},  # oldest first, as decided
    )
    assert said[0][3]["dry_run"] is True
    # The newest ten prune logs stay (the dry run's and this run's among them); older ones
    # past a day go.
    kept = sorted(p.name for p in logs.glob("prune_*.log"))
    assert len(kept) == 10 and [p for p in old if p.exists()] == old[-8:]


def test_run_logs_that_cannot_be_deleted_are_warned_of_and_the_prune_stands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_root("set the immutable attribute")
    vault, _, _ = setup(tmp_path, log_keep_days=1)
    assert vault.backup(kind="full").ok
    logs = tmp_path / "backup" / "logs"
    stuck = [logs / f"prune_20240101_0000{n:02d}.log" for n in range(12)]
    for path in stuck:
        path.write_text("an earlier prune\n")
        os.utime(path, (0, 0))
    if set_immutable(stuck[0], True) is not None:
        unavailable(f"{tmp_path} has no immutable attribute (not ext4, xfs, btrfs or tmpfs)")
    try:
        caplog.set_level(logging.WARNING, logger="cellvault")
        assert vault.prune().ok
        (warning,) = [
            r.msg for r in caplog.records if isinstance(r.msg, dict)
            and r.msg.get("event") == "runlog.prune_failed"
        ]  # fmt: skip
        assert "Operation not permitted" in str(warning["error"])
        assert str(stuck[0]) in str(warning["error"])
    finally:
        set_immutable(stuck[0], False)


def test_an_archive_whose_data_is_missing_or_cut_is_neither_counted_nor_deleted(
    tmp_path: Path,
) -> None:
    vault, _, clock = setup(
        tmp_path,
        retention=RetentionPolicy(keep_full_days=None, keep_incremental_days=None, keep_last=1),
    )
    made = []
    for hours in (0, 1, 2):
        clock.now = START + dt.timedelta(hours=hours)
        made.append(vault.backup(kind="full").cells[0].archive)
    folder = tmp_path / "backup" / "crm"
    # A sidecar one hour newer than the newest, its data absent (planted, or lost by the store).
    sidecar = json.loads((folder / f"{made[2]}.json").read_text())
    planted = "cell_crm_20250101_050000"
    sidecar |= {"id": planted, "data": f"{planted}.tar.zst"}
    (folder / f"{planted}.json").write_text(json.dumps(sidecar))
    # The oldest archive's data cut short.
    data = folder / f"{made[0]}.tar.zst"
    data.write_bytes(data.read_bytes()[:100])
    clock.now = START + dt.timedelta(days=1)
    report = vault.prune()
    ((result,),) = [report.results]
    by_id = {str(d.id): d for d in result.decisions}
    assert [str(d.id) for d in result.removed] == [made[1]]  # the real newest is kept
    assert by_id[made[2]].keep and "newest archive of the cell" in by_id[made[2]].reasons
    assert by_id[planted].reasons == (
        "its data is missing: not counted by the rules and not deleted (see verify)",
    )
    size = json.loads((folder / f"{made[0]}.json").read_text())["size"]
    assert by_id[made[0]].reasons == (
        f"its data is 100 bytes, the sidecar says {size}: not counted by the rules and not "
        "deleted (see verify)",
    )
    assert (folder / f"{planted}.json").exists() and data.exists()


class GoneOnceLocked:
    """Makes the "local" target fail every listing once the prune holds crm's lease."""

    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> LocalTarget | None:
        if spec.name != "local":
            return None

        class Gone(LocalTarget):
            gone = False

            def create_exclusive(self, key: str, data: bytes) -> bool:
                made = super().create_exclusive(key, data)
                type(self).gone = made
                return made

            def list(self, prefix: str) -> list[Any]:
                if type(self).gone:
                    raise ConnectionError("the store went away")
                return super().list(prefix)

        return Gone(spec)


def test_a_listing_that_fails_while_a_prune_plans_is_an_error_naming_it(tmp_path: Path) -> None:
    vault, _, _ = setup(tmp_path)
    assert vault.backup().ok
    failing = Vault(vault.config, load_entry_points=False, plugins=[GoneOnceLocked()])
    report = failing.prune()
    ((result,),) = [report.results]
    assert not report.ok and result.decisions == ()
    assert result.error == (
        "target local: cannot list archives of cell crm (ConnectionError: the store went away) "
        f"(check that {tmp_path / 'backup'} is reachable and writable, and the credentials)"
    )
    assert files_of(tmp_path / "backup", vault.list()[0].id)  # nothing deleted


class CountingLists:
    """Counts the "local" target's listings, by folder."""

    def __init__(self) -> None:
        self.folders: list[str] = []

    @hookimpl
    def cellvault_make_target(self, spec: TargetSpec) -> LocalTarget | None:
        if spec.name != "local":
            return None
        folders = self.folders

        class Counting(LocalTarget):
            def list(self, prefix: str) -> list[Any]:
                folders.append(prefix)
                return super().list(prefix)

        return Counting(spec)


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_prune_lists_the_cells_folder_to_plan_once(tmp_path: Path, dry_run: bool) -> None:
    """The sidecars and the data sizes come from one listing (a LIST per cell on a store)."""
    vault, _, _ = setup(tmp_path)
    assert vault.backup().ok
    counting = CountingLists()
    pruning = Vault(vault.config, load_entry_points=False, plugins=[counting])
    assert pruning.prune(dry_run=dry_run).ok
    # Which cells have archives; the plan (sidecars and data sizes: once, where
    # it was twice); the debris of interrupted runs (once: a local target
    # unlocks an immutable part of it as it deletes it, without listing again).
    assert counting.folders.count("crm") == 3
