"""The seed's ``DR_*`` variables: which site this is, and how ``sync`` runs here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from ..config import Config, parse_flag, parse_names
from ..errors import ConfigError
from ..fence import host_site_id

__all__ = ["DrSettings", "host_site_id", "validate_site_id"]

_SITE_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def validate_site_id(value: str, *, field: str = "site id") -> str:
    """*value* if it is a usable site id; :class:`ConfigError` naming *field* otherwise."""
    if not _SITE_ID.fullmatch(value):
        raise ConfigError(
            f"invalid {field} {value!r}",
            hint="a site id is 1-63 characters of a-z, 0-9, '_' and '-', e.g. 'primary' or 'dr'",
        )
    return value


@attrs.frozen
class DrSettings:
    """The seed's ``DR_*`` variables: which site this is, and how ``sync`` runs here.

    * ``DR_SITE_ID``: this site's id (``primary``, ``dr``); default: the host name.
    * ``DR_PULL_ONLY=1``: ``cellvault sync`` pulls from the object storage into
      this site's backup directory instead of pushing (the standby's mode).
    * ``DR_TARGET``: the object-storage targets of the DR pair, comma-separated
      (default: every configured target but the first).

    In a TOML file they are ``dr_site_id``, ``dr_pull_only`` and ``dr_targets``.
    """

    site_id: str | None = None
    pull_only: bool = False
    storage: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.site_id is not None:
            validate_site_id(self.site_id, field="DR_SITE_ID")

    @classmethod
    def from_config(cls, config: Config, environ: Mapping[str, str] | None = None) -> DrSettings:
        """The settings of *config*, with ``DR_*`` variables of *environ* (if given) winning."""
        base = cls(config.dr_site_id, config.dr_pull_only, tuple(config.dr_targets))
        return base.merged(environ) if environ is not None else base

    @classmethod
    def from_env(cls, *sources: Mapping[str, str]) -> DrSettings:
        """Read ``DR_*`` from *sources*, later ones winning."""
        settings = cls()
        for source in sources:
            settings = settings.merged(source)
        return settings

    def merged(self, environ: Mapping[str, str]) -> DrSettings:
        """These settings with the ``DR_*`` variables set in *environ* applied over them."""
        changes: dict[str, Any] = {}
        if environ.get("DR_SITE_ID", "").strip():
            changes["site_id"] = environ["DR_SITE_ID"].strip()
        if "DR_PULL_ONLY" in environ:
            changes["pull_only"] = parse_flag("DR_PULL_ONLY", environ["DR_PULL_ONLY"])
        if environ.get("DR_TARGET", "").strip():
            changes["storage"] = parse_names(environ["DR_TARGET"])
        return attrs.evolve(self, **changes) if changes else self
