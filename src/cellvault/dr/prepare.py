"""Preparing a standby site: its directories, its targets checked, a first pull."""

from __future__ import annotations

import contextlib
import secrets
import time

from ..errors import CellvaultError, DrError, TargetError
from ..modes import private_dirs
from ..targets.base import Target
from .context import SiteContext
from .replicate import pull
from .reports import PrepareReport, TargetCheck

__all__ = ["check_target", "check_targets", "prepare"]


def check_target(target: Target, site_id: str) -> TargetCheck:
    """Reach *target*, and write, read back and delete a probe object on it."""
    started = time.monotonic()
    key = f".dr/probe-{site_id}-{secrets.token_hex(4)}"
    body = f"cellvault probe from {site_id}\n".encode()
    try:
        target.check()
        with target.guard("write a probe object"):
            target.retrying(target.put_bytes, key, body)
        try:
            with target.guard("read the probe object back"):
                back = target.retrying(target.read_bounded, key, len(body))
            if back != body:
                raise TargetError(
                    "the probe object read back differs from what was written",
                    target=target.name,
                )
        finally:
            with target.guard("delete the probe object"):
                target.retrying(target.delete, key)
    except CellvaultError as exc:
        return TargetCheck(target.name, False, str(exc), duration=time.monotonic() - started)
    return TargetCheck(target.name, True, duration=time.monotonic() - started)


def check_targets(ctx: SiteContext) -> list[TargetCheck]:
    """:func:`check_target` for every target of the vault."""
    return [check_target(target, ctx.site_id) for target in ctx.vault.targets]


def _create_directories(ctx: SiteContext) -> list[str]:
    layout = ctx.layout
    wanted = [
        layout.root,
        layout.logs,
        layout.spool,
        layout.dr,
        *(p.parent for c in ctx.vault.config.cells for p in c.paths),
    ]
    ours = {layout.root, layout.logs, layout.spool, layout.dr}
    created = []
    for path in dict.fromkeys(wanted):
        if not path.exists():
            try:
                # The backup directory's own folders are private; the cells' parents are not ours.
                if path in ours:
                    private_dirs(path)
                else:
                    path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DrError(
                    f"cannot create {path} ({exc.strerror})",
                    hint="create it or fix the permissions of its parent",
                ) from None
            created.append(str(path))
    return created


def prepare(ctx: SiteContext, *, pull_first: bool = True) -> PrepareReport:
    """See :meth:`cellvault.dr.Site.prepare`."""
    started = time.monotonic()
    created = _create_directories(ctx)
    checks = check_targets(ctx)
    reachable = {c.target for c in checks if c.ok}
    sync = None
    sources = [t.name for t in ctx.storage if t.name in reachable]
    if pull_first and sources:
        sync = pull(ctx, source=sources, record=False)
    with contextlib.suppress(CellvaultError):
        ctx.record("prepare")
    return PrepareReport(
        site=ctx.site_id,
        created=tuple(created),
        checks=tuple(checks),
        pull=sync,
        holdings=ctx.holdings() if ctx.local.name in reachable else {},
        duration=time.monotonic() - started,
    )
