"""Database dumpers: consistent snapshots of what is not a plain file tree.

The plugin interface is in :mod:`cellvault.dumpers.base`; the built-in
types (each a plugin module registered like a third party's) are
:mod:`~cellvault.dumpers.postgres`, :mod:`~cellvault.dumpers.mysql`,
:mod:`~cellvault.dumpers.sqlite`, :mod:`~cellvault.dumpers.redis` and
:mod:`~cellvault.dumpers.command`. See ``docs/dumpers.md``.
"""

from __future__ import annotations

from .base import (
    DumpContext,
    Dumper,
    DumpError,
    DumperSpec,
    LoadContext,
    LoadError,
    ToolResult,
    run_tool,
)

__all__ = [
    "DumpContext",
    "DumpError",
    "Dumper",
    "DumperSpec",
    "LoadContext",
    "LoadError",
    "ToolResult",
    "run_tool",
]
