"""Fencing by epoch: only the site that holds the current epoch writes to the shared targets.

A DR pair shares its object storage. Which site may write there is decided
by **epochs**: numbered records under :data:`EPOCHS_FOLDER` on the shared
targets, each naming the site that claimed it. A site claims epoch *N + 1*
with a conditional create on the **arbiter** (the first shared target): S3
``If-None-Match: *``, OSS ``x-oss-forbid-overwrite``, ``O_EXCL`` on a folder;
only one claimant can win, so two standbys racing to fail over cannot both
become active. The current epoch is the highest one.

Every writer to a shared target (a backup, a push, a prune, verify's
repairs, a plugin through :meth:`Fence.check`) proves at its start, and again
before each commit, that its site holds the current epoch; a site that does
not is *fenced*: it gets :class:`~cellvault.errors.Fenced`, which names the
active site, since when, and what to run. Reads stay allowed. Before any
epoch is claimed (a vault without DR, or a pair before its first failover)
nobody is fenced.

Archives record the epoch they were written under (``meta.json``); a restore
and a pull ignore, and report, an archive written under an older epoch after
the current one began: what a fenced site wrote in the moment before it
learned it was fenced.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
from collections.abc import Sequence
from typing import Any

import attrs

from .errors import ConfigError, DrError, Fenced, TargetError
from .log import get_logger
from .targets.base import Target
from .trust import MAX_RECORD_BYTES, check_name, load_record

__all__ = [
    "EPOCHS_FOLDER",
    "HEARTBEATS_FOLDER",
    "Epoch",
    "Fence",
    "Heartbeat",
    "claim_epoch",
    "fence_for",
    "host_site_id",
    "read_epoch",
    "read_heartbeat",
    "write_heartbeat",
    "written_after_fence",
]

log = get_logger(__name__)

#: Where the epochs live on every shared target.
EPOCHS_FOLDER = ".dr/epochs"
#: Where each site's heartbeat lives (``<site>.json``), for ``cellvault dr watch``.
HEARTBEATS_FOLDER = ".dr/heartbeats"
_NAME = re.compile(r"(\d{10})\.json")
_SITE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def host_site_id() -> str:
    """This host's short name as a site id (the default when DR_SITE_ID is unset)."""
    name = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_") or "site"
    return name[:63]


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@attrs.frozen
class Epoch:
    """One epoch: its number, the site that claimed it, when and why."""

    number: int
    site: str
    at: dt.datetime
    reason: str = "failover"
    host: str = ""

    @property
    def key(self) -> str:
        return f"{EPOCHS_FOLDER}/{self.number:010d}.json"

    def to_json(self) -> bytes:
        data = {
            "epoch": self.number,
            "site": self.site,
            "at": _iso(self.at),
            "reason": self.reason,
            "host": self.host,
        }
        return json.dumps(data, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, *, name: str) -> Epoch:
        """Read an epoch record; :class:`DrError` when it is not one (or not the one *name* says)."""
        try:
            data = load_record(raw, "epoch record")
            number, site = data["epoch"], data["site"]
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValueError(f"epoch {number!r} is not a positive integer")
            if not isinstance(site, str) or not _SITE.fullmatch(site):
                raise ValueError(f"site {site!r} is not a site id")
            at = dt.datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00"))
            if at.tzinfo is None:
                raise ValueError("its time has no time zone")
        except (KeyError, TypeError, ValueError) as exc:
            raise DrError(f"epoch record {name} is unusable ({exc})") from None
        match = _NAME.fullmatch(name.rsplit("/", 1)[-1])
        if match is None or int(match[1]) != number:
            raise DrError(f"epoch record {name} names epoch {number}, not its own")
        return cls(
            number=number,
            site=site,
            at=at.astimezone(dt.UTC),
            reason=str(data.get("reason", "")),
            host=str(data.get("host", "")),
        )


def _read_on(target: Target) -> Epoch | None:
    """The current epoch on *target* (the highest valid record), or ``None`` when it holds none."""
    with target.guard("list the epochs", missing_ok=True):
        try:
            entries = target.retrying(target.list, EPOCHS_FOLDER)
        except FileNotFoundError:
            return None
    numbers = sorted(
        (int(m[1]) for e in entries if not e.is_dir and (m := _NAME.fullmatch(e.name))),
        reverse=True,
    )
    for number in numbers:
        key = f"{EPOCHS_FOLDER}/{number:010d}.json"
        try:
            with target.guard("read an epoch record", missing_ok=True):
                raw = target.retrying(target.read_bounded, key, MAX_RECORD_BYTES)
            return Epoch.from_json(raw, name=key)
        except FileNotFoundError:
            continue
        except DrError as exc:
            # A record nobody could have written through claim_epoch: reported once, not believed.
            target.distrust(key, exc.message, "dr.record_unreadable")
    return None


