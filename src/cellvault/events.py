"""Progress and lifecycle events, for callers that want to follow a run.

Pass ``on_event`` to :class:`~cellvault.Vault`; it is called with an
:class:`Event` for each step (``backup.started``, ``cell.progress``,
``archive.stored``, ``verify.failed``, ``restore.swapped``, ...). It may be
called from worker threads, so it should be quick and thread-safe (put the
event on a queue, for example). The command line's progress display is built
on the same events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["Event"]


@attrs.frozen
class Event:
    """One step of a run."""

    name: str
    run: str
    cell: str | None = None
    target: str | None = None
    archive: str | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict)
