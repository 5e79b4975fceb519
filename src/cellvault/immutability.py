"""How long a store must refuse to delete an archive: Object Lock retention dates.

With ``BACKUP_OBJECT_LOCK=governance`` (or ``compliance``), every object of
an archive written to a target that can lock objects (S3 with Object Lock
enabled on the bucket; a local directory, through the immutable attribute) is locked until the day the retention policy would
release it: its stamp plus ``keep_full_days`` for a full archive,
``keep_incremental_days`` for an incremental (or :attr:`ObjectLock.days` for
both, when a program sets it). The chain rule: an archive an incremental needs is kept
at least as long as that incremental, so writing an incremental extends the
lock of every archive of its chain to the incremental's date (a lock is only
ever extended). ``prune`` then never asks the store to delete a locked
object: it keeps it, saying until when (:mod:`cellvault.ops.prune`).

A stolen backup credential can then overwrite nothing and delete nothing
that is locked; see ``docs/security.md`` for the credentials to pair it with.
"""

from __future__ import annotations

import datetime as dt

import attrs

from .archive import Sidecar
from .errors import ConfigError
from .retention import RetentionPolicy

__all__ = ["LOCK_MODES", "ObjectLock", "lock_mode"]

#: Object Lock retention modes: governance (a privileged credential with
#: ``s3:BypassGovernanceRetention`` may still delete) and compliance (nobody
#: can, until the date).
LOCK_MODES = ("governance", "compliance")


def lock_mode(value: str | None, *, where: str = "BACKUP_OBJECT_LOCK") -> str | None:
    """A configured lock mode: ``governance``, ``compliance``, or ``None`` (empty, ``off``)."""
    text = (value or "").strip().lower()
    if text in ("", "off", "none", "0", "no"):
        return None
    if text not in LOCK_MODES:
        raise ConfigError(
            f"{where} must be governance, compliance or off, not {value!r}",
            hint="governance: a prune credential allowed to bypass it may delete early; "
            "compliance: nobody can until the date",
        )
    return text


@attrs.frozen
class ObjectLock:
    """The Object Lock a target applies to what it stores: a mode and the policy it follows."""

    mode: str = attrs.field(validator=attrs.validators.in_(LOCK_MODES))
    #: The target's retention policy: its age rules give each archive's date.
    policy: RetentionPolicy = attrs.field(factory=RetentionPolicy)
    #: Days every archive is locked for, instead of the policy's age rules.
    days: float | None = None

    def retain_until(self, sidecar: Sidecar) -> dt.datetime | None:
        """The date *sidecar*'s archive is locked until, by its own kind and stamp.

        ``None`` when no rule gives one (the policy's age rule for its kind is off).
        The chain rule is applied by the target, which extends the chain's locks.
        """
        if self.days:
            days: float | None = self.days
        elif sidecar.meta.kind == "full":
            days = self.policy.keep_full_days
        else:
            days = self.policy.keep_incremental_days
        if not days:
            return None
        return sidecar.id.when + dt.timedelta(days=days)

    def describe(self) -> str:
        """How the lock is chosen, for reports."""
        rule = f"{self.days:g} days" if self.days else "the retention policy's age rules"
        return f"Object Lock {self.mode}, {rule}"
