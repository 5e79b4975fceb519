"""The package's shape, held by a test: module and function sizes, no private imports across modules.

The layers themselves are held by import-linter (``nox -s lint``, contracts in
pyproject.toml); ruff holds complexity (C901) and statement counts (PLR0915).
What neither tool checks is here. docs/architecture.md says why.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cellvault"
#: The command line is one module of click commands; it alone may be long.
LONG_MODULES = {"cli.py"}
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80


def _modules() -> list[tuple[str, str]]:
    return [
        (str(path.relative_to(SRC)), path.read_text(encoding="utf-8"))
        for path in sorted(SRC.rglob("*.py"))
    ]


def test_the_package_is_found() -> None:
    names = [name for name, _ in _modules()]
    assert "vault.py" in names and "ops/backup.py" in names and "dr/site.py" in names


def test_no_module_is_over_800_lines() -> None:
    long = {
        name: len(text.splitlines())
        for name, text in _modules()
        if name not in LONG_MODULES and len(text.splitlines()) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules by concept: {long}"


def test_no_function_is_over_80_lines() -> None:
    long = [
        f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for name, text in _modules()
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_private_name_is_imported_from_another_module() -> None:
    found = [
        f"{name}:{node.lineno} {'.' * node.level}{node.module or ''} import {alias.name}"
        for name, text in _modules()
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ImportFrom)
        and (node.level > 0 or (node.module or "").startswith("cellvault"))
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert not found, f"private names imported across modules: {found}"
