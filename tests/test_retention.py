"""Retention decisions: the seed's age rules, GFS buckets, and the chain guarantee."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellvault.archive import ArchiveId, ArchiveMeta, Sidecar
from cellvault.errors import ConfigError
from cellvault.retention import PruneReport, PruneResult, RetentionPolicy, plan

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def sidecar(when: dt.datetime, kind: str = "full", chain: tuple[ArchiveId, ...] = ()) -> Sidecar:
    ident = ArchiveId("crm", when)
    meta = ArchiveMeta(
        id=ident,
        kind=kind,
        backed_at=when,
        host="h",
        version="0",
        codec="zstd",
        parent=chain[-1] if chain else None,
        chain=chain,
    )
    return Sidecar(meta=meta, data_name=f"{ident}.tar.zst", size=1, sha256="0" * 64)


def series(days: int, incrementals_per_day: int = 3) -> list[Sidecar]:
    """A daily full at 02:00 and incrementals every 6 hours after it, like the seed's cron."""
    out = []
    for d in range(days, 0, -1):
        base = (NOW - dt.timedelta(days=d)).replace(hour=2, minute=0, second=0)
        full = sidecar(base)
        out.append(full)
        chain = (full.id,)
        for i in range(1, incrementals_per_day + 1):
            inc = sidecar(base + dt.timedelta(hours=6 * i), "incremental", chain)
            out.append(inc)
            chain = (*chain, inc.id)
    return out


def kept(decisions) -> set[ArchiveId]:
    return {d.id for d in decisions if d.keep}


def test_seed_defaults_keep_full_7_days_and_incrementals_3_days() -> None:
    archives = series(10)
    decisions = plan(archives, RetentionPolicy(), NOW)
    for d in decisions:
        age = (NOW - d.sidecar.meta.backed_at).total_seconds() / 86400
        if d.sidecar.meta.kind == "full":
            assert d.keep == (age <= 7), d
        elif age <= 3:
            assert d.keep, d
    # An incremental older than 3 days goes, unless a kept archive needs it.
    old_incs = [d for d in decisions if d.sidecar.meta.kind == "incremental" and not d.keep]
    assert old_incs
    assert all("kept by no rule" in d.reasons[0] for d in old_incs)


def test_a_kept_incremental_keeps_its_whole_chain() -> None:
    archives = series(10)
    # Keep only the newest archive: an incremental whose full is a day old.
    policy = RetentionPolicy(keep_full_days=None, keep_incremental_days=None, keep_last=1)
    decisions = plan(archives, policy, NOW)
    newest = archives[-1]
    assert kept(decisions) == {*newest.meta.chain, newest.id}
    reasons = {d.id: d.reasons for d in decisions}
    assert any(r.startswith("needed by") for r in reasons[newest.meta.chain[0]])


def test_newest_full_is_always_kept() -> None:
    archives = series(30)
    policy = RetentionPolicy(keep_full_days=0, keep_incremental_days=0)
    decisions = plan(archives, policy, NOW + dt.timedelta(days=365))
    newest_full = max((s for s in archives if s.meta.kind == "full"), key=lambda s: s.id)
    assert newest_full.id in kept(decisions)
    assert archives[-1].id in kept(decisions)


def test_gfs_buckets() -> None:
    fulls = [sidecar(NOW - dt.timedelta(days=d)) for d in range(120, 0, -1)]
    policy = RetentionPolicy(
        keep_full_days=None, keep_incremental_days=None, keep_daily=7, keep_weekly=4, keep_monthly=3
    )
    decisions = plan(fulls, policy, NOW)
    keep = sorted(kept(decisions))
    daily = [d for d in decisions if any(r.startswith("keep_daily") for r in d.reasons)]
    weekly = [d for d in decisions if any(r.startswith("keep_weekly") for r in d.reasons)]
    monthly = [d for d in decisions if any(r.startswith("keep_monthly") for r in d.reasons)]
    assert len(daily) == 7 and len(weekly) == 4 and len(monthly) == 3
    # No more than the union of the buckets.
    assert len(keep) <= 7 + 4 + 3
    # Each monthly pick is the newest archive of its month.
    for d in monthly:
        month = (d.sidecar.meta.backed_at.year, d.sidecar.meta.backed_at.month)
        same_month = [s for s in fulls if (s.meta.backed_at.year, s.meta.backed_at.month) == month]
        assert d.id == max(s.id for s in same_month)


