"""The exceptions cellvault raises.

Every failure a caller can act on is a :class:`CellvaultError`. Its message
says what failed, where (cell, target, archive) and what to do; it never holds
a secret. The command line maps :attr:`CellvaultError.exit_code` to the
process exit status in one place and prints no traceback for these.
"""

from __future__ import annotations

__all__ = [
    "ArchiveCorrupt",
    "ArchiveNotFound",
    "BackupError",
    "CellvaultError",
    "ConfigError",
    "DrError",
    "DumpError",
    "Fenced",
    "FleetError",
    "KeyMissing",
    "LoadError",
    "LockHeld",
    "RestoreError",
    "SignatureError",
    "TargetError",
    "UnsafeArchive",
    "WebhookError",
    "json_kind",
]


def json_kind(value: object) -> str:
    """What a JSON value is, in JSON's words, for a message: ``"a number"``, ``"null"``.

    (A message built from a Python type's name said "is a int", "is a NoneType".)
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


class CellvaultError(Exception):
    """Root of every error cellvault raises on purpose.

    ``exit_code`` is what the command line exits with: 1 for a failed backup,
    verify or restore, 2 for a usage or configuration problem.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)


class ConfigError(CellvaultError):
    """The configuration or the command line's input cannot be used.

    Raised where the bad value enters (a cell name, a date, a target URL), with
    the field named.
    """

    exit_code = 2


class TargetError(CellvaultError):
    """A storage target could not be reached, read or written."""

    def __init__(self, message: str, *, target: str, hint: str | None = None) -> None:
        self.target = target
        super().__init__(f"target {target}: {message}", hint=hint)


class ArchiveNotFound(CellvaultError):
    """No committed archive matches what was asked for."""


class ArchiveCorrupt(CellvaultError):
    """A stored archive does not match its sidecar or its manifest."""

    def __init__(
        self,
        message: str,
        *,
        archive: str,
        member: str | None = None,
        target: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.archive = archive
        self.member = member
        self.target = target
        #: What is wrong, without the where.
        self.detail = message
        where = f"archive {archive}"
        if member:
            where += f", member {member}"
        if target:
            where += f", on target {target}"
        super().__init__(f"{where}: {message}", hint=hint)


class KeyMissing(CellvaultError):
    """An encrypted archive cannot be read: no identity given opens it.

    The message names the archive and the recipients it was sealed to (their
    fingerprints, never a private key).
    """


class UnsafeArchive(ArchiveCorrupt):
    """An archive member would escape the restore destination, or be written through a link.

    Absolute paths, ``..`` components, duplicates, paths below a link or a
    file, hard links to anything but a file of the archive, and anything but
    files and directories under ``dumps/`` are refused before anything is
    written; a directory of the staging tree replaced by a link while a
    restore runs is refused too. Link targets are not: links are data.
    """


class SignatureError(ArchiveCorrupt):
    """An archive's sidecar is not signed by a trusted key (see :mod:`cellvault.signing`).

    A signature that does not match, one by a key that is not trusted, or
    none at all when signatures are required: the archive is refused before
    anything else of it is read.
    """


class LockHeld(CellvaultError):
    """Another run holds the lock on a cell at a target."""

    def __init__(self, message: str, *, holder: dict[str, object] | None = None) -> None:
        self.holder = holder or {}
        super().__init__(
            message,
            hint="wait for that run to finish; a lock whose holder died expires by itself",
        )


class BackupError(CellvaultError):
    """A backup could not be made or stored."""


class RestoreError(CellvaultError):
    """A restore could not be completed; the live data was left as it was."""


class DumpError(BackupError):
    """A dumper could not take its snapshot; the cell's backup fails (stage ``dump``)."""


class LoadError(RestoreError):
    """A dump could not be loaded back; the cell's restore fails before the swap."""


class DrError(CellvaultError):
    """A disaster-recovery step was refused or cannot be done; nothing was switched."""


class Fenced(DrError):
    """This site does not hold the current DR epoch: it must not write to the shared targets.

    ``active`` is the site that holds it, ``since`` when it claimed it (ISO 8601).
    """

    def __init__(self, message: str, *, active: str, since: str, hint: str | None = None) -> None:
        self.active = active
        self.since = since
        super().__init__(message, hint=hint)


class FleetError(CellvaultError):
    """The fleet's broker or workers could not do what was asked (``cellvault.fleet``)."""


class WebhookError(CellvaultError):
    """An alert delivery failed; the message never holds the URL's path, query or the secret.

    ``transient`` tells whether another attempt may succeed (a timeout, a 5xx).
    """

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient
