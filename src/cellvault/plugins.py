"""The plugin manager: built-in plugins and the ``cellvault`` entry-point group.

Built-ins are ordinary modules registered through the same ``register`` call a
third-party plugin reaches. ``CELLVAULT_LOAD_PLUGINS`` restricts which entry
points load: unset loads all, an empty value loads none, otherwise a
comma-separated list of entry-point names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Iterable, Mapping

import pluggy

from . import hookspecs
from .errors import ConfigError

__all__ = ["DEFAULT_PLUGINS", "ENTRY_POINT_GROUP", "make_plugin_manager"]

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
    "cellvault.dumpers.command",
    "cellvault.dumpers.sqlite",
    "cellvault.dumpers.postgres",
    "cellvault.dumpers.mysql",
    "cellvault.dumpers.redis",
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