def test_policy_from_mapping_rejects_unknown_keys() -> None:
    assert RetentionPolicy.from_mapping({"keep_last": 3}).keep_last == 3
    with pytest.raises(ConfigError, match="keep_lats") as info:
        RetentionPolicy.from_mapping({"keep_lats": 3}, where="target nas: retention")
    assert info.value.message == "target nas: retention: unknown key 'keep_lats'"
    assert info.value.hint == (
        "known keys: keep_daily, keep_full_days, keep_hourly, keep_incremental_days, "
        "keep_last, keep_monthly, keep_weekly"
    )
    with pytest.raises(ConfigError, match=r"^retention: unknown key 'keep_lats' \(known keys"):
        RetentionPolicy.from_mapping({"keep_lats": 3})
    with pytest.raises(ConfigError, match="negative"):
        RetentionPolicy(keep_last=-1)
    # TOML has no null: an empty value switches a rule off, as None does.
    off = RetentionPolicy.from_mapping({"keep_full_days": "", "keep_last": None, "keep_daily": 2})
    assert (off.keep_full_days, off.keep_last, off.keep_daily) == (None, None, 2)
    assert off.keep_incremental_days == 3  # what the table does not name keeps its default


def test_a_policy_describes_the_rules_it_has() -> None:
    assert RetentionPolicy().describe() == "keep_full_days=7, keep_incremental_days=3"
    assert (
        RetentionPolicy(None, None, keep_last=2, keep_monthly=12).describe()
        == "keep_last=2, keep_monthly=12"
    )
    # Not "keep everything": with no rule, a prune deletes all but what every policy keeps.
    assert (
        RetentionPolicy(None, None).describe()
        == "no rule: only the newest archive, the newest full and the archives they need stay"
    )


def test_decisions_and_reports_as_json() -> None:
    old, new = sidecar(NOW - dt.timedelta(days=30)), sidecar(NOW - dt.timedelta(days=1))
    gone, kept_ = plan([old, new], RetentionPolicy(), NOW)
    assert gone.to_dict() == {
        "archive": str(old.id),
        "keep": False,
        "reasons": ["full, 30.0 days old, kept by no rule"],
    }
    assert kept_.to_dict() == {
        "archive": str(new.id),
        "keep": True,
        "reasons": [
            "newest archive of the cell",
            "newest full archive of the cell",
            "full younger than 7 days",
        ],
    }
    result = PruneResult("nas", "crm", (gone, kept_), dry_run=True, debris=("crm/x.tmp",))
    assert result.ok and result.removed == [gone]
    assert result.to_dict() == {
        "target": "nas",
        "cell": "crm",
        "dry_run": True,
        "ok": True,
        "error": None,
        "debris": ["crm/x.tmp"],
        "decisions": [gone.to_dict(), kept_.to_dict()],
    }
    failed = PruneResult("usb", "crm", (), dry_run=False, error="usb is gone")
    report = PruneReport((result, failed), dry_run=False)
    assert not failed.ok and not report.ok
    assert report.to_dict() == {
        "ok": False,
        "dry_run": False,
        "results": [result.to_dict(), failed.to_dict()],
    }
    assert PruneReport((result,), dry_run=True).ok


@settings(max_examples=60, deadline=None)
@given(
    days=st.integers(1, 20),
    per_day=st.integers(0, 3),  # 4 would put a day's last incremental on the next day's full
    keep_last=st.one_of(st.none(), st.integers(0, 10)),
    keep_daily=st.one_of(st.none(), st.integers(0, 10)),
    full_days=st.one_of(st.none(), st.floats(0, 15)),
    inc_days=st.one_of(st.none(), st.floats(0, 15)),
    later=st.floats(0, 30),
)
def test_every_kept_archive_keeps_what_it_needs(
    days, per_day, keep_last, keep_daily, full_days, inc_days, later
) -> None:
    archives = series(days, per_day)
    policy = RetentionPolicy(
        keep_full_days=full_days,
        keep_incremental_days=inc_days,
        keep_last=keep_last,
        keep_daily=keep_daily,
    )
    now = NOW + dt.timedelta(days=later)
    decisions = plan(archives, policy, now)
    keep = kept(decisions)
    assert archives[-1].id in keep
    for d in decisions:
        if d.keep:
            assert set(d.sidecar.meta.chain) <= keep
        assert d.reasons
    # Exactly what the rules keep, no more: a plan that kept everything fails here.
    assert keep == expected_keep(archives, policy, now)


