"""Quick tests of each rule of failover, failback and the marker store, on folders.

Two sites share a folder as their object storage, with one small cell each:
a failover or a failback here takes a fraction of a second (the mutation
group ``dr`` runs these; the drill against S3 in test_dr.py stays the end to
end test).
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from cellvault import Cell, Config, TargetSpec, Vault, hookimpl
from cellvault.archive import ArchiveId
from cellvault.dr import MARKER_KEY, DrError, FailoverMarker, Site
from cellvault.dr.failover import _Failover
from cellvault.dr.failover import _switch as switch_to
from cellvault.dr.failover import failover as failover_of
from cellvault.dr.markers import MarkerStore
from cellvault.dr.records import HISTORY_FOLDER, SITES_FOLDER, Handback, SiteRecord
from cellvault.dr.steps import failover_steps, takeover_steps
from cellvault.errors import ConfigError, Fenced
from cellvault.fence import claim_epoch, read_epoch
from cellvault.lock import Lease
from cellvault.report import iso
from cellvault.targets.local import LocalTarget
from tests.helpers import clock, write_tree

AT = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def site(
    tmp_path: Path,
    name: str,
    *,
    cells: tuple[str, ...] = ("crm",),
    start: dt.datetime = AT,
    shared: tuple[str, ...] = ("nas",),
    plugins: tuple[object, ...] = (),
) -> Site:
    """Site *name*: its cells under tmp_path/name/cells, its backups beside, the shared folders."""
    base = tmp_path / name
    for cell in cells:
        write_tree(base / "cells" / cell, {"a.txt": f"{cell} on {name}\n"})
    vault = Vault(
        Config(
            backup_dir=base / "backup",
            cells=[Cell(c, [base / "cells" / c]) for c in cells],
            targets=[
                TargetSpec("local", str(base / "backup")),
                *(TargetSpec(s, str(tmp_path / s)) for s in shared),
            ],
        ),
        load_entry_points=False,
        plugins=plugins,
        clock=clock(start),
    )
    return Site(vault, name)


def nas(tmp_path: Path, name: str = "nas") -> LocalTarget:
    return LocalTarget(TargetSpec(name, str(tmp_path / name)))


def pair(tmp_path: Path, **kw: Any) -> tuple[Site, Site]:
    """A primary that backed up and pushed, and a standby (an hour later) that has not pulled."""
    primary = site(tmp_path, "primary", **kw)
    assert primary.vault.backup(kind="full").ok
    assert primary.push().ok
    return primary, site(tmp_path, "dr", start=AT + dt.timedelta(hours=1), **kw)


def test_a_failover_pulls_verifies_takes_the_epoch_and_writes_the_marker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    _primary, standby = pair(tmp_path)
    (newest,) = [str(i) for i in nas(tmp_path).archive_ids("crm")]
    report = standby.failover()
    assert report.ok and report.error is None, report
    assert report.epoch == 1 and report.pull is not None and report.pull.ok
    epoch = read_epoch([nas(tmp_path)])[0]
    assert epoch is not None and (epoch.number, epoch.site, epoch.reason) == (1, "dr", "failover")
    assert report.restore is None and report.warnings == ()
    marker = report.marker
    assert marker is not None
    assert (marker.site_id, marker.event, marker.previous_site) == ("dr", "failover", "primary")
    assert marker.host == standby.vault.host
    assert dict(marker.verified) == {"crm": newest} and dict(marker.restored) == {}
    assert marker.forced is False and marker.handback is None
    assert report.marker_written == ("nas", "local")
    assert FailoverMarker.from_json((tmp_path / "nas" / MARKER_KEY).read_bytes()) == marker
    assert standby.marker() == (marker, "nas")
    assert standby.local_marker() == marker
    assert [r.ok for r in report.verify.results] == [True]  # type: ignore[union-attr]
    records = {r.site_id: r.action for r in standby.context.markers.records()}
    assert records == {"dr": "failover", "primary": "push"}
    assert report.steps == failover_steps(marker, restored=False)
    assert events(caplog, "dr.failover") == [
        {"site": "dr", "restored": {}, "written": ["nas", "local"]}
    ]


def archive_of(tmp_path: Path, name: str, cell: str = "crm") -> Path:
    """The newest archive of *cell* in site *name*'s backup directory."""
    return max((tmp_path / name / "backup" / cell).glob(f"cell_{cell}_*.tar.zst"))


