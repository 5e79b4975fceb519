"""Database dumpers: consistent snapshots of what is not a plain file tree.

The plugin interface is in :mod:`cellvault.dumpers.base` (options in
:mod:`~cellvault.dumpers.options`, tools run by :mod:`cellvault.tool`); the built-in
types (each a plugin module registered like a third party's) are
:mod:`~cellvault.dumpers.postgres`, :mod:`~cellvault.dumpers.mysql`,
:mod:`~cellvault.dumpers.sqlite`, :mod:`~cellvault.dumpers.redis` and
:mod:`~cellvault.dumpers.command`. See ``docs/dumpers.md``.
"""

from __future__ import annotations

from ..errors import DumpError, LoadError
from ..specs import DumperSpec
from ..tool import ToolResult, run_tool
from .base import DumpContext, Dumper, LoadContext
from .staging import StagedLoad

__all__ = [
    "DumpContext",
    "DumpError",
    "Dumper",
    "DumperSpec",
    "LoadContext",
    "LoadError",
    "StagedLoad",
    "ToolResult",
    "run_tool",
]
