"""Retention: which archives a target keeps, and why.

The seed keeps full backups 7 days and incrementals 3 days; restic and borg
users expect ``keep_last`` and grandfather-father-son buckets (hourly, daily,
weekly, monthly). A :class:`RetentionPolicy` can hold both: an archive is kept
when any rule keeps it. Two guarantees hold whatever the rules say: a cell's
newest archive and its newest full archive are kept, and so is every archive a
kept archive needs (its chain). :func:`plan` decides; it touches nothing
(:mod:`cellvault.ops.prune` carries its decisions out).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .archive import ArchiveId, Sidecar
from .errors import ConfigError

__all__ = ["Decision", "PruneReport", "PruneResult", "RetentionPolicy", "plan"]


def _non_negative(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    # NaN compares false with everything: an age rule of NaN would keep nothing.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(
            f"retention {attribute.name} must be a finite number, not {value!r}",
            hint="use a whole or decimal number of days (or archives), 0 or more",
        )
    if value < 0:
        raise ConfigError(f"retention {attribute.name} must not be negative, not {value}")


_opt = attrs.field(default=None, validator=_non_negative)


@attrs.frozen
class RetentionPolicy:
    """What a target keeps. ``None`` switches a rule off.

    Defaults are the seed's: full archives 7 days, incrementals 3 days. An age
    rule of 0 is off, like None (TOML has no null).
    """

    keep_full_days: float | None = attrs.field(default=7, validator=_non_negative)
    keep_incremental_days: float | None = attrs.field(default=3, validator=_non_negative)
    keep_last: int | None = _opt
    keep_hourly: int | None = _opt
    keep_daily: int | None = _opt
    keep_weekly: int | None = _opt
    keep_monthly: int | None = _opt

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "retention") -> RetentionPolicy:
        """Build a policy from a TOML table or similar; unknown keys are errors."""
        names = {f.name for f in attrs.fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(
                    f"{where}: unknown key {key!r}", hint=f"known keys: {', '.join(sorted(names))}"
                )
        try:
            return cls(**{k: (None if v in ("", None) else v) for k, v in data.items()})
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def describe(self) -> str:
        parts = [
            f"{f.name}={getattr(self, f.name)}"
            for f in attrs.fields(type(self))
            if getattr(self, f.name) is not None
        ]
        # With no rule, only what every policy keeps stays (see plan).
        return ", ".join(parts) or (
            "no rule: only the newest archive, the newest full and the archives they need stay"
        )


@attrs.frozen
class Decision:
    """Whether one archive stays, and the reasons."""

    sidecar: Sidecar
    keep: bool
    reasons: tuple[str, ...]

    @property
    def id(self) -> ArchiveId:
        return self.sidecar.id

    def to_dict(self) -> dict[str, Any]:
        return {"archive": str(self.id), "keep": self.keep, "reasons": list(self.reasons)}


_BUCKETS: tuple[tuple[str, Callable[[dt.datetime], tuple[int, ...]]], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
)


def plan(sidecars: Sequence[Sidecar], policy: RetentionPolicy, now: dt.datetime) -> list[Decision]:
    """Decide for each archive of one cell on one target; oldest first."""
    ordered = sorted(sidecars, key=lambda s: s.id)
    reasons: dict[ArchiveId, list[str]] = {s.id: [] for s in ordered}
    newest_first = list(reversed(ordered))
    _keep_newest(newest_first, reasons)
    _keep_counted(newest_first, policy, reasons)
    for s in ordered:
        limit = policy.keep_full_days if s.meta.kind == "full" else policy.keep_incremental_days
        if limit and _age_days(s, now) <= limit:  # 0 (or None) switches the age rule off
            reasons[s.id].append(f"{s.meta.kind} younger than {limit:g} days")
    _keep_chains(newest_first, reasons)
    out = []
    for s in ordered:
        if reasons[s.id]:
            out.append(Decision(s, True, tuple(reasons[s.id])))
        else:
            out.append(Decision(s, False, (f"{s.meta.kind}, {_age(s, now)}, kept by no rule",)))
    return out


def _age(sidecar: Sidecar, now: dt.datetime) -> str:
    """How old an archive is, in words; an id ahead of *now* (a skewed clock) says so."""
    days = _age_days(sidecar, now)
    if days < 0:
        ahead = f"{-days:.1f} days" if days <= -1 else f"{-days * 24:.1f} hours"
        return f"stamped {ahead} ahead of this host's clock"
    return f"{days:.1f} days old"


def _age_days(sidecar: Sidecar, now: dt.datetime) -> float:
    return (now - sidecar.id.when).total_seconds() / 86400


def _keep_newest(newest_first: list[Sidecar], reasons: dict[ArchiveId, list[str]]) -> None:
    """A cell's newest archive and its newest full archive stay, whatever the rules say."""
    if not newest_first:
        return
    reasons[newest_first[0].id].append("newest archive of the cell")
    full = next((s for s in newest_first if s.meta.kind == "full"), None)
    if full is not None:
        reasons[full.id].append("newest full archive of the cell")


def _keep_counted(
    newest_first: list[Sidecar], policy: RetentionPolicy, reasons: dict[ArchiveId, list[str]]
) -> None:
    """``keep_last``, then the newest archive of each of the newest hourly ... monthly buckets."""
    if policy.keep_last:
        for s in newest_first[: policy.keep_last]:
            reasons[s.id].append(f"keep_last={policy.keep_last}")
    for name, bucket_of in _BUCKETS:
        count = getattr(policy, f"keep_{name}")
        if not count:
            continue
        seen: set[tuple[int, ...]] = set()
        for s in newest_first:
            bucket = bucket_of(s.id.when)
            if bucket in seen:
                continue
            seen.add(bucket)
            if len(seen) > count:
                break
            reasons[s.id].append(f"keep_{name}={count}")


def _keep_chains(newest_first: list[Sidecar], reasons: dict[ArchiveId, list[str]]) -> None:
    """Everything a kept archive needs to restore stays too."""
    for s in newest_first:
        if not reasons[s.id]:
            continue
        for needed in s.meta.chain:
            if needed in reasons and not any(r.startswith("needed by") for r in reasons[needed]):
                reasons[needed].append(f"needed by {s.id}")


@attrs.frozen
class PruneResult:
    """What a prune decided (and, unless a dry run, did) for one cell on one target."""

    target: str
    cell: str
    decisions: tuple[Decision, ...]
    dry_run: bool
    debris: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "cell": self.cell,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "error": self.error,
            "debris": list(self.debris),
            "decisions": [d.to_dict() for d in self.decisions],
        }


@attrs.frozen
class PruneReport:
    """A prune run: one :class:`PruneResult` per target and cell."""

    results: tuple[PruneResult, ...]
    dry_run: bool

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "dry_run": self.dry_run,
            "results": [r.to_dict() for r in self.results],
        }