def read_epoch(storage: Sequence[Target]) -> tuple[Epoch | None, str | None, list[str]]:
    """The current epoch: (epoch, the target it was read from, errors of the others).

    The shared targets are asked in order; the first that answers decides
    (the arbiter, unless it is down). ``(None, None, errors)`` when none
    answers; ``(None, name, [])`` when the first that answers holds no epoch.
    """
    errors: list[str] = []
    for target in storage:
        try:
            return _read_on(target), target.name, errors
        except TargetError as exc:
            errors.append(str(exc))
    return None, None, errors


def claim_epoch(
    storage: Sequence[Target],
    site: str,
    *,
    reason: str,
    now: dt.datetime,
    host: str = "",
    over: int | None = None,
) -> Epoch:
    """Claim the next epoch for *site* on the arbiter (the first shared target); return it.

    Exactly one claimant of an epoch wins: the record is created only if
    absent. Another site's claim of the same number is a :class:`DrError`
    naming it; the arbiter unreachable is one too (a claim must not be made
    where the other site might not see it). The record is then copied to the
    other shared targets (best effort, for readers while the arbiter is down).
    With *over* (the epoch number the claimant saw when it decided, ``0`` for
    none), the claim is of epoch *over* + 1 exactly: a site that decided on
    an outdated view loses, whoever claimed in the meantime.
    """
    if not storage:
        raise ConfigError("claiming an epoch needs a shared (object-storage) target")
    arbiter = storage[0]
    try:
        current = _read_on(arbiter)
    except TargetError as exc:
        raise DrError(
            f"cannot read the epochs on the arbiter {arbiter.name}: {exc}",
            hint="the first shared target decides which site is active; it must be reachable",
        ) from None
    seen = current.number if current else 0
    if over is not None and seen != over and current is not None:
        raise DrError(
            f"site {current.site} took epoch {current.number} ({current.reason} at "
            f"{_iso(current.at)}) since this site ({site}) looked; it did not become active",
            hint="see 'cellvault dr status'; only one site may be active at a time",
        )
    epoch = Epoch(
        number=(over if over is not None else seen) + 1,
        site=site,
        at=now.astimezone(dt.UTC),
        reason=reason,
        host=host,
    )
    with arbiter.guard(f"claim epoch {epoch.number}"):
        created = arbiter.create_exclusive(epoch.key, epoch.to_json())
    if not created:
        winner = _read_on(arbiter)
        who = (
            f"site {winner.site} ({winner.reason} at {_iso(winner.at)})"
            if winner
            else "another site"
        )
        raise DrError(
            f"epoch {epoch.number} was claimed first by {who}; this site ({site}) did not "
            f"become active",
            hint="see 'cellvault dr status'; only one site may be active at a time",
        )
    for other in storage[1:]:
        try:
            with other.guard(f"copy epoch {epoch.number}"):
                other.retrying(other.put_bytes, epoch.key, epoch.to_json())
        except TargetError as exc:
            log.warning("fence.copy_failed", target=other.name, error=str(exc))
    log.info("fence.claimed", epoch=epoch.number, site=site, reason=reason)
    return epoch


def written_after_fence(meta_epoch: int | None, stamp: dt.datetime, current: Epoch) -> bool:
    """Whether an archive of epoch *meta_epoch*, stamped *stamp*, was written by a fenced site.

    *stamp* is the archive id's time (the writing vault's clock, as the epoch's is).
    """
    return meta_epoch is not None and meta_epoch < current.number and stamp > current.at


