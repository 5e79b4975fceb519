"""The plugin manager: built-in plugins and the ``cellvault`` entry-point group.

Built-ins are ordinary modules registered through the same ``register`` call a
third-party plugin reaches. ``CELLVAULT_LOAD_PLUGINS`` restricts which entry
points load: unset loads all, an empty value loads none, otherwise a
comma-separated list of entry-point names.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import ConfigError

__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginOutcome",
    "call_each",
    "make_plugin_manager",
]

ENTRY_POINT_GROUP = "cellvault"

#: Modules registered in every plugin manager, in this order. Later ones are
#: asked first by ``firstresult`` hooks.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "cellvault.targets.fsspec",
    "cellvault.targets.local",
    "cellvault.targets.rsync",
    "cellvault.targets.s3",
    "cellvault.targets.oss",
    "cellvault.notify.alertlog",
    "cellvault.notify.webhook",
    "cellvault.notify.apprise",
    "cellvault.dumpers.command",
    "cellvault.dumpers.sqlite",
    "cellvault.dumpers.postgres",
    "cellvault.dumpers.mysql",
    "cellvault.dumpers.redis",
    "cellvault.traffic.command",
    "cellvault.traffic.k8s",
)


def make_plugin_manager(
    plugins: Iterable[object] = (),
    *,
    load_entry_points: bool = True,
    environ: Mapping[str, str] | None = None,
) -> pluggy.PluginManager:
    """A plugin manager with the built-ins, the entry points, then *plugins*."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if load_entry_points:
        _load_entry_points(pm, os.environ if environ is None else environ)
    for plugin in plugins:
        pm.register(plugin)
    return pm


@attrs.frozen
class PluginOutcome:
    """What one plugin's implementation of a hook did in :func:`call_each`."""

    plugin: str
    ok: bool
    #: What it returned (``None`` when it failed).
    result: Any = None
    #: What it raised, as an exception object (``None`` when it succeeded).
    exception: BaseException | None = None


def call_each(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> list[PluginOutcome]:
    """Call hook *name* once per plugin that implements it, each call on its own.

    For the hooks whose implementations must not stop one another (alerts,
    notifications, the after-snapshot and failover hooks): one plugin that
    raises must not keep the next from running, and the caller learns each
    plugin's outcome. Every call goes through pluggy's own hook caller (a
    subset of the plugin manager holding that plugin and every plugin that
    only wraps the hook), so ``wrapper``/``hookwrapper`` implementations wrap
    each call as pluggy documents; implementations are called in pluggy's
    order (last registered first, ``tryfirst``/``trylast`` respected).

    pluggy's subset callers hash the hook's plugins; when one of them cannot
    be hashed (an attrs or dataclass value with ``eq``), each implementation
    is still called, directly and without the wrappers, rather than left silent.
    """
    caller = getattr(pm.hook, name)
    impls = caller.get_hookimpls()
    wrapping = {id(i.plugin) for i in impls if i.hookwrapper or i.wrapper}
    callers = [i for i in impls if not (i.hookwrapper or i.wrapper)]
    plugins = [i.plugin for i in impls]
    hashable = _all_hashable(plugins)
    out: list[PluginOutcome] = []
    for impl in reversed(callers):
        others = [p for p in plugins if p is not impl.plugin and id(p) not in wrapping]
        subset: Callable[..., Any] = (
            pm.subset_hook_caller(name, remove_plugins=others)
            if hashable
            else functools.partial(_call_directly, impl)
        )
        try:
            results = subset(**kwargs)
        except Exception as exc:  # noqa: BLE001 - a boundary: the caller reports each outcome
            out.append(PluginOutcome(impl.plugin_name, False, exception=exc))
            continue
        result = results[0] if isinstance(results, list) and results else results
        out.append(PluginOutcome(impl.plugin_name, True, result=result))
    return out


def _all_hashable(plugins: Iterable[object]) -> bool:
    try:
        for plugin in plugins:
            hash(plugin)
    except TypeError:
        return False
    return True


def _call_directly(impl: pluggy.HookImpl, **kwargs: Any) -> list[Any]:
    return [impl.function(*(kwargs[arg] for arg in impl.argnames))]


def _load_entry_points(pm: pluggy.PluginManager, environ: Mapping[str, str]) -> None:
    wanted = environ.get("CELLVAULT_LOAD_PLUGINS")
    if wanted is None:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
            raise ConfigError(
                f"a cellvault plugin failed to load ({type(exc).__name__}: {exc})",
                hint="fix or uninstall it, or choose plugins with CELLVAULT_LOAD_PLUGINS",
            ) from None
        return
    for name in filter(None, (n.strip() for n in wanted.split(","))):
        try:
            loaded = pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
            raise ConfigError(
                f"cellvault plugin {name!r} failed to load ({type(exc).__name__}: {exc})",
                hint="fix or uninstall it, or remove it from CELLVAULT_LOAD_PLUGINS",
            ) from None
        if not loaded and pm.get_plugin(name) is None:
            known = sorted(
                {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
            )
            raise ConfigError(
                f"CELLVAULT_LOAD_PLUGINS names {name!r}, but no installed package provides "
                f"a cellvault plugin of that name",
                hint=f"installed cellvault plugins: {', '.join(known) or 'none'}",
            )
