"""The fleet's settings: the broker, this host's name, the schedule, the inventory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..config import Config
from ..errors import ConfigError
from ..fence import host_site_id

__all__ = ["FleetSettings"]

#: The remote-control command a worker answers with its host and cells.
ANNOUNCE = "cellvault_cells"
#: Seconds a restore task may wait in the pool's queue before it is dropped: a
#: restore must never start long after the coordinator that asked for it gave up.
RESTORE_EXPIRES = 900
#: The queue every worker reads for the fleet's own housekeeping (the beat's fan-out).
CONTROL_QUEUE = "cellvault.control"


def host_queue(host: str) -> str:
    """The queue of the cells whose data lives on *host*."""
    return f"cellvault.host.{host}"


def pool_queue(pool: str) -> str:
    """The queue the workers of the standby restore pool *pool* read."""
    return f"cellvault.pool.{pool}"


def _int(where: str, value: Any, low: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a whole number, not {value!r}") from None
    if number < low:
        raise ConfigError(f"{where} must be at least {low}, not {number}")
    return number


def _inventory(value: Any) -> dict[str, tuple[str, ...]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"[fleet] hosts must be a table of host = [cells], not {value!r}")
    out = {}
    for host, cells in value.items():
        if isinstance(cells, str):
            cells = cells.split()
        if not isinstance(cells, list) or not all(isinstance(c, str) for c in cells):
            raise ConfigError(f"[fleet.hosts] {host} must be a list of cell names, not {cells!r}")
        out[str(host)] = tuple(cells)
    return out


@attrs.frozen
class FleetSettings:
    """Where the fleet's broker is, which host this is, and what runs when.

    From ``[fleet]`` in TOML or the ``CELLVAULT_*`` variables
    (:data:`cellvault.config.FLEET_ENV`): ``broker_url`` (``redis://`` or
    ``amqp://``), ``result_backend`` (default: the broker for Redis,
    ``rpc://`` for AMQP), ``host`` (default: the host name), ``pool`` (the
    standby restore pool's name, default ``default``),
    ``target_concurrency`` (archives a fleet restore reads from one target at
    once, default 4), ``visibility_timeout`` (seconds a Redis broker waits
    before it hands an unacknowledged task to another worker: longer than
    the longest backup; default 43200), ``full_schedule`` and
    ``incremental_schedule`` (the beat's crontab lines, the manual's
    ``0 2 * * *`` and ``0 */6 * * *``), and ``hosts`` (TOML only: the
    inventory, host = [cells]; workers also announce their own).
    """

    broker_url: str
    result_backend: str
    host: str
    #: The standby restore pool this host's worker serves with ``--pool``, and a
    #: coordinator's restores go to (``CELLVAULT_FLEET_POOL``).
    pool: str = "default"
    target_concurrency: int = 4
    visibility_timeout: int = 43200
    full_schedule: str = "0 2 * * *"
    incremental_schedule: str = "0 */6 * * *"
    hosts: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    @classmethod
    def from_config(cls, config: Config, **overrides: Any) -> FleetSettings:
        """The settings of *config* (``[fleet]`` / ``CELLVAULT_*``), *overrides* winning."""
        raw = {**config.fleet, **{k: v for k, v in overrides.items() if v is not None}}
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"[fleet]: unknown key {unknown[0]!r}",
                hint=f"known keys: {', '.join(sorted(known))}",
            )
        broker = str(raw.get("broker_url", "")).strip()
        if not broker:
            raise ConfigError(
                "the fleet needs a broker: CELLVAULT_BROKER_URL is not set",
                hint="e.g. CELLVAULT_BROKER_URL=redis://127.0.0.1:6379/0 or amqp://guest@127.0.0.1//",
            )
        if not broker.startswith(("redis://", "rediss://", "amqp://", "amqps://", "memory://")):
            raise ConfigError(
                "CELLVAULT_BROKER_URL must be a redis:// or amqp:// URL",
                hint="the fleet is tested with Redis and RabbitMQ",
            )
        backend = str(raw.get("result_backend", "")).strip() or (
            broker if broker.startswith("redis") else "rpc://"
        )
        return cls(
            broker_url=broker,
            result_backend=backend,
            host=str(raw.get("host") or host_site_id()),
            pool=str(raw.get("pool") or "default"),
            target_concurrency=_int("target_concurrency", raw.get("target_concurrency", 4), 1),
            visibility_timeout=_int("visibility_timeout", raw.get("visibility_timeout", 43200), 60),
            full_schedule=str(raw.get("full_schedule", "0 2 * * *")),
            incremental_schedule=str(raw.get("incremental_schedule", "0 */6 * * *")),
            hosts=_inventory(raw.get("hosts")),
        )
