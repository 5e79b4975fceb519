"""The inventory: which cells live on which host, from the configuration and the live workers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import Celery

from .reports import Inventory
from .settings import ANNOUNCE, FleetSettings

__all__ = ["inventory"]


def inventory(
    app: Celery,
    ctx: Any = None,
    *,
    configured: Iterable[str] = (),
    timeout: float = 2.0,
) -> Inventory:
    """Which cells live on which host: ``[fleet.hosts]`` and what each live worker announces.

    *configured* are the cells the asking host knows of (its own
    configuration): those no host claims are reported as unowned.
    """
    settings: FleetSettings = app.cellvault_settings
    hosts: dict[str, set[str]] = {h: set(cs) for h, cs in settings.hosts.items()}
    live: set[str] = set()
    pool: set[str] = set()
    replies = app.control.broadcast(ANNOUNCE, reply=True, timeout=timeout) or []
    for reply in replies:
        for answer in reply.values():
            host = answer.get("host") if isinstance(answer, dict) else None
            if not host:
                continue
            live.add(host)
            hosts.setdefault(host, set()).update(answer.get("cells", []))
            if answer.get("pool"):
                pool.add(host)
    if ctx is not None:
        hosts.setdefault(ctx.host, set()).update(ctx.cells)
    owners: dict[str, list[str]] = {}
    for host, cells in hosts.items():
        for cell in cells:
            owners.setdefault(cell, []).append(host)
    # A pool host restores every cell; it owns the cells it backs up only if it announces them.
    return Inventory(
        hosts={h: tuple(sorted(cs)) for h, cs in sorted(hosts.items()) if cs},
        live=tuple(sorted(live)),
        pool=tuple(sorted(pool)),
        unowned=tuple(sorted(set(configured) - set(owners))),
        contested={c: tuple(sorted(hs)) for c, hs in sorted(owners.items()) if len(hs) > 1},
    )