@attrs.define
class Fence:
    """The fencing of one site: its id and the shared targets the epochs live on.

    :meth:`check` is what every writer calls; plugins that write to a shared
    target call it too (``vault.fence.check("my-plugin upload")``).
    """

    site: str
    storage: Sequence[Target]
    #: Whether this vault is a site of a DR pair (``DR_SITE_ID`` or ``DR_TARGET`` set, or
    #: a :class:`~cellvault.dr.Site`): its scheduled backups then write its heartbeat.
    dr: bool = False

    @property
    def names(self) -> frozenset[str]:
        """The names of the shared targets (those a fenced site must not write to)."""
        return frozenset(t.name for t in self.storage)

    def current(self) -> Epoch | None:
        """The current epoch, or ``None`` (none claimed, or no shared target answers)."""
        if not self.storage:
            return None
        return read_epoch(self.storage)[0]

    def take(
        self, reason: str, *, now: dt.datetime, host: str = "", over: int | None = None
    ) -> Epoch:
        """Become the active site: the current epoch if this site holds it, else claim the next.

        :class:`~cellvault.errors.DrError` when another site claimed that
        number first (it won; this site did not become active) or the
        arbiter cannot be reached. *over*: the epoch number this site saw when
        it decided to take over (``0``: none); another site's claim since then
        wins (see :func:`claim_epoch`).
        """
        current = read_epoch(self.storage)[0] if self.storage else None
        if current is not None and current.site == self.site:
            return current
        return claim_epoch(self.storage, self.site, reason=reason, now=now, host=host, over=over)

    def check(self, action: str) -> Epoch | None:
        """Prove this site may write to the shared targets; return the epoch it holds.

        ``None`` when no epoch was ever claimed (nobody is fenced) or no
        shared target answers (whatever writes there fails on its own).
        :class:`Fenced` when another site holds the current epoch.
        """
        epoch = self.current()
        if epoch is None or epoch.site == self.site:
            return epoch
        raise Fenced(
            f"this site ({self.site}) is fenced: site {epoch.site} holds epoch {epoch.number} "
            f"since {_iso(epoch.at)} ({epoch.reason}); {action} refused, nothing was written "
            "to the shared targets",
            hint=f"if site {epoch.site} took over, run 'cellvault dr failback' there and then "
            "here to hand back; to serve as its standby instead, set DR_PULL_ONLY=1 and run "
            "'cellvault dr prepare' here",
            active=epoch.site,
            since=_iso(epoch.at),
        )


def fence_for(config: Any, targets: Sequence[Target]) -> Fence:
    """The fence of a vault: ``DR_SITE_ID`` (else the host name), ``DR_TARGET`` (else all but the first)."""
    site = config.dr_site_id or host_site_id()
    names = list(config.dr_targets)
    shared = [t for t in targets if t.name in names] if names else list(targets[1:])
    return Fence(site, shared, dr=bool(config.dr_site_id or names))


@attrs.frozen
class Heartbeat:
    """A site's sign of life in the shared store: when, by what (``backup``, ``dr heartbeat``)."""

    site: str
    at: dt.datetime
    source: str = "heartbeat"
    host: str = ""

    @staticmethod
    def key(site: str) -> str:
        return f"{HEARTBEATS_FOLDER}/{site}.json"

    def to_json(self) -> bytes:
        data = {"site": self.site, "at": _iso(self.at), "source": self.source, "host": self.host}
        return json.dumps(data, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Heartbeat:
        """Read a heartbeat record; :class:`DrError` when it is not one."""
        try:
            data = load_record(raw, "heartbeat record")
            at = dt.datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00"))
            if at.tzinfo is None:
                raise ValueError("its time has no time zone")
            return cls(
                check_name(data["site"], "site"),
                at,
                str(data.get("source", "")),
                str(data.get("host", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DrError(f"heartbeat record is unusable ({exc})") from None


def read_heartbeat(storage: Sequence[Target], site: str) -> tuple[Heartbeat | None, list[str]]:
    """The newest heartbeat of *site* on the shared targets, and the errors of those that failed."""
    newest: Heartbeat | None = None
    errors: list[str] = []
    for target in storage:
        try:
            with target.guard("read a heartbeat", missing_ok=True):
                raw = target.retrying(target.read_bounded, Heartbeat.key(site), MAX_RECORD_BYTES)
            beat = Heartbeat.from_json(raw)
            if beat.site != site:
                raise DrError(f"the heartbeat of site {site} names site {beat.site}")
        except FileNotFoundError:
            continue
        except (TargetError, DrError) as exc:
            errors.append(f"{target.name}: {exc}")
            continue
        if newest is None or beat.at > newest.at:
            newest = beat
    return newest, errors


def write_heartbeat(fence: Fence, *, now: dt.datetime, source: str, host: str = "") -> list[str]:
    """Write *fence*'s site heartbeat to every shared target; the errors (never raised)."""
    beat = Heartbeat(fence.site, now.astimezone(dt.UTC), source, host)
    errors: list[str] = []
    for target in fence.storage:
        try:
            with target.guard("write a heartbeat"):
                target.retrying(target.put_bytes, Heartbeat.key(fence.site), beat.to_json())
        except TargetError as exc:
            errors.append(f"{target.name}: {exc}")
            log.warning("fence.heartbeat_failed", target=target.name, error=str(exc))
    return errors
