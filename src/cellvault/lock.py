"""Leases: one writer per cell and target, and no lock that stays stale.

A lease is a small JSON object at ``.locks/<cell>.lock`` on the target,
created only if absent (a conditional create). Its holder renews it in the
background; a lease whose expiry has passed, or whose holder process on this
host is gone, is taken over. So a crashed run never needs a manual unlock.
Every change of an existing lease (takeover, renewal, release) is
conditional on the version read (:meth:`Lease._replace`), so a renewal
racing a takeover leaves exactly one holder, and the other learns it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import socket
import threading
from collections.abc import Callable
from typing import Any

import attrs

from .errors import LockHeld
from .forking import alive
from .log import get_logger
from .specs import DEFAULT_TTL
from .targets.base import LOCKS, Target
from .trust import MAX_LEASE_BYTES

__all__ = ["DEFAULT_TTL", "Lease", "holder_is_stale", "mark_live"]

log = get_logger(__name__)


# Tokens of the leases this process holds now. A lease on this host, with our
# pid, whose token is not here was left by a run of ours that could not delete
# it (its target was down): it is stale, not a concurrent holder.
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.frozen
class _Seen:
    """One version of a lease as read: its bytes, its body (``{"unreadable": True}``
    when it is not a lease's JSON) and, on a target with a compare-and-swap, its tag."""

    raw: bytes
    holder: dict[str, Any]
    tag: str | None


@attrs.define
class Lease:
    """A held lease on *cell* at *target*; release it with :meth:`release` or ``with``."""

    target: Target
    cell: str
    purpose: str
    ttl: float = DEFAULT_TTL
    token: str = attrs.field(factory=lambda: secrets.token_hex(8))
    since: dt.datetime = attrs.field(factory=_now)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _claims: list[str] = attrs.field(factory=list)
    _thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return f".locks/{self.cell}.lock"

    def _body(self) -> bytes:
        now = _now()
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "purpose": self.purpose,
                "since": self.since.isoformat(),
                "expires": (now + dt.timedelta(seconds=self.ttl)).isoformat(),
                "token": self.token,
            }
        ).encode()

    @classmethod
    def acquire(cls, target: Target, cell: str, purpose: str, ttl: float = DEFAULT_TTL) -> Lease:
        """Take the lease or raise :class:`LockHeld` naming its holder."""
        lease = cls(target, cell, purpose, ttl)
        # Known as live before it can appear on the target: another thread of this
        # process that reads it mid-acquire must not take it for one left behind.
        with _LIVE_LOCK:
            _LIVE.add(lease.token)
        try:
            with target.guard(f"lock cell {cell}"):
                for _ in range(3):
                    if target.retrying(target.create_exclusive, lease.key, lease._body()):
                        lease._start()
                        log.debug("lock.acquired", target=target.name, cell=cell, purpose=purpose)
                        return lease
                    seen = lease._read()
                    if seen is None:
                        continue  # released between our attempt and the read
                    holder = seen.holder
                    if holder.get("token") == lease.token:
                        # Our create went through but its answer was lost, and a retry said "exists".
                        lease._start()
                        return lease
                    if _is_stale(holder):
                        log.warning("lock.expired", target=target.name, cell=cell, holder=holder)
                        if lease._replace(seen, lease._body):
                            lease._start()
                            return lease
                        log.info("lock.takeover_lost", target=target.name, cell=cell)
                        continue
                    raise LockHeld(
                        f"cell {cell} on target {target.name} is locked by {holder.get('purpose', 'a run')} "
                        f"on host {holder.get('host')} (pid {holder.get('pid')}) since {holder.get('since')}",
                        holder=holder,
                    )
            raise LockHeld(
                f"cell {cell} on target {target.name}: the lock changed hands while taking it"
            )
        except BaseException:
            with _LIVE_LOCK:
                _LIVE.discard(lease.token)
            raise

    def _claim_key(self, seen: _Seen) -> str:
        """The key whose conditional create wins the right to replace the lease version *seen*."""
        return f"{LOCKS}/{self.cell}.takeover.{hashlib.sha256(seen.raw).hexdigest()[:32]}"

    def _replace(self, seen: _Seen, body: Callable[[], bytes] | None) -> bool:
        """Replace the lease version *seen* with what *body* makes (``None``: delete it); tell whether we did.

        Every change of an existing lease goes through here: a takeover, a
        renewal, a release. Read-compare-write is not atomic: a renewal and a
        takeover of the same version could both write, and each believe it
        holds the lease. Where the store has a compare-and-swap (S3: a PUT,
        or a DELETE for a release, with ``If-Match`` on the ETag read) the
        version is replaced only if no one wrote it since, and exactly one
        writer can. Elsewhere (OSS,
        whose PutObject has ``x-oss-forbid-overwrite`` but no ``If-Match``;
        a local folder; an rsync target) the right to replace a version is
        won first by a conditional create of a claim key named after that
        version's content (``x-oss-forbid-overwrite``, ``link()``, a symbolic
        link rsync makes): exactly one writer creates it. The winner reads
        the lease again and writes only if it is still that version; it then
        deletes the claim. No one changes a lease without the claim of its
        current version, and a new lease is only ever created where none is,
        so between the winner's second read and its write nothing else can.
        The others learn they lost (a renewal: the lease is no longer ours).
        """
        target = self.target
        if seen.tag is not None:
            if body is None:
                return bool(target.retrying(target.delete_if, self.key, seen.tag))
            return bool(target.retrying(target.replace_if, self.key, body(), seen.tag))
        claim = self._claim_key(seen)
        if not self._claim(claim):
            return False
        try:
            now = self._read()
            if now is None or now.raw != seen.raw:
                return False  # changed meanwhile (released, renewed, taken): not ours to replace
            if body is None:
                target.retrying(target.delete, self.key)
            else:
                # Made now, not before the claim: the expiry counts from the write.
                target.retrying(target.put_bytes, self.key, body())
            return True
        finally:
            target.retrying(target.delete, claim)

    def _claim(self, key: str, depth: int = 0) -> bool:
        """Create the claim *key*; tell whether we did.

        A claim left by a run killed mid-takeover (older than the lease's ttl)
        is itself taken over the same way, through a claim named after it, so
        a crash never blocks the cell and two runs never both win.
        """
        target = self.target
        # Named by this attempt, not by the lease: a release racing a stuck renewal of
        # the same lease must not take the renewal's claim for its own.
        attempt = secrets.token_hex(8)
        body = json.dumps({"token": attempt, "since": _now().isoformat()}).encode()
        if target.retrying(target.create_exclusive, key, body):
            return True
        if depth >= 3:
            return False
        try:
            old = target.retrying(target.read_bounded, key, MAX_LEASE_BYTES)
        except FileNotFoundError:
            return self._claim(key, depth + 1)
        try:
            made = json.loads(old[:MAX_LEASE_BYTES])
            if made["token"] == attempt:
                return True  # ours: the create went through and its answer was lost
            since = dt.datetime.fromisoformat(made["since"])
            fresh = since + dt.timedelta(seconds=self.ttl) > _now()
        except (ValueError, KeyError, TypeError):
            fresh = False  # damaged: a claim is written whole, so it is no one's
        if fresh:
            return False
        sub = f"{key}.{hashlib.sha256(old).hexdigest()[:8]}"
        if not self._claim(sub, depth + 1):
            return False
        self._claims.append(sub)
        if target.retrying(target.read_bounded, key, MAX_LEASE_BYTES) != old:
            return False
        target.retrying(target.delete, key)
        return bool(target.retrying(target.create_exclusive, key, body))

    def check(self) -> None:
        """Raise :class:`LockHeld` unless this lease is still ours on its target (the fence)."""
        holder = self._holder()
        if holder is None or holder.get("token") != self.token:
            raise LockHeld(
                f"cell {self.cell} on target {self.target.name}: the lease was lost "
                "(taken over after it expired); nothing is committed",
                holder=holder or {},
            )

    def _holder(self) -> dict[str, Any] | None:
        seen = self._read()
        return None if seen is None else seen.holder

    def _read(self) -> _Seen | None:
        """The lease as it is now on the target (``None``: no lease).

        The tag (an ETag) is read only on targets with a compare-and-swap;
        ``None`` elsewhere.
        """
        target = self.target
        tag: str | None = None
        try:
            if target.conditional_replace:
                raw, tag = target.retrying(target.read_tagged, self.key, MAX_LEASE_BYTES)
            else:
                raw = target.retrying(target.read_bounded, self.key, MAX_LEASE_BYTES)
        except FileNotFoundError:
            return None
        holder: dict[str, Any] = {"unreadable": True}
        if len(raw) <= MAX_LEASE_BYTES:
            try:
                data = json.loads(raw)
            except ValueError:
                data = None
            if isinstance(data, dict):
                holder = data
        return _Seen(raw, holder, tag)

    def _start(self) -> None:
        with _LIVE_LOCK:
            _LIVE.add(self.token)
        self._thread = threading.Thread(target=self._renew, name=f"lease-{self.cell}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                if not self._renew_once():
                    log.error("lock.lost", target=self.target.name, cell=self.cell)
                    return
            except Exception as exc:  # noqa: BLE001 - renewal must never kill the run; the next try may work
                log.warning(
                    "lock.renew_failed", target=self.target.name, cell=self.cell, error=str(exc)
                )

    def _renew_once(self) -> bool:
        """Push our lease's expiry forward; ``False`` when it is no longer ours.

        The renewal is conditional on the version read (ours), like a
        takeover (:meth:`_replace`): a takeover between the read and the
        write wins, and this holder learns it lost the lease.
        """
        seen = self._read()
        if seen is None or seen.holder.get("token") != self.token:
            return False
        if self._replace(seen, self._body):
            return True
        # Changed since the read, or our write went through and its answer was lost.
        holder = self._holder()
        return holder is not None and holder.get("token") == self.token

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (conditionally, like a renewal)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            seen = self._read()
            if seen is not None and seen.holder.get("token") == self.token:
                self._replace(seen, None)
            for claim in self._claims:
                self.target.retrying(self.target.delete, claim)
        except Exception as exc:  # noqa: BLE001 - the lease then expires by itself; say so
            log.warning(
                "lock.release_failed",
                target=self.target.name,
                cell=self.cell,
                error=str(exc),
                expires_in=self.ttl,
            )
        finally:
            # Only once it is gone: until then another thread of ours must see it as held.
            with _LIVE_LOCK:
                _LIVE.discard(self.token)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def mark_live(token: str, live: bool = True) -> None:
    """Count the lease (or read lease) *token* as held by this process, or no longer."""
    with _LIVE_LOCK:
        if live:
            _LIVE.add(token)
        else:
            _LIVE.discard(token)


def holder_is_stale(holder: dict[str, Any]) -> bool:
    """Whether the lease (or read lease) whose body is *holder* may be taken over or ignored."""
    return _is_stale(holder)


def _is_stale(holder: dict[str, Any]) -> bool:
    if holder.get("unreadable"):
        return True  # every write of a lease is whole, so this is damage, not a holder
    # A holder on this host whose process is gone is stale whatever its expiry says.
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if (
            isinstance(pid, int)
            and not isinstance(pid, bool)
            and pid > 0
            and pid != os.getpid()
            and not alive(pid)
        ):
            return True
        if pid == os.getpid():
            with _LIVE_LOCK:
                if holder.get("token") not in _LIVE:
                    return True
    try:
        expires = dt.datetime.fromisoformat(str(holder["expires"]))
    except (KeyError, ValueError):
        return False
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.UTC)
    return expires < _now()