def expected_keep(
    archives: list[Sidecar], policy: RetentionPolicy, now: dt.datetime
) -> set[ArchiveId]:
    """The archives *policy* keeps, as the documentation states the rules, one by one."""
    newest_first = sorted(archives, key=lambda s: s.id, reverse=True)
    keep = {newest_first[0].id}
    keep.add(next(s.id for s in newest_first if s.meta.kind == "full"))
    keep |= {s.id for s in newest_first[: policy.keep_last or 0]}
    days: list[dt.date] = []
    for s in newest_first:
        if s.id.when.date() not in days:
            days.append(s.id.when.date())
            if len(days) <= (policy.keep_daily or 0):
                keep.add(s.id)
    for s in archives:
        limit = policy.keep_full_days if s.meta.kind == "full" else policy.keep_incremental_days
        if limit and (now - s.id.when) <= dt.timedelta(days=limit):
            keep.add(s.id)
    return keep | {needed for s in archives if s.id in keep for needed in s.meta.chain}


def test_an_age_rule_keeps_an_archive_exactly_its_age_and_not_a_second_older() -> None:
    policy = RetentionPolicy(keep_full_days=7, keep_incremental_days=None)
    old, new = sidecar(NOW - dt.timedelta(days=30)), sidecar(NOW - dt.timedelta(days=1))
    for age, kept_by_age in (
        (dt.timedelta(days=7), True),
        (dt.timedelta(days=7, seconds=1), False),
    ):
        edge = sidecar(NOW - age)
        decisions = {d.id: d for d in plan([old, edge, new], policy, NOW)}
        assert decisions[edge.id].keep is kept_by_age
        assert decisions[old.id].keep is False


def test_chains_of_older_kept_archives_are_kept_past_an_archive_no_rule_keeps() -> None:
    day1 = (NOW - dt.timedelta(days=2)).replace(hour=1)
    f1 = sidecar(day1)
    i1a = sidecar(day1 + dt.timedelta(hours=6), "incremental", (f1.id,))
    i1b = sidecar(day1 + dt.timedelta(hours=12), "incremental", (f1.id, i1a.id))
    day2 = (NOW - dt.timedelta(days=1)).replace(hour=1)
    f2 = sidecar(day2)
    i2a = sidecar(day2 + dt.timedelta(hours=6), "incremental", (f2.id,))
    f3 = sidecar(day2 + dt.timedelta(hours=12))
    policy = RetentionPolicy(None, None, keep_daily=2)
    decisions = {d.id: d for d in plan([f1, i1a, i1b, f2, i2a, f3], policy, NOW)}
    assert {i for i, d in decisions.items() if d.keep} == {f3.id, i1b.id, i1a.id, f1.id}
    # Needed by two kept archives, an archive says so once: for the newest of them.
    assert decisions[f1.id].reasons == (f"needed by {i1b.id}",)
    assert decisions[i1a.id].reasons == (f"needed by {i1b.id}",)


def test_a_cell_of_only_incrementals_or_with_a_broken_chain_is_planned() -> None:
    gone = ArchiveId("crm", NOW - dt.timedelta(days=9))  # pruned elsewhere, or lost
    orphan = sidecar(NOW - dt.timedelta(days=8), "incremental", (gone,))
    newest = sidecar(NOW - dt.timedelta(days=1), "incremental", (gone, orphan.id))
    decisions = plan([orphan, newest], RetentionPolicy(None, None), NOW)
    assert [(d.id, d.keep) for d in decisions] == [(orphan.id, True), (newest.id, True)]
    assert decisions[1].reasons == ("newest archive of the cell",)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "3"])
def test_a_rule_must_be_a_finite_number(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        RetentionPolicy(keep_last=value)  # type: ignore[arg-type]
    assert info.value.message == f"retention keep_last must be a finite number, not {value!r}"
    assert info.value.hint == "use a whole or decimal number of days (or archives), 0 or more"


def test_an_archive_stamped_ahead_of_the_clock_is_said_to_be_so_not_a_negative_age() -> None:
    # Ids from a host whose clock ran ahead; no age rule, one kept by count.
    ahead = [sidecar(NOW + dt.timedelta(hours=h)) for h in (1, 24, 50)]
    decisions = plan(ahead, RetentionPolicy(keep_full_days=0, keep_incremental_days=0), NOW)
    assert [d.reasons for d in decisions if not d.keep] == [
        ("full, stamped 1.0 hours ahead of this host's clock, kept by no rule",),
        ("full, stamped 1.0 days ahead of this host's clock, kept by no rule",),
    ]
