"""The ``command`` dumper: any program's stdout, loaded back by a program reading stdin.

For what has no dumper of its own (``etcdctl snapshot save /dev/stdout``,
``mongodump --archive``, ``ldapsearch``...)::

    [[cells.crm.dumpers]]
    type = "command"
    name = "ldap"
    command = ["slapcat", "-n", "1"]
    restore_command = ["slapadd", "-n", "1", "-q"]
    filename = "ldap.ldif"

Both run without a shell, with the cell's environment plus *env* and
``CELLVAULT_CELL``, ``CELLVAULT_ARCHIVE`` (and, on restore,
``CELLVAULT_DUMP_FILE``: the staged dump as one file). A non-zero exit or a
timeout fails the backup (or the restore, before the swap).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ..errors import LoadError
from ..hookspecs import hookimpl
from ..specs import DumperSpec
from .base import DumpContext, Dumper, LoadContext
from .options import to_args, to_env

__all__ = ["CommandDumper"]

_SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|KEY|AUTH|CREDENTIAL", re.I)


def _filename(value: Any) -> str:
    text = str(value)
    if not text or "/" in text or text.startswith("."):
        raise ValueError(f"filename {text!r} must be a plain file name")
    return text


def _command(value: Any) -> tuple[str, ...]:
    argv = to_args(value)
    if not argv:
        raise ValueError("command is empty")
    return argv


@attrs.define(kw_only=True)
class CommandDumper(Dumper):
    """Stores a command's stdout; restores by feeding it to *restore_command*'s stdin."""

    type: ClassVar[str] = "command"

    #: The program and its arguments (a list; a string is split on white space).
    command: tuple[str, ...] = attrs.field(converter=_command)
    #: The program that reads the dump on stdin at restore time (none: a restore
    #: hook imports it; set ``autoload = false`` then).
    restore_command: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    #: The dump's file name inside ``dumps/<name>/``.
    filename: str = attrs.field(default="output", converter=_filename)
    #: Extra environment variables for both commands (they may hold credentials:
    #: never in the repr; describe() masks those whose names say so).
    env: dict[str, str] = attrs.field(factory=dict, converter=to_env, repr=False)
    #: Working directory of both commands.
    cwd: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))

    def _env(self, cell: str, archive: str, **more: str) -> dict[str, str]:
        return {
            **os.environ,
            **self.env,
            "CELLVAULT_CELL": cell,
            "CELLVAULT_ARCHIVE": archive,
            **more,
        }

    def _secrets(self) -> list[str]:
        """Values of *env* whose names say they are secret: masked in what the tools print."""
        return [v for k, v in self.env.items() if _SECRET_NAME.search(k)]

    def dump(self, ctx: DumpContext) -> None:
        ctx.info["command"] = list(self.command)
        ctx.run(
            self.command,
            stdout_to=self.filename,
            env=self._env(ctx.cell.name, ctx.archive),
            secrets=self._secrets(),
            cwd=self.cwd,
        )

    def load(self, ctx: LoadContext) -> None:
        if not self.restore_command:
            raise LoadError(
                f"{ctx.where}: no restore_command is configured",
                hint="set restore_command, or autoload = false to leave the dump to a restore hook",
            )
        dump = ctx.path(self.filename)
        ctx.run(
            self.restore_command,
            stdin=dump,
            env=self._env(ctx.cell.name, ctx.archive, CELLVAULT_DUMP_FILE=str(dump)),
            secrets=self._secrets(),
            cwd=self.cwd,
        )

    def stock_restore(self, files: Sequence[str]) -> str | None:
        if not self.restore_command:
            return None
        return f"{' '.join(self.restore_command)} < {self.filename}"


@hookimpl
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    return CommandDumper.from_spec(spec) if spec.type == "command" else None
