"""A griffe extension for the cellvault docs build (not part of the package).

cellvault's docstrings are written for Sphinx-style readers: ``:class:`Vault```
roles for cross-references and ``#:`` comments above attributes. mkdocstrings
renders neither, so this extension, loaded by ``mkdocs.yml``:

* turns ``#:`` comments into the docstrings of the attributes below them;
* turns each role into an autorefs link to the API page when the name resolves
  to something that page renders, and into inline code otherwise;
* gives ``@attrs.frozen`` / ``@attrs.define`` classes the ``__init__``
  signature attrs generates, and shows each field's default rather than the
  ``attrs.field(...)`` call.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj):`(?P<tilde>~?)(?P<name>[\w.]+)`")
_PACKAGE = "cellvault"
# Modules rendered whole on the API page.
_RENDERED_MODULES = ("cellvault.hookspecs",)


class CellvaultDocstrings(griffe.Extension):
    """Make Sphinx-isms in cellvault's docstrings render in mkdocstrings."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != _PACKAGE:
            return
        public = _public_paths(pkg)
        for obj in _walk(pkg):
            if obj.is_attribute and obj.docstring is None:
                _comment_docstring(obj)
        for obj in _walk(pkg):
            if obj.is_class:
                # Private helper bases (``_Report``) are not part of the API.
                obj.bases = [b for b in obj.bases if not str(b).rsplit(".", 1)[-1].startswith("_")]
                if _is_attrs(obj):
                    _attrs_init(obj)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _ROLE.sub(lambda m: _link(m, obj, pkg, public), obj.docstring.value)

    # griffe 1.x calls this hook instead.
    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self.on_package(pkg=pkg)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in list(obj.members.values()):
        if member.is_alias:
            continue
        yield from _walk(member)


def _comment_docstring(attr: griffe.Object) -> None:
    """Use the ``#:`` lines right above an attribute as its docstring."""
    try:
        lines = attr.module.lines
    except Exception:
        return
    if not attr.lineno:
        return
    found: list[str] = []
    index = attr.lineno - 2
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    if found:
        attr.docstring = griffe.Docstring(" ".join(found), lineno=attr.lineno, parent=attr)


def _public_paths(pkg: griffe.Module) -> dict[str, str]:
    """Canonical path -> the public ``cellvault.<Name>`` path the API page renders."""
    out: dict[str, str] = {}
    for name, member in pkg.members.items():
        if not member.is_alias or name.startswith("_"):
            continue
        try:
            out[member.final_target.path] = f"{_PACKAGE}.{name}"
        except Exception:
            continue
    return out


def _resolve(name: str, here: griffe.Object, pkg: griffe.Module) -> griffe.Object | None:
    """Find the object *name* refers to, seen from *here*."""
    first, _, rest = name.partition(".")
    candidates: list[griffe.Object] = []
    scope: griffe.Object | None = here
    while scope is not None:
        candidates.append(scope)
        scope = scope.parent
    candidates.append(pkg)
    start: Any = None
    if first == _PACKAGE:
        start, rest = pkg, rest
    else:
        for scope in candidates:
            if first in scope.members:
                start = scope.members[first]
                break
    if start is None:
        return None
    obj = start
    for part in filter(None, rest.split(".")):
        try:
            obj = obj.final_target if obj.is_alias else obj
            obj = obj.members[part]
        except Exception:
            return None
    try:
        return obj.final_target if obj.is_alias else obj
    except Exception:
        return None


def _public(obj: griffe.Object, public: dict[str, str]) -> str | None:
    """The path of *obj* on the API page, if the page renders it."""
    if obj.path.startswith(_RENDERED_MODULES):
        return obj.path if not obj.name.startswith("_") else None
    parts: list[str] = []
    node: griffe.Object | None = obj
    while node is not None:
        if node.path in public:
            if any(p.startswith("_") for p in parts):
                return None
            return ".".join([public[node.path], *reversed(parts)])
        parts.append(node.name)
        node = node.parent
    return None


def _link(match: re.Match[str], here: griffe.Object, pkg: griffe.Module, public: dict[str, str]) -> str:
    name = match["name"]
    shown = name.rsplit(".", 1)[-1] if match["tilde"] else name
    target = _resolve(name, here, pkg)
    path = _public(target, public) if target is not None else None
    if path is None:
        return f"`{shown}`"
    return f"[`{shown}`][{path}]"


_ATTRS_DECORATORS = re.compile(r"^(attrs|attr)\.(frozen|define|mutable|s|attrs)\b")


def _is_attrs(cls: griffe.Object) -> bool:
    return any(_ATTRS_DECORATORS.match(str(d.value)) for d in cls.decorators)


def _field_default(value: Any) -> tuple[bool, str | None, bool]:
    """(init, default source or None when required, whether the value was an attrs.field call)."""
    if value is None:
        return True, None, False
    text = str(value)
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return True, text, False
    if not (isinstance(node, ast.Call) and ast.unparse(node.func) in ("attrs.field", "attr.ib", "attr.field")):
        return True, text, False
    kwargs = {k.arg: k.value for k in node.keywords if k.arg}
    init = not (isinstance(kwargs.get("init"), ast.Constant) and kwargs["init"].value is False)
    if "default" in kwargs:
        return init, ast.unparse(kwargs["default"]), True
    if "factory" in kwargs:
        return init, f"{ast.unparse(kwargs['factory'])}()", True
    return init, None, True


def _attrs_init(cls: griffe.Object) -> None:
    """Add the ``__init__`` attrs generates, and show fields' defaults plainly."""
    if "__init__" in cls.members:
        return
    params = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for member in list(cls.members.values()):
        if member.is_alias or not member.is_attribute or member.annotation is None:
            continue
        if "property" in member.labels or str(member.annotation).startswith(("ClassVar", "typing.ClassVar")):
            continue
        init, default, was_field = _field_default(member.value)
        if was_field:
            member.value = default
        member.labels.discard("class-attribute")
        if not init:
            continue
        params.append(
            griffe.Parameter(
                member.name.lstrip("_"),
                annotation=member.annotation,
                kind=griffe.ParameterKind.positional_or_keyword,
                default=default,
            )
        )
    init_fn = griffe.Function("__init__", parameters=griffe.Parameters(*params), returns="None")
    init_fn.lineno = cls.lineno
    init_fn.endlineno = cls.lineno
    cls.set_member("__init__", init_fn)