def damage(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def claim_on_first_event(s: Site, tmp_path: Path, by: str, at: str | None = None) -> None:
    """Another site claims the next epoch while *s* is on its way (at *s*'s first event *at*)."""
    claimed: list[object] = []

    def on_event(event: Any) -> None:
        if not claimed and at in (None, event.name):
            claimed.append(claim_epoch([nas(tmp_path)], by, reason="failover", now=AT))

    s.vault.on_event = on_event


class Hooks:
    """Records each hook call; fails the failover hook when *fail*."""

    def __init__(self, *, fail: bool = False, switched: str | None = "dns") -> None:
        self.fail, self.switched = fail, switched
        self.markers: list[FailoverMarker] = []
        self.switches: list[tuple[str, str | None, str]] = []

    @hookimpl
    def cellvault_failover(self, marker: FailoverMarker) -> None:
        self.markers.append(marker)
        if self.fail:
            raise RuntimeError("the DNS API answered 403")

    @hookimpl
    def cellvault_switch_traffic(
        self, site: str, previous_site: str | None, event: str, config: object
    ) -> str | None:
        self.switches.append((site, previous_site, event))
        return self.switched


# -- failover -------------------------------------------------------------------------


def test_a_failover_in_effect_is_refused_unless_forced(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    first = standby.failover()
    assert first.ok and first.marker is not None
    since = iso(first.marker.at)
    with pytest.raises(DrError) as again:
        standby.failover()
    assert again.value.message == (
        f"a failover to this site is already in effect since {since} "
        f"(marker on nas, written by host {standby.vault.host})"
    )
    assert again.value.hint == (
        "see 'cellvault dr status'; after the primary recovers use 'cellvault dr failback'; "
        "--force writes a new marker anyway"
    )
    other = site(tmp_path, "dr2", start=AT + dt.timedelta(hours=2))
    with pytest.raises(DrError, match="a failover to site dr is already in effect since"):
        other.failover()
    forced = other.failover(force=True)
    assert forced.ok and forced.epoch == 2, forced
    assert forced.marker is not None and forced.marker.forced
    assert forced.marker.previous_site == "dr"
    assert standby.marker()[0] == forced.marker


def test_a_failover_with_nothing_to_force_is_not_marked_forced(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    report = standby.failover(force=True)
    assert report.ok and report.marker is not None and report.marker.forced is False


def test_a_failover_refuses_without_the_newest_archive_here_unless_forced(
    tmp_path: Path,
) -> None:
    primary, standby = pair(tmp_path)
    nothing = standby.failover(pull=False)
    assert nothing.ok is False and nothing.marker is None and nothing.pull is None
    assert nothing.error == (
        "this site does not hold the newest backups: cell crm: no archive matching latest on "
        "this site (fix the pull and run again, or --force to fail over with what is here)"
    )
    assert standby.pull().ok
    older = str(archive_of(tmp_path, "dr").name).removesuffix(".tar.zst")
    write_tree(tmp_path / "primary" / "cells" / "crm", {"b.txt": "later\n"})
    assert primary.vault.backup(kind="incremental").ok and primary.push().ok
    newer = str(nas(tmp_path).archive_ids("crm")[-1])
    assert newer > older
    behind = standby.failover(pull=False)
    problem = (
        f"cell crm: nas holds {newer}, newer than {older} on this site (the pull did not bring it)"
    )
    assert behind.error == (
        f"this site does not hold the newest backups: {problem} "
        "(fix the pull and run again, or --force to fail over with what is here)"
    )
    assert standby.marker() == (None, None) and behind.epoch is None
    # An archive named by id is not "the newest": a newer one elsewhere is no problem.
    named = standby.failover(pull=False, restore=older, skip_prebackup=True)
    assert named.ok and named.warnings == (), named
    assert named.marker is not None and dict(named.marker.restored) == {"crm": older}
    assert dict(named.marker.verified) == {"crm": older} and not named.marker.forced


def test_a_forced_failover_behind_the_storage_says_so_and_is_marked_forced(
    tmp_path: Path,
) -> None:
    primary, standby = pair(tmp_path)
    assert standby.pull().ok
    older = str(archive_of(tmp_path, "dr").name).removesuffix(".tar.zst")
    write_tree(tmp_path / "primary" / "cells" / "crm", {"b.txt": "later\n"})
    assert primary.vault.backup(kind="incremental").ok and primary.push().ok
    newer = str(nas(tmp_path).archive_ids("crm")[-1])
    forced = standby.failover(pull=False, force=True)
    assert forced.ok and forced.marker is not None and forced.marker.forced
    assert forced.warnings == (
        f"cell crm: nas holds {newer}, newer than {older} on this site (the pull did not bring it)",
    )
    assert dict(forced.marker.verified) == {"crm": older}


def test_a_cell_here_only_and_an_unreadable_storage_target(tmp_path: Path) -> None:
    _primary, standby = pair(tmp_path, cells=("crm", "iam"), shared=("nas", "far"))
    # iam has archives on this site only (backed up here, never pushed).
    assert standby.vault.backup(cells=["iam"], kind="full").ok
    assert standby.pull().ok
    report = standby.failover(pull=False)
    assert report.ok and report.warnings == (), report
    assert report.marker is not None and sorted(report.marker.verified) == ["crm", "iam"]
    assert report.marker_written == ("nas", "far", "local")
    # The second target is now a file: what it holds cannot be told.
    other = site(tmp_path, "dr2", cells=("crm",), shared=("nas", "far"))
    assert other.pull().ok
    shutil.rmtree(tmp_path / "far")
    (tmp_path / "far").write_text("not a folder\n")
    refused = other.failover(pull=False, force=True)
    assert refused.ok and refused.marker is not None and refused.marker.forced
    assert refused.warnings[0] == (
        "cell iam has archives on the object storage but is not configured here"
    )
    assert refused.warnings[1].startswith("cell crm: cannot tell what far holds: target far:")
    assert any("target far: cannot write the failover marker" in w for w in refused.warnings)
    assert refused.marker_written == ("nas", "local")


def test_a_failover_warns_of_cells_on_the_storage_not_configured_here(tmp_path: Path) -> None:
    primary = site(tmp_path, "primary", cells=("crm", "iam"))
    assert primary.vault.backup(kind="full").ok and primary.push().ok
    standby = site(tmp_path, "dr", cells=("crm",), start=AT + dt.timedelta(hours=1))
    report = standby.failover()
    assert report.ok, report
    assert report.warnings == (
        "cell iam has archives on the object storage but is not configured here",
    )
    assert report.marker is not None and list(report.marker.verified) == ["crm"]


def test_a_site_with_no_cell_and_no_archive_does_not_fail_over(tmp_path: Path) -> None:
    pair(tmp_path)
    empty = site(tmp_path, "dr", cells=())
    report = empty.failover(pull=False)
    assert report.ok is False and report.error == (
        "this site holds no archive of any cell and has no cell configured"
    )
    # Without configured cells, the cells with archives here are failed over.
    assert empty.pull().ok
    report = empty.failover(pull=False)
    assert report.ok and report.marker is not None and list(report.marker.verified) == ["crm"]


def test_a_failover_refuses_an_archive_that_does_not_verify_unless_forced(
    tmp_path: Path,
) -> None:
    _, standby = pair(tmp_path)
    assert standby.pull().ok
    damage(archive_of(tmp_path, "dr"))
    bad = standby.failover(pull=False)
    assert bad.ok is False and bad.marker is None and bad.epoch is None
    assert (bad.error or "").startswith("the newest archives do not verify on this site: cell_crm_")
    assert bad.verify is not None and not bad.verify.ok
    forced = standby.failover(pull=False, force=True)
    assert forced.ok and forced.marker is not None and forced.marker.forced
    assert dict(forced.marker.verified) == {}


def test_a_failover_stops_when_another_site_took_the_epoch_meanwhile(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    claim_on_first_event(standby, tmp_path, "dr2")
    report = standby.failover()
    assert report.ok is False and report.marker is None and report.epoch is None
    assert (report.error or "").startswith(
        "this site could not take the DR epoch, so it did not fail over: "
    )
    assert "site dr2" in (report.error or "")
    assert standby.marker() == (None, None)


def test_a_failover_restores_and_a_failed_restore_writes_no_marker(tmp_path: Path) -> None:
    _primary, standby = pair(tmp_path)
    report = standby.failover(restore="latest", skip_prebackup=True)
    assert report.ok and report.restore is not None and report.restore.ok
    (newest,) = [str(i) for i in nas(tmp_path).archive_ids("crm")]
    assert report.marker is not None and dict(report.marker.restored) == {"crm": newest}
    assert (tmp_path / "dr" / "cells" / "crm" / "a.txt").read_text() == "crm on primary\n"
    assert report.steps == failover_steps(report.marker, restored=True)
    assert report.steps != failover_steps(report.marker, restored=False)
    # On another standby whose cell cannot be written, the restore fails: no marker.
    other = site(tmp_path, "dr2", start=AT + dt.timedelta(hours=2))
    shutil.rmtree(tmp_path / "dr2" / "cells")
    (tmp_path / "dr2" / "cells").write_text("not a folder\n")
    failed = other.failover(restore="latest", skip_prebackup=True, force=True)
    assert failed.ok is False and failed.marker is None and failed.epoch == 2
    assert (failed.error or "").startswith(
        "the restore failed, so no failover marker was written (this site holds epoch 2: the "
        "old primary is fenced; run the failover again with --force once the cause is fixed): "
    )
    assert standby.marker()[0] == report.marker


def test_the_previous_site_is_the_epoch_holder_before_the_site_records(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    claim_epoch([nas(tmp_path)], "old", reason="failover", now=AT)
    report = standby.failover()
    assert report.ok and report.epoch == 2
    assert report.marker is not None and report.marker.previous_site == "old"


def test_the_previous_site_is_not_this_site_when_it_holds_the_epoch(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    claim_epoch([nas(tmp_path)], "dr", reason="failover", now=AT)
    report = standby.failover()
    assert report.ok and report.marker is not None
    assert report.marker.previous_site == "primary"  # from the site records
    given = failover_of(standby.context, previous_site="given", force=True)
    assert given.marker is not None and given.marker.previous_site == "dr"  # the marker's site


def test_the_previous_site_given_by_the_caller(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    report = failover_of(standby.context, previous_site="given")
    assert report.ok and report.marker is not None and report.marker.previous_site == "given"


def test_failover_hooks_and_the_traffic_switch(tmp_path: Path) -> None:
    hooks = Hooks()
    _primary, _ = pair(tmp_path)
    standby = site(tmp_path, "dr", start=AT + dt.timedelta(hours=1), plugins=(hooks,))
    report = standby.failover()
    assert report.ok and report.error is None
    assert hooks.markers == [report.marker]
    assert hooks.switches == [("dr", "primary", "failover")]
    assert [(h.ok, h.detail) for h in report.hooks] == [(True, None), (True, "dns")]
    assert report.steps and all(isinstance(s, str) for s in report.steps)
    # Without the switch (dr watch switches itself), only the failover hook is called.
    other_hooks = Hooks(fail=True)
    other = site(tmp_path, "dr2", start=AT + dt.timedelta(hours=2), plugins=(other_hooks,))
    failed = failover_of(other.context, force=True, switch=False)
    assert failed.ok is False and failed.marker is not None and other_hooks.switches == []
    assert failed.error is not None and failed.error.startswith(
        "failover done and marker written, but hook(s) failed: "
    )
    assert "403" in failed.error and failed.error.endswith("; switch the traffic by hand")
    assert other.marker()[0] == failed.marker  # the marker stands


def test_a_marker_written_nowhere_stops_the_switch(tmp_path: Path) -> None:
    hooks = Hooks()
    _, standby = pair(tmp_path, plugins=(hooks,))
    ctx = standby.context
    (tmp_path / "nas" / MARKER_KEY).mkdir(parents=True)
    (tmp_path / "nas" / MARKER_KEY / "x").write_text("x")
    ctx.markers.local_path.mkdir(parents=True)
    (ctx.markers.local_path / "x").write_text("x")
    marker = FailoverMarker(site_id="dr", at=AT, host="h")
    report = switch_to(ctx, _Failover(ctx), marker)
    assert report.ok is False and hooks.markers == []
    assert (report.error or "").startswith(
        "the failover marker could not be written anywhere: target nas: cannot write the "
        "failover marker"
    )
    assert f"; cannot write {ctx.markers.local_path} (" in (report.error or "")


# -- failback -------------------------------------------------------------------------


def failed_over(tmp_path: Path, **kw: Any) -> tuple[Site, Site]:
    """A primary and a standby that failed over (restoring), then wrote to its cell."""
    primary, standby = pair(tmp_path, **kw)
    assert standby.failover(restore="latest", skip_prebackup=True).ok
    write_tree(tmp_path / "dr" / "cells" / "crm", {"during.txt": "written on dr\n"})
    return primary, standby


def later(s: Site, hours: int = 3) -> Site:
    s.vault.clock = clock(AT + dt.timedelta(hours=hours))
    return s


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The fields of each log event *name* (cellvault logs structured events)."""
    return [
        {k: v for k, v in r.msg.items() if k not in ("event", "logger", "level", "timestamp")}
        for r in caplog.records
        if isinstance(r.msg, dict) and r.msg.get("event") == name
    ]


def test_a_failback_hands_back_then_the_primary_takes_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    hooks = Hooks()
    primary, standby = failed_over(tmp_path, plugins=(hooks,))
    handback = standby.failback()
    assert handback.ok and handback.step == "handback" and handback.error is None, handback
    assert handback.backup is not None and handback.backup.ok
    assert handback.push is not None and handback.push.ok
    newest = str(nas(tmp_path).archive_ids("crm")[-1])
    assert newest == archive_of(tmp_path, "dr").name.removesuffix(".tar.zst")
    meta = standby.local.sidecar(nas(tmp_path).archive_ids("crm")[-1]).meta
    assert (meta.kind, meta.reason) == ("incremental", "failback")  # the final backup
    marker = handback.marker
    assert marker is not None and marker.handback is not None
    assert (marker.handback.site_id, dict(marker.handback.archives)) == ("dr", {"crm": newest})
    assert handback.marker_written == ("nas", "local") and handback.steps
    assert standby.marker() == (marker, "nas")
    records = {r.site_id: r.action for r in standby.context.markers.records()}
    assert records["dr"] == "handback"
    hooks.markers.clear()
    hooks.switches.clear()
    takeover = later(primary).failback(skip_prebackup=True)
    assert takeover.ok and takeover.step == "takeover" and takeover.error is None, takeover
    assert (handback.site, takeover.site) == ("dr", "primary")
    assert 0 < handback.duration < 60 and 0 < takeover.duration < 60
    assert takeover.epoch == 2 and takeover.warnings == ()
    epoch = read_epoch([nas(tmp_path)])[0]
    assert epoch is not None and (epoch.number, epoch.site, epoch.reason) == (
        2,
        "primary",
        "failback",
    )
    back = takeover.marker
    assert back is not None
    assert (back.site_id, back.event, back.previous_site) == ("primary", "failback", "dr")
    assert back.host == primary.vault.host and marker.handback.host == standby.vault.host
    assert dict(back.restored) == {"crm": newest} and dict(back.verified) == {"crm": newest}
    assert back.handback == marker.handback and back.forced is False
    assert (tmp_path / "primary" / "cells" / "crm" / "during.txt").read_text() == "written on dr\n"
    assert takeover.restore is not None and takeover.restore.cells[0].safety_backup is None
    assert takeover.restore.ok and takeover.pull is not None and takeover.pull.ok
    assert takeover.verify is not None and [r.ok for r in takeover.verify.results] == [True]
    assert takeover.marker_written == ("nas",)
    assert takeover.steps == takeover_steps(back, restored=True)
    assert events(caplog, "dr.failback") == [{"site": "primary", "restored": {"crm": newest}}]
    assert hooks.markers == [back] and hooks.switches == [("primary", "dr", "failback")]
    assert [h.ok for h in takeover.hooks] == [True, True]
    # The marker is gone everywhere; the failover and the failback are in the history.
    assert primary.marker() == (None, None) and primary.local_marker() is None
    assert standby.marker() == (None, None)
    history = sorted(p.name for p in (tmp_path / "nas" / HISTORY_FOLDER).iterdir())
    assert history == sorted([marker.history_name, back.history_name])
    local = sorted(p.name for p in (primary.state_dir / "history").iterdir())
    assert local == history
    records = {r.site_id: r.action for r in primary.context.markers.records()}
    assert records["primary"] == "failback"


def test_a_failback_needs_a_failover_in_effect(tmp_path: Path) -> None:
    primary, _ = pair(tmp_path)
    with pytest.raises(DrError) as info:
        primary.failback()
    assert info.value.message == "no failover is in effect: there is nothing to fail back"
    assert info.value.hint == "'cellvault dr status' shows which site is active"
    alone = site(tmp_path, "alone", shared=())
    with pytest.raises(ConfigError, match=r"^a failback needs an object-storage target"):
        alone.failback()


def test_a_takeover_needs_the_hand_back_unless_forced(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    assert standby.vault.backup(kind="incremental").ok and standby.push().ok
    with pytest.raises(DrError) as info:
        later(primary).failback()
    assert info.value.message == "site dr is active and has not handed back yet"
    assert "run 'cellvault dr failback' there first" in (info.value.hint or "")
    assert primary.marker()[0] is not None and primary.marker()[0].site_id == "dr"  # type: ignore[union-attr]
    forced = primary.failback(force=True, skip_prebackup=True)
    assert forced.ok and forced.marker is not None and forced.marker.forced, forced
    newest = str(nas(tmp_path).archive_ids("crm")[-1])
    assert dict(forced.marker.restored) == {"crm": newest} and forced.marker.handback is None
    assert (tmp_path / "primary" / "cells" / "crm" / "during.txt").is_file()
    assert primary.marker() == (None, None)


def handed(standby: Site, archives: dict[str, str]) -> FailoverMarker:
    """Publish the standby's marker with a hand-back of *archives*."""
    marker = standby.marker()[0]
    assert marker is not None
    back = Handback(site_id="dr", host="h", at=AT + dt.timedelta(hours=2), archives=archives)
    marker = attrs.evolve(marker, handback=back)
    standby.context.markers.publish(marker)
    return marker


def test_a_takeover_refuses_when_the_newest_here_is_not_the_one_handed_back(
    tmp_path: Path,
) -> None:
    primary, standby = failed_over(tmp_path, cells=("crm", "iam"))
    first = str(nas(tmp_path).archive_ids("crm")[0])
    iam = str(nas(tmp_path).archive_ids("iam")[0])
    wanted = "cell_crm_20250301_125959"
    handed(standby, {"crm": wanted, "iam": iam})
    refused = later(primary).failback(skip_prebackup=True)
    assert refused.ok is False and refused.verify is None and refused.epoch is None
    assert refused.marker == standby.marker()[0] and refused.pull is not None
    assert refused.error == (
        f"cell crm: the newest archive here is {first}, not {wanted} that site dr handed back "
        "(were backups taken on this site during the failover?)"
    )
    assert refused.warnings == ()
    forced = primary.failback(skip_prebackup=True, force=True)
    assert forced.ok and forced.marker is not None and forced.marker.forced, forced
    assert forced.warnings == (refused.error,)
    assert dict(forced.marker.verified) == {"iam": iam}  # crm is not taken over
    assert dict(forced.marker.restored) == {"iam": iam}


def test_a_takeover_of_a_cell_without_an_archive_here(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    crm = str(nas(tmp_path).archive_ids("crm")[0])
    # The hand-back is read back in the order of the cells' names: billing first.
    handed(
        standby,
        {
            "audit": "cell_audit_20250301_120000",
            "billing": "cell_billing_20250301_120000",
            "crm": crm,
        },
    )
    refused = later(primary).failback(skip_prebackup=True)
    problems = (
        "cell audit: no archive here after the pull",
        "cell billing: no archive here after the pull",
    )
    assert refused.error == "; ".join(problems)
    forced = primary.failback(skip_prebackup=True, force=True)
    assert forced.ok and forced.marker is not None, forced
    assert forced.warnings == problems
    assert dict(forced.marker.verified) == {"crm": crm}


def test_a_takeover_of_a_failover_without_an_epoch_takes_the_first(tmp_path: Path) -> None:
    primary, _ = pair(tmp_path)
    # A failover marker and hand-back written without a DR epoch (as before fencing).
    archive = str(nas(tmp_path).archive_ids("crm")[0])
    back = Handback(
        site_id="dr", host="h", at=AT + dt.timedelta(hours=2), archives={"crm": archive}
    )
    site(tmp_path, "dr").context.markers.publish(attrs.evolve(MARKER, handback=back))
    takeover = later(primary).failback(skip_prebackup=True)
    assert takeover.ok and takeover.epoch == 1, takeover


def test_a_forced_takeover_without_hand_back_uses_every_cell_on_the_storage(
    tmp_path: Path,
) -> None:
    primary, _standby = failed_over(tmp_path, cells=("crm", "iam"))
    # Without a hand-back, every cell the storage has is taken over (its newest archive).
    forced = later(primary).failback(force=True, restore=False)
    assert forced.ok and forced.marker is not None, forced
    assert sorted(forced.marker.verified) == ["crm", "iam"]
    assert forced.restore is None and dict(forced.marker.restored) == {}


def test_a_takeover_refuses_archives_that_do_not_verify_even_forced(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    assert standby.failback(final_backup=None).ok  # hands back the primary's own archive
    damage(archive_of(tmp_path, "primary"))
    for force in (False, True):
        refused = later(primary).failback(skip_prebackup=True, force=force)
        assert refused.ok is False and refused.epoch is None and refused.warnings == ()
        assert refused.marker == standby.marker()[0] and refused.pull is not None
        assert refused.verify is not None and not refused.verify.ok
        assert (refused.error or "").startswith(
            "the handed-back archives do not verify here: cell_crm_"
        )
    assert standby.marker()[0] is not None


def test_a_takeover_stops_when_another_site_took_the_epoch_meanwhile(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    assert standby.failback().ok
    claim_on_first_event(later(primary), tmp_path, "dr2")
    report = primary.failback(skip_prebackup=True)
    assert report.ok is False and report.epoch is None and report.warnings == ()
    assert (report.error or "").startswith(
        "this site could not take the DR epoch, so it did not take over: "
    )
    assert report.marker == standby.marker()[0] and report.pull is not None
    assert report.verify is not None and report.verify.ok
    assert standby.marker()[0] is not None


def test_a_takeover_without_restore_and_a_failed_restore(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path, cells=("crm", "iam"))
    assert standby.failback().ok
    # The recovered primary no longer serves iam: it is handed back, not restored.
    primary = site(tmp_path, "primary", start=AT + dt.timedelta(hours=3))
    shutil.rmtree(tmp_path / "primary" / "cells")
    (tmp_path / "primary" / "cells").write_text("not a folder\n")
    failed = primary.failback(skip_prebackup=True)
    assert failed.ok is False and failed.epoch == 2, failed
    assert failed.restore is not None and not failed.restore.ok
    assert failed.marker == standby.marker()[0] and failed.pull is not None
    assert failed.verify is not None and failed.verify.ok
    assert (failed.error or "").startswith(
        "the restore failed; the failover marker stays (this site holds epoch 2: run the "
        "failback again once the cause is fixed): "
    )
    assert failed.warnings == ("cell iam was handed back but is not configured here; not restored",)
    assert standby.marker()[0] is not None
    (tmp_path / "primary" / "cells").unlink()
    unrestored = primary.failback(restore=False)
    assert unrestored.ok and unrestored.restore is None and unrestored.warnings == ()
    assert unrestored.marker is not None and dict(unrestored.marker.restored) == {}
    assert unrestored.steps == takeover_steps(unrestored.marker, restored=False)
    assert unrestored.steps != takeover_steps(unrestored.marker, restored=True)
    assert sorted(unrestored.marker.verified) == ["crm", "iam"]


def test_a_failed_takeover_hook_is_reported_after_the_marker_is_cleared(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    assert standby.failback().ok
    hooks = Hooks(fail=True)
    primary = site(tmp_path, "primary", start=AT + dt.timedelta(hours=3), plugins=(hooks,))
    report = primary.failback(skip_prebackup=True)
    assert report.ok is False and report.marker is not None and hooks.markers == [report.marker]
    assert (report.error or "").startswith("failback done and marker cleared, but hook(s) failed: ")
    assert (report.error or "").endswith("; switch the traffic back by hand")
    assert primary.marker() == (None, None)


def test_a_hand_back_without_final_backup_hands_back_the_newest_here(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    report = standby.failback(final_backup=None)
    assert report.ok and report.backup is None
    (only,) = [str(i) for i in nas(tmp_path).archive_ids("crm")]
    assert report.marker is not None and report.marker.handback is not None
    assert dict(report.marker.handback.archives) == {"crm": only}


def test_a_hand_back_takes_the_final_backup_of_the_kind_asked(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    report = standby.failback(final_backup="full")
    assert report.ok and report.backup is not None
    newest = nas(tmp_path).archive_ids("crm")[-1]
    meta = standby.local.sidecar(newest).meta
    assert (meta.kind, meta.reason) == ("full", "failback")
    assert report.marker is not None and report.marker.handback is not None
    assert dict(report.marker.handback.archives) == {"crm": str(newest)}


def test_a_hand_back_stops_when_its_final_backup_or_push_fails(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    shutil.rmtree(tmp_path / "dr" / "cells" / "crm")
    report = standby.failback()
    assert report.ok is False and report.backup is not None and not report.backup.ok
    assert report.error == "the final backup failed; nothing was handed back"
    assert report.push is None
    write_tree(tmp_path / "dr" / "cells" / "crm", {"a.txt": "back\n"})
    shutil.rmtree(tmp_path / "nas" / "crm")
    (tmp_path / "nas" / "crm").write_text("not a folder\n")
    pushed = standby.failback(final_backup=None)
    assert pushed.ok is False and pushed.push is not None and not pushed.push.ok
    assert pushed.error == "the push failed; nothing was handed back"
    assert standby.marker()[0] is not None and standby.marker()[0].handback is None  # type: ignore[union-attr]


def test_a_hand_back_stops_when_it_is_fenced(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    claim_epoch([nas(tmp_path)], "dr2", reason="failover", now=AT)
    with pytest.raises(Fenced):
        standby.failback(final_backup=None)
    assert standby.marker()[0] is not None and standby.marker()[0].handback is None  # type: ignore[union-attr]


# -- the marker store -----------------------------------------------------------------


def broken(tmp_path: Path, name: str) -> LocalTarget:
    """A target whose folder is a file: every call fails."""
    (tmp_path / name).write_text("not a folder\n")
    return nas(tmp_path, name)


def store(tmp_path: Path, *targets: LocalTarget) -> MarkerStore:
    return MarkerStore(list(targets), tmp_path / "state")


MARKER = FailoverMarker(site_id="dr", at=AT, host="h", previous_site="primary")


def test_the_first_storage_target_that_answers_decides_the_marker(tmp_path: Path) -> None:
    down, a, b = broken(tmp_path, "down"), nas(tmp_path, "a"), nas(tmp_path, "b")
    b.put_bytes(MARKER_KEY, MARKER.to_json())
    # a answers (it has none), so b's marker is not the one in effect.
    marker, where, errors = store(tmp_path, down, a, b).remote()
    assert (marker, where) == (None, "a")
    assert len(errors) == 1 and errors[0].startswith("target down: cannot read the failover marker")
    assert store(tmp_path, down, b).remote()[:2] == (MARKER, "b")
    assert store(tmp_path, down).remote()[:2] == (None, None)
    assert store(tmp_path).remote() == (None, None, [])
    assert store(tmp_path, b).current() == (MARKER, "b")
    assert store(tmp_path, a).current() == (None, None)


def test_this_sites_copy_of_the_marker_counts_only_when_the_storage_cannot_be_read(
    tmp_path: Path,
) -> None:
    down, a = broken(tmp_path, "down"), nas(tmp_path, "a")
    local = store(tmp_path, down)
    assert local.local() is None and local.current() == (None, None)
    written, errors = local.publish(MARKER)
    assert written == ["local"] and len(errors) == 1
    assert errors[0].startswith("target down: cannot write the failover marker")
    assert local.local_path == tmp_path / "state" / "failover.json"
    assert local.local() == MARKER and local.current() == (MARKER, "local")
    assert store(tmp_path, a).current() == (None, None)  # a answers: no marker
    assert store(tmp_path).current() == (MARKER, "local")


def test_a_marker_is_published_everywhere_and_retired_into_the_history(tmp_path: Path) -> None:
    a, b = nas(tmp_path, "a"), nas(tmp_path, "b")
    markers = store(tmp_path, a, b)
    assert markers.publish(MARKER) == (["a", "b", "local"], [])
    for t in (a, b):
        assert FailoverMarker.from_json(t.read_bytes(MARKER_KEY)) == MARKER
    assert markers.retire(MARKER, everywhere=False) == []
    assert markers.local() is None
    assert a.read_bytes(MARKER_KEY) and b.read_bytes(MARKER_KEY)  # the storage keeps it
    history = tmp_path / "state" / "history" / MARKER.history_name
    assert FailoverMarker.from_json(history.read_bytes()) == MARKER
    assert markers.retire(MARKER, everywhere=True) == []
    for t in (a, b):
        key = f"{HISTORY_FOLDER}/{MARKER.history_name}"
        assert FailoverMarker.from_json(t.read_bytes(key)) == MARKER
        with pytest.raises(FileNotFoundError):
            t.read_bytes(MARKER_KEY)


def test_a_marker_that_cannot_be_retired_says_where(tmp_path: Path) -> None:
    down = broken(tmp_path, "down")
    markers = store(tmp_path, down)
    (tmp_path / "state").write_text("not a folder\n")
    errors = markers.retire(MARKER, everywhere=True)
    assert len(errors) == 2
    assert errors[0].startswith("target down: cannot clear the failover marker")
    assert errors[1].startswith(f"cannot clear {markers.local_path} (")
    written, failed = markers.publish(MARKER)
    assert written == [] and failed[1].startswith(f"cannot write {markers.local_path} (")


def test_reconcile_drops_this_sites_copy_only_when_the_storage_has_none(tmp_path: Path) -> None:
    a = nas(tmp_path, "a")
    markers = store(tmp_path, a)
    assert markers.reconcile() is None  # no copy here
    markers.publish(MARKER)
    assert markers.reconcile() is None and markers.local() == MARKER  # the storage has it too
    store(tmp_path, broken(tmp_path, "down")).publish(MARKER)
    assert store(tmp_path, broken(tmp_path, "down2")).reconcile() is None  # storage unread
    assert markers.local() == MARKER
    a.delete(MARKER_KEY)
    assert markers.reconcile() == MARKER
    assert markers.local() is None
    assert (tmp_path / "state" / "history" / MARKER.history_name).is_file()
    assert not (tmp_path / "a" / HISTORY_FOLDER).exists()  # this site's copy only


def record(site_id: str, action: str = "push") -> SiteRecord:
    return SiteRecord(site_id=site_id, host="h", at=AT, action=action, cells={})


def test_site_records_are_written_everywhere_and_read_from_every_readable_target(
    tmp_path: Path,
) -> None:
    down, a, b = broken(tmp_path, "down"), nas(tmp_path, "a"), nas(tmp_path, "b")
    markers = store(tmp_path, down, a, b)
    warnings = markers.write_record(record("zeta"))
    assert len(warnings) == 1 and warnings[0].startswith("site record not written: target down:")
    assert store(tmp_path, a, b).write_record(record("alpha")) == []
    b.put_bytes(f"{SITES_FOLDER}/beta.json", record("beta").to_json())
    a.put_bytes(f"{SITES_FOLDER}/notes.txt", b"not a record")
    (tmp_path / "a" / SITES_FOLDER / "old.json").mkdir()
    # beta's record is on b only (a was down when beta wrote it): read all the same.
    assert [r.site_id for r in markers.records()] == ["alpha", "beta", "zeta"]
    assert [r.site_id for r in store(tmp_path, down, b).records()] == ["alpha", "beta", "zeta"]
    assert store(tmp_path, down).records() == []
    assert store(tmp_path, nas(tmp_path, "none")).records() == []


def test_of_a_sites_records_on_the_storage_its_newest_counts(tmp_path: Path) -> None:
    a, b = nas(tmp_path, "a"), nas(tmp_path, "b")
    both = store(tmp_path, a, b)
    assert both.write_record(record("alpha", "push")) == []
    later = SiteRecord(
        site_id="alpha", host="h", at=AT + dt.timedelta(hours=1), action="failover", cells={}
    )
    # Written while a was down: a keeps the push, b has the failover.
    assert (
        store(tmp_path, broken(tmp_path, "down"), b)
        .write_record(later)[0]
        .startswith("site record not written: target down:")
    )
    assert [(r.site_id, r.action) for r in both.records()] == [("alpha", "failover")]
    assert [(r.site_id, r.action) for r in store(tmp_path, b, a).records()] == [
        ("alpha", "failover")
    ]
    assert [(r.site_id, r.action) for r in store(tmp_path, a).records()] == [("alpha", "push")]


def test_a_damaged_copy_of_the_marker_here_says_where_it_is(tmp_path: Path) -> None:
    markers = store(tmp_path)
    markers.local_path.parent.mkdir(parents=True)
    markers.local_path.write_bytes(b"[1, 2]")
    with pytest.raises(DrError) as info:
        markers.current()
    assert str(markers.local_path) in str(info.value)
    assert "failover marker" in str(info.value)


def test_a_hand_back_stops_while_a_cell_is_locked_by_another_run(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path, cells=("crm", "iam"))
    # The storage has all but these.
    assert standby.vault.backup(kind="incremental", targets=["local"]).ok
    with (
        Lease.acquire(nas(tmp_path), "crm", "push to nas (another cron run)"),
        Lease.acquire(nas(tmp_path), "iam", "push to nas (another cron run)"),
    ):
        report = standby.failback(final_backup=None)
    assert report.ok is False and report.push is not None and report.backup is None
    locked = [c.locked for c in report.push.locked]
    assert len(locked) == 2 and all(c and "another cron run" in c for c in locked)
    assert report.error == (
        "cells were locked by another run, so the push is incomplete: "
        f"{locked[0]}; {locked[1]} (run it again)"
    )
    assert standby.marker()[0].handback is None  # type: ignore[union-attr]


def test_a_hand_back_whose_push_fails_reports_its_final_backup(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    # An archive made here only, damaged since: the push refuses to copy it.
    assert standby.vault.backup(kind="full", targets=["local"]).ok
    damage(archive_of(tmp_path, "dr"))
    write_tree(tmp_path / "dr" / "cells" / "crm", {"last.txt": "last\n"})
    report = standby.failback(final_backup="full")
    assert report.ok is False and report.error == "the push failed; nothing was handed back"
    assert report.backup is not None and report.backup.ok
    assert report.push is not None and not report.push.ok


class LaggingListing(LocalTarget):
    """A shared folder whose listing of a cell's archives lags behind its writes (by one)."""

    def archive_ids(self, cell: str) -> list[ArchiveId]:
        return super().archive_ids(cell)[:-1]


def test_a_hand_back_checks_that_the_storage_lists_what_it_hands_back(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    assert standby.vault.backup(kind="incremental").ok
    newest = standby.local.archive_ids("crm")[-1]
    standby.context.storage[0] = LaggingListing(TargetSpec("nas", str(tmp_path / "nas")))
    report = standby.failback(final_backup=None)
    assert report.ok is False and report.backup is None and report.push is not None
    assert report.error == f"archive {newest} is not on nas after the push"
    assert standby.marker()[0].handback is None  # type: ignore[union-attr]
    # With a final backup, the report keeps it.
    backed = standby.failback()
    assert backed.ok is False and backed.backup is not None and backed.backup.ok
    assert backed.push is not None and backed.error is not None


def test_a_hand_back_passes_over_a_cell_with_no_archive_before_now(tmp_path: Path) -> None:
    primary = site(tmp_path, "primary", cells=("crm", "iam"))
    assert primary.vault.backup(cells=["iam"], kind="full").ok
    primary.vault.clock = clock(AT + dt.timedelta(hours=2))
    assert primary.vault.backup(cells=["crm"], kind="full").ok and primary.push().ok
    standby = site(tmp_path, "dr", cells=("crm", "iam"), start=AT + dt.timedelta(hours=3))
    assert standby.failover().ok
    (iam,) = standby.local.archive_ids("iam")
    # Its clock is behind: crm's archive is after "now", iam's before.
    standby.vault.clock = clock(AT + dt.timedelta(hours=1))
    report = standby.failback(final_backup=None)
    assert report.ok and report.marker is not None and report.marker.handback is not None
    assert dict(report.marker.handback.archives) == {"iam": str(iam)}


def test_a_hand_back_fenced_after_its_push_writes_no_hand_back(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    assert standby.vault.backup(kind="incremental", targets=["local"]).ok  # to push
    claim_on_first_event(standby, tmp_path, "dr2", "archive.copied")  # once pushed
    with pytest.raises(Fenced) as info:
        standby.failback(final_backup=None)
    assert "site dr2 holds epoch 2" in info.value.message
    assert "; hand back refused, nothing was written" in info.value.message
    assert standby.marker()[0].handback is None  # type: ignore[union-attr]


def block_marker(tmp_path: Path, name: str) -> None:
    """Target *name* can no longer take the marker (a folder stands in its place)."""
    key = tmp_path / name / MARKER_KEY
    key.unlink(missing_ok=True)
    key.mkdir(parents=True)
    (key / "x").write_text("x\n")


def test_a_hand_back_must_reach_the_object_storage(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path, shared=("nas", "far"))
    block_marker(tmp_path, "far")
    report = standby.failback(final_backup="full")
    assert report.ok and report.marker_written == ("nas", "local"), report
    (warning,) = report.warnings
    assert warning.startswith("target far: cannot write the failover marker")
    # Neither target takes it: written here only, which the primary cannot read.
    block_marker(tmp_path, "nas")
    refused = standby.failback(final_backup="full")
    assert refused.ok is False and refused.backup is not None and refused.backup.ok
    assert refused.push is not None and refused.push.ok
    errors = refused.warnings
    assert len(errors) == 2 and refused.error == (
        "the hand-back could not be written to the object storage: " + "; ".join(errors)
    )
    assert errors[0].startswith("target nas: cannot write the failover marker")


def test_a_takeover_stops_when_its_pull_is_incomplete(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    handed_back = standby.failback()
    assert handed_back.ok
    with Lease.acquire(primary.local, "crm", "pull from nas (another cron run)"):
        report = later(primary).failback(skip_prebackup=True)
    assert report.ok is False and report.marker == handed_back.marker
    assert report.pull is not None and report.pull.ok and report.pull.locked
    assert report.error == "the pull failed or was incomplete; nothing was restored (run it again)"
    assert report.warnings == () and report.epoch is None
    # The pull of a takeover is not recorded as this site's step.
    records = {r.site_id: r.action for r in primary.context.markers.records()}
    assert records["primary"] == "push"


def test_a_failover_warns_of_a_cell_its_pull_left_to_another_run(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    assert standby.pull().ok
    with Lease.acquire(standby.local, "crm", "pull from nas (another cron run)"):
        report = standby.failover()
    assert report.ok, report
    (warning,) = report.warnings
    assert warning.startswith("pull: crm: ") and "another cron run" in warning


def test_a_takeover_restores_what_was_handed_back_not_what_came_after(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    handback = standby.failback()
    assert handback.ok and handback.marker is not None and handback.marker.handback is not None
    handed_back = handback.marker.handback.archives["crm"]
    # A backup after the hand-back (writes went on there), pushed: not the one handed back.
    write_tree(tmp_path / "dr" / "cells" / "crm", {"after.txt": "after the hand-back\n"})
    assert standby.vault.backup(kind="incremental").ok and standby.push().ok
    assert str(nas(tmp_path).archive_ids("crm")[-1]) != handed_back
    takeover = later(primary, hours=5).failback(skip_prebackup=True)
    assert takeover.ok and takeover.marker is not None, takeover
    assert dict(takeover.marker.restored) == {"crm": handed_back}
    assert not (tmp_path / "primary" / "cells" / "crm" / "after.txt").exists()


def test_a_forced_takeover_that_does_not_verify_reports_no_warnings(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    crm = str(nas(tmp_path).archive_ids("crm")[0])  # the primary's own archive
    handed(standby, {"audit": "cell_audit_20250301_120000", "crm": crm})
    damage(archive_of(tmp_path, "primary"))
    refused = later(primary).failback(skip_prebackup=True, force=True)
    assert refused.ok is False and refused.verify is not None and not refused.verify.ok
    assert refused.warnings == ()  # the refusal is the error; nothing else is said


def test_a_forced_takeover_that_cannot_take_the_epoch_reports_no_warnings(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    crm = str(nas(tmp_path).archive_ids("crm")[0])
    handed(standby, {"audit": "cell_audit_20250301_120000", "crm": crm})
    claim_on_first_event(later(primary), tmp_path, "dr2")
    refused = primary.failback(skip_prebackup=True, force=True)
    assert refused.ok is False and refused.epoch is None and refused.verify is not None
    assert refused.warnings == ()


def test_a_failover_says_which_pull_failed(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    damage(max((tmp_path / "nas" / "crm").glob("cell_crm_*.tar.zst")))
    refused = standby.failover()
    assert refused.ok is False and refused.pull is not None and not refused.pull.ok
    assert refused.warnings[0].startswith("pull: crm from nas: "), refused.warnings
    assert "no archive matching latest on this site" in (refused.error or "")


def test_a_failover_restoring_no_configured_cell_restores_nothing(tmp_path: Path) -> None:
    pair(tmp_path)
    empty = site(tmp_path, "dr", cells=())
    report = empty.failover(restore="latest")
    assert report.ok and report.restore is None, report
    assert report.marker is not None and dict(report.marker.restored) == {}
    assert list(report.marker.verified) == ["crm"]


def test_this_sites_marker_is_written_whole_and_private(tmp_path: Path) -> None:
    markers = store(tmp_path, nas(tmp_path, "a"))
    markers.publish(MARKER)
    assert stat.S_IMODE(markers.local_path.stat().st_mode) == 0o600
    assert [p.name for p in markers.local_path.parent.iterdir()] == ["failover.json"]
    assert markers.local_path.read_bytes() == MARKER.to_json()


def test_a_forced_takeover_with_nothing_to_force_is_not_marked_forced(tmp_path: Path) -> None:
    primary, standby = failed_over(tmp_path)
    assert standby.failback().ok
    takeover = later(primary).failback(skip_prebackup=True, force=True)
    assert takeover.ok and takeover.marker is not None and takeover.marker.forced is False


def test_a_hand_back_locked_out_after_its_final_backup_reports_it(tmp_path: Path) -> None:
    _, standby = failed_over(tmp_path)
    held: list[Any] = []

    def on_event(event: Any) -> None:  # another run takes the cell once the backup is done
        if not held and event.name.startswith("backup.") and event.name != "backup.started":
            lease = Lease.acquire(nas(tmp_path), "crm", "push to nas (another cron run)")
            lease.__enter__()
            held.append(lease)

    standby.vault.on_event = on_event
    try:
        report = standby.failback(final_backup="incremental")
    finally:
        for lease in held:
            lease.__exit__(None, None, None)
    assert held, "no event after the backup"
    assert report.ok is False and report.push is not None and report.push.locked, report
    assert report.backup is not None and report.backup.ok


def test_site_records_unreadable_on_a_target_are_passed_over_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellvault")
    down, a = broken(tmp_path, "down"), nas(tmp_path, "a")
    assert store(tmp_path, a).write_record(record("alpha")) == []
    assert [r.site_id for r in store(tmp_path, down, a).records()] == ["alpha"]
    (warned,) = events(caplog, "dr.records_unreadable")
    assert warned["target"] == "down"
    assert warned["error"].startswith("target down: cannot list site records")
    # A record that is listed but cannot be read (a link to a folder): that target is passed over.
    caplog.clear()
    b = nas(tmp_path, "b")
    (tmp_path / "b" / SITES_FOLDER).mkdir(parents=True)
    (tmp_path / "b" / SITES_FOLDER / "odd.json").symlink_to(tmp_path / "a")
    assert [r.site_id for r in store(tmp_path, b, a).records()] == ["alpha"]
    (warned,) = events(caplog, "dr.records_unreadable")
    assert warned["target"] == "b"
    assert warned["error"].startswith("target b: cannot read a site record")


def test_a_site_record_not_written_says_what_was_not_written(tmp_path: Path) -> None:
    warnings = store(tmp_path, broken(tmp_path, "down")).write_record(record("zeta"))
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "site record not written: target down: cannot write the site record"
    )


def test_a_damaged_marker_on_the_storage_names_the_target(tmp_path: Path) -> None:
    a = nas(tmp_path, "a")
    a.put_bytes(MARKER_KEY, b"[1, 2]")
    with pytest.raises(DrError) as info:
        store(tmp_path, a).remote()
    assert "failover marker on target a" in str(info.value)


def test_a_failover_report_names_the_site_and_how_long_it_took(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    started = time.monotonic()
    report = standby.failover()
    took = time.monotonic() - started
    assert report.ok and report.site == "dr"
    assert 0 < report.duration <= took
    empty = site(tmp_path, "empty", cells=())
    started = time.monotonic()
    stopped = empty.failover(pull=False, force=True)
    took = time.monotonic() - started
    assert stopped.ok is False and stopped.site == "empty" and 0 < stopped.duration <= took


def test_a_failover_behind_on_several_targets_and_cells_lists_every_problem(
    tmp_path: Path,
) -> None:
    primary, standby = pair(tmp_path, cells=("crm", "iam"), shared=("far", "nas"))
    assert standby.pull(cells=["crm"]).ok  # iam is never pulled here
    older = str(archive_of(tmp_path, "dr").name).removesuffix(".tar.zst")
    for n in range(2):  # two archives newer than this site's: the newest is named
        write_tree(tmp_path / "primary" / "cells" / "crm", {"b.txt": f"later {n}\n"})
        assert primary.vault.backup(cells=["crm"], kind="incremental").ok
    assert primary.push().ok
    newest = str(nas(tmp_path).archive_ids("crm")[-1])
    assert len(nas(tmp_path).archive_ids("crm")) == 3
    shutil.rmtree(tmp_path / "far")
    (tmp_path / "far").write_text("not a folder\n")  # what far holds cannot be told
    refused = standby.failover(pull=False)
    assert refused.ok is False and refused.error is not None
    problems = refused.error.removeprefix("this site does not hold the newest backups: ")
    problems = problems.removesuffix(
        " (fix the pull and run again, or --force to fail over with what is here)"
    )
    parts = problems.split("; ")
    assert len(parts) == 3, parts
    assert parts[0].startswith("cell crm: cannot tell what far holds: target far:")
    assert parts[1] == (
        f"cell crm: nas holds {newest}, newer than {older} on this site (the pull did not bring it)"
    )
    assert parts[2] == "cell iam: no archive matching latest on this site"
    # Forced (with far back, where the epoch is taken), the cells with an archive here go on.
    (tmp_path / "far").unlink()
    shutil.copytree(tmp_path / "nas", tmp_path / "far")
    forced = standby.failover(pull=False, force=True)
    assert forced.ok and forced.marker is not None and forced.marker.forced
    assert list(forced.marker.verified) == ["crm"]


def test_failover_called_bare_refuses_a_failover_in_effect_and_backs_up_first(
    tmp_path: Path,
) -> None:
    _, standby = pair(tmp_path)
    assert failover_of(standby.context).ok
    with pytest.raises(DrError):
        failover_of(standby.context)  # not forced unless asked
    other = site(tmp_path, "dr2")
    report = failover_of(other.context, restore="latest", force=True)
    assert report.ok and report.restore is not None, report
    (cell,) = report.restore.cells
    assert cell.safety_backup, "a restore takes a safety backup first unless asked"


def test_a_failover_records_its_own_step_and_its_pull_records_none(tmp_path: Path) -> None:
    _, standby = pair(tmp_path)
    stopped = standby.failover(restore="20000101")  # pulls, then finds nothing that old
    assert stopped.ok is False and stopped.pull is not None and stopped.pull.ok
    assert [r.site_id for r in standby.context.markers.records()] == ["primary"]
    assert standby.failover().ok
    mine = [r for r in standby.context.markers.records() if r.site_id == "dr"]
    assert [r.action for r in mine] == ["failover"]


def test_a_forced_failover_goes_on_with_the_cells_after_one_without_an_archive(
    tmp_path: Path,
) -> None:
    _, standby = pair(tmp_path, cells=("crm", "iam"))
    assert standby.pull(cells=["iam"]).ok  # crm, checked first, has no archive here
    forced = standby.failover(pull=False, force=True)
    assert forced.ok and forced.marker is not None and forced.marker.forced
    assert list(forced.marker.verified) == ["iam"]
    assert forced.warnings == ("cell crm: no archive matching latest on this site",)
