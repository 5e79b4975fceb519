"""What an operation works with besides its :class:`~cellvault.run.Run`."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping, Sequence

import attrs

from ..codec import Codec
from ..crypt import Recipients
from ..dumpers.base import Dumper
from ..errors import ConfigError, Fenced
from ..fence import Fence
from ..run import Run
from ..state import StateFile
from ..targets.base import Target

__all__ = ["Resources", "check_fence", "find_target"]


def find_target(targets: Sequence[Target], name: str) -> Target:
    """The target called *name* among *targets*; :class:`ConfigError` when there is none."""
    for target in targets:
        if target.name == name:
            return target
    known = ", ".join(t.name for t in targets)
    raise ConfigError(f"unknown target {name!r}", hint=f"configured targets: {known}")


@attrs.frozen(eq=False)
class Resources:
    """A vault's targets, dumpers, codec, state file and clock, as one operation sees them.

    The vault builds one per call from its attributes: an operation reads
    what the vault holds at the moment it starts.
    """

    #: The configured targets, in configured order (local first).
    targets: Sequence[Target]
    #: Each configured cell's dumpers.
    dumpers: Mapping[str, tuple[Dumper, ...]]
    codec: Codec
    state: StateFile
    #: The current UTC time (tests pass a fake one).
    clock: Callable[[], dt.datetime]
    #: Held while a backup chooses its stamp: runs of one vault never share one.
    stamp_lock: threading.Lock
    #: DR fencing: checked before writing to a shared target.
    fence: Fence = attrs.field(factory=lambda: Fence("", ()))
    #: The age recipients new archives are sealed to; ``None``: not encrypted.
    recipients: Recipients | None = None

    def target(self, name: str) -> Target:
        """The configured target called *name*."""
        return find_target(self.targets, name)

    def chosen(self, names: Sequence[str] | None) -> list[Target]:
        """The targets called *names*, in that order; all of them when *names* is empty."""
        return [self.target(n) for n in names] if names else list(self.targets)

    def now(self) -> dt.datetime:
        """The clock's time as an archive instant: UTC, whole seconds (naive counts as UTC)."""
        now = self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        return now.astimezone(dt.UTC).replace(microsecond=0)


def check_fence(run: Run, res: Resources, targets: Sequence[Target], action: str) -> int | None:
    """Prove this site may write to the shared ones among *targets*; return the epoch it holds.

    A fenced site (:class:`~cellvault.errors.Fenced`) is alerted and refused
    before anything is written. ``None`` when no shared target is written
    to, or no epoch was ever claimed.
    """
    if not any(t.name in res.fence.names for t in targets):
        return None
    try:
        epoch = res.fence.check(action)
    except Fenced as exc:
        run.fail("fence", str(exc))
        raise
    return epoch.number if epoch is not None else None
