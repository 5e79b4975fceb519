"""Read leases: a restore or drill says which archives it is reading, and prune keeps them.

A read lease is a small JSON object at ``.locks/<cell>.read-<token>.lock`` on
the target read from, naming the archives (the whole chain) the reader
needs; its holder renews it in the background like a :class:`~cellvault.lock.Lease`
and deletes it when done. Many readers may hold one at once. ``prune`` lists
them under the cell's (exclusive) lease and keeps every archive a live read
lease names, saying so; one whose holder is gone or that expired is ignored.

A read lease is created while holding the cell's lease for a moment, so it
cannot appear between prune's listing and its deletions; while a prune of
the cell runs, the reader waits for it (up to *wait* seconds). Any other
holder (a backup) deletes nothing, so the read lease is then created
without waiting.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs

from .errors import LockHeld
from .lock import Lease, holder_is_stale, mark_live
from .log import get_logger
from .specs import DEFAULT_TTL
from .targets.base import Target
from .trust import MAX_LEASE_BYTES

__all__ = ["ReadLease", "read_holds"]

log = get_logger(__name__)

_PREFIX = ".read-"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.define
class ReadLease:
    """A held read lease on *archives* of *cell* at *target*; release with :meth:`release`."""

    target: Target
    cell: str
    archives: tuple[str, ...]
    purpose: str
    ttl: float = DEFAULT_TTL
    token: str = attrs.field(factory=lambda: secrets.token_hex(8))
    since: dt.datetime = attrs.field(factory=_now)
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return f".locks/{self.cell}{_PREFIX}{self.token}.lock"

    def _body(self) -> bytes:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "purpose": self.purpose,
                "since": self.since.isoformat(),
                "expires": (_now() + dt.timedelta(seconds=self.ttl)).isoformat(),
                "token": self.token,
                "archives": list(self.archives),
            }
        ).encode()

    @classmethod
    def acquire(
        cls,
        target: Target,
        cell: str,
        archives: Sequence[str],
        purpose: str,
        *,
        ttl: float = DEFAULT_TTL,
        wait: float = 300.0,
    ) -> ReadLease:
        """Create a read lease on *archives*; :class:`LockHeld` when a prune runs longer than *wait*."""
        lease = cls(target, cell, tuple(archives), purpose, ttl)
        deadline = time.monotonic() + wait
        while True:
            try:
                with Lease.acquire(target, cell, f"{purpose} (taking a read lease)", ttl):
                    lease._create()
                    return lease
            except LockHeld as exc:
                if "prune" not in str(exc.holder.get("purpose", "")):
                    lease._create()  # a backup holds it: it deletes no archive
                    return lease
                if time.monotonic() >= deadline:
                    raise LockHeld(
                        f"cell {cell} on target {target.name}: a prune has run for more than "
                        f"{wait:.0f}s, so the {purpose} cannot protect the archives it reads",
                        holder=exc.holder,
                    ) from None
                log.info("readlease.waiting", target=target.name, cell=cell, holder=exc.holder)
                time.sleep(0.5)

    def _create(self) -> None:
        mark_live(self.token)
        with self.target.guard(f"read lease on cell {self.cell}"):
            self.target.retrying(self.target.put_bytes, self.key, self._body())
        self._thread = threading.Thread(
            target=self._renew, name=f"read-lease-{self.cell}", daemon=True
        )
        self._thread.start()
        log.debug("readlease.acquired", target=self.target.name, cell=self.cell)

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.target.retrying(self.target.put_bytes, self.key, self._body())
            except Exception as exc:  # noqa: BLE001 - renewal must never kill the run
                log.warning(
                    "readlease.renew_failed",
                    target=self.target.name,
                    cell=self.cell,
                    error=str(exc),
                )

    def release(self) -> None:
        """Stop renewing and delete the read lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.target.retrying(self.target.delete, self.key)
        except Exception as exc:  # noqa: BLE001 - it then expires by itself; say so
            log.warning(
                "readlease.release_failed", target=self.target.name, cell=self.cell, error=str(exc)
            )
        finally:
            mark_live(self.token, live=False)

    def __enter__(self) -> ReadLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_holds(target: Target, cell: str) -> dict[str, str]:
    """Archive id -> who reads it, for every live read lease on *cell* at *target*."""
    try:
        entries = target.retrying(target.list, ".locks")
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    prefix = f"{cell}{_PREFIX}"
    for entry in entries:
        if entry.is_dir or not entry.name.startswith(prefix):
            continue
        try:
            raw = target.retrying(target.read_bounded, f".locks/{entry.name}", MAX_LEASE_BYTES)
            if len(raw) > MAX_LEASE_BYTES:
                continue  # no lease is that big: damage or a plant, not a holder
            holder: Any = json.loads(raw)
        except FileNotFoundError:
            continue  # released meanwhile
        except ValueError:
            continue  # every write is whole: damage, not a holder
        if not isinstance(holder, dict) or holder_is_stale(holder):
            continue
        who = (
            f"{holder.get('purpose', 'a reader')} on host {holder.get('host')} "
            f"(pid {holder.get('pid')}) since {holder.get('since')}"
        )
        for archive in holder.get("archives") or ():
            out.setdefault(str(archive), who)
    return out
