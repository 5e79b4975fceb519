"""``status``: does every cell have a fresh, verified backup on every target?

For each cell and target: the newest committed archive, its age (the
recovery point, RPO), and the last verify and drill results remembered in the
state file. A cell is fine on a target when its newest archive is younger
than ``max_age`` hours and no verify level's last result failed (a failed
result is cleared by a later pass at the same or a stronger level). One call
answers a monitor: :attr:`StatusReport.ok`, and ``cellvault status`` exits 1
when it is false.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .archive import Sidecar
from .errors import CellvaultError
from .integrity import LEVELS
from .report import Report, iso
from .targets.base import Target

__all__ = ["CellStatus", "CheckResult", "StatusReport", "TargetStatus", "build_status"]


def _iso(ts: float | None) -> str | None:
    """A state file's timestamp as a report writes times."""
    return None if ts is None else iso(dt.datetime.fromtimestamp(ts, dt.UTC))


@attrs.frozen
class CheckResult(Report):
    """The last verify (of one level) or drill of a cell on a target."""

    level: str
    ok: bool
    at: str | None = None
    archive: str | None = None
    error: str | None = None
    #: Drills: the measured restore time, in seconds.
    rto: float | None = None

    def label(self, newest: str | None) -> str:
        """``full:ok`` when this check was of *newest*, else ``full:ok(<archive>)``.

        A claim is tied to the archive it checked: a pass of an older archive
        never reads as a pass of the newest one.
        """
        text = f"{self.level}:{'ok' if self.ok else 'FAIL'}"
        if self.archive and self.archive != newest:
            return f"{text}({self.archive})"
        return text


@attrs.frozen
class TargetStatus(Report):
    """One cell on one target."""

    target: str
    ok: bool
    #: The newest committed archive, and when it was taken (UTC, ISO 8601).
    newest: str | None = None
    backed_at: str | None = None
    #: Seconds since *backed_at*: the data a restore now would lose (RPO).
    age: float | None = None
    #: The last result of each verify level, and of the last drill.
    checks: tuple[CheckResult, ...] = ()
    #: What is wrong, for people (empty when ``ok``).
    problems: tuple[str, ...] = ()
    last_success: str | None = None
    failures_total: int = 0


@attrs.frozen
class CellStatus(Report):
    cell: str
    ok: bool
    targets: tuple[TargetStatus, ...] = ()
    #: What killed restores left beside the cell's paths (journals, staging
    #: directories, kept old data), one sentence each; it does not make the cell
    #: fail, as the next restore or backup of the cell settles most of it.
    debris: tuple[str, ...] = ()


@attrs.frozen
class StatusReport(Report):
    """Every cell on every target, as :meth:`cellvault.Vault.status` returns it."""

    cells: tuple[CellStatus, ...]
    #: The limit, in hours, and the instant the ages were measured at.
    max_age: float
    checked_at: str

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cells)

    def debris(self) -> list[str]:
        """One line per leftover of a killed restore: ``cell crm: ...``."""
        return [f"cell {c.cell}: {d}" for c in self.cells for d in c.debris]

    def problems(self) -> list[str]:
        """One line per problem: ``cell crm on target s3: ...``."""
        return [
            f"cell {c.cell} on target {t.target}: {p}"
            for c in self.cells
            for t in c.targets
            for p in t.problems
        ]


def _checks(entry: Mapping[str, Any]) -> tuple[list[CheckResult], list[str]]:
    results: list[CheckResult] = []
    verify = entry.get("verify") or {}
    for level in LEVELS:
        found = verify.get(level) if level != "drill" else entry.get("drill")
        if not found:
            continue
        results.append(
            CheckResult(
                level=level,
                ok=bool(found.get("ok")),
                at=_iso(found.get("at")),
                archive=found.get("archive"),
                error=found.get("error"),
                rto=found.get("rto"),
            )
        )
    problems = []
    rank = {level: i for i, level in enumerate(LEVELS)}
    stamps: dict[str, float] = {}
    for level in (r.level for r in results):
        found = (verify.get(level) if level != "drill" else entry.get("drill")) or {}
        stamps[level] = float(found.get("at", 0))
    for result in results:
        if result.ok:
            continue
        cleared = any(
            other.ok
            and rank[other.level] >= rank[result.level]
            and stamps[other.level] > stamps[result.level]
            for other in results
        )
        if not cleared:
            problems.append(f"last {result.level} verify failed: {result.error or 'failed'}")
    return results, problems


def _store_problems(target: Target, cell: str, sidecars: Sequence[Sidecar]) -> list[str]:
    """Unusable sidecars of *cell* on *target*, and a broken chain of its newest archive."""
    problems = [
        f"ignored {key}: {error}"
        for name, key, error in target.distrusted()
        if name == target.name and key.startswith(f"{cell}/")
    ]
    if sidecars:
        newest = sidecars[-1]
        have = {s.id for s in sidecars}
        missing = [a for a in newest.meta.chain if a not in have]
        if missing:
            problems.append(
                f"the chain of the newest archive {newest.id} is broken: archive {missing[0]} "
                "is not committed (or its sidecar is unusable) here; the next backup will be a full one"
            )
    return problems


def build_status(
    cells: Sequence[str],
    targets: Sequence[Target],
    state: Mapping[str, Any],
    *,
    now: dt.datetime,
    max_age: float,
    debris: Mapping[str, Sequence[str]] | None = None,
) -> StatusReport:
    """The status of *cells* on *targets* at *now*, with the remembered *state*.

    *debris*: cell -> what killed restores left beside its paths
    (:func:`cellvault.journal.debris`).
    """
    limit = max_age * 3600
    out = []
    recorded = state.get("cells", {})
    for cell in cells:
        per_target = []
        for target in targets:
            entry = recorded.get(cell, {}).get(target.name, {})
            checks, problems = _checks(entry)
            newest = backed_at = None
            age = None
            try:
                sidecars = target.archives(cell)
            except CellvaultError as exc:
                problems.insert(0, f"cannot list archives: {exc}")
                sidecars = []
            else:
                if not sidecars:
                    problems.insert(0, "no archive on this target")
                problems[:0] = _store_problems(target, cell, sidecars)
            if sidecars:
                ident = sidecars[-1].id
                newest = str(ident)
                backed_at = iso(ident.when)
                age = max(0.0, (now - ident.when).total_seconds())
                if age > limit:
                    problems.insert(
                        0,
                        f"newest archive {ident} is {age / 3600:.1f} h old, "
                        f"more than max_age {max_age:g} h",
                    )
            per_target.append(
                TargetStatus(
                    target=target.name,
                    ok=not problems,
                    newest=newest,
                    backed_at=backed_at,
                    age=age,
                    checks=tuple(checks),
                    problems=tuple(problems),
                    last_success=_iso(entry.get("last_success")),
                    failures_total=int(entry.get("failures_total", 0)),
                )
            )
        out.append(
            CellStatus(
                cell=cell,
                ok=all(t.ok for t in per_target),
                targets=tuple(per_target),
                debris=tuple((debris or {}).get(cell, ())),
            )
        )
    return StatusReport(
        cells=tuple(out),
        max_age=max_age,
        checked_at=iso(now),
    )
