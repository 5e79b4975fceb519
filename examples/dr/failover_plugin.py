"""An example cellvault failover plugin: send the traffic to the site that becomes active.

``cellvault dr failover`` (on the standby) and ``cellvault dr failback`` (on
the recovered primary) call the ``cellvault_failover`` hook with the marker
of the switch: ``marker.site_id`` is the site that serves from now on. This
plugin does the seed's manual step 3 ("point DNS or the SLB/Ingress at the
standby's gateway") in two ways, either or both:

* it rewrites an **nginx upstream file** (read by the gateway or load
  balancer in front of both sites), atomically, then reloads nginx;
* it calls a **DNS API** through a function you give it (your provider's SDK:
  Aliyun Alidns, Route 53, Cloudflare, ...), so no credentials live here.

Use it from Python::

    from failover_plugin import FailoverSwitch
    switch = FailoverSwitch(
        {"primary": "10.0.0.10:443", "dr": "10.8.0.10:443"},
        upstream_file="/etc/nginx/conf.d/paas_gateway_upstream.conf",
        dns=lambda record, address: my_dns_client.update(record, address),
        record="paas.example.com",
    )
    vault = cellvault.Vault.from_env(plugins=[switch])

or from the command line, as an entry point of a small package of yours
(``[project.entry-points.cellvault] dr_switch = "failover_plugin"``): the
module-level hook then reads its settings from the environment::

    DR_SWITCH_UPSTREAM_FILE=/etc/nginx/conf.d/paas_gateway_upstream.conf
    DR_SWITCH_UPSTREAM_PRIMARY=10.0.0.10:443    # one per site id, upper case
    DR_SWITCH_UPSTREAM_DR=10.8.0.10:443
    DR_SWITCH_RELOAD="nginx -s reload"          # split on spaces, never run by a shell

A failure raised here is reported by cellvault (the command exits 1 and says
to switch by hand); the failover marker stands either way.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cellvault import hookimpl

__all__ = ["FailoverSwitch", "cellvault_failover"]


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


class FailoverSwitch:
    """Point an nginx upstream and/or a DNS record at the site a failover makes active."""

    def __init__(
        self,
        upstreams: Mapping[str, str],
        *,
        upstream_file: str | os.PathLike[str] | None = None,
        upstream_name: str = "paas_gateway",
        reload: Callable[[], None] | None = None,
        dns: Callable[[str, str], None] | None = None,
        record: str | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.upstream_file = Path(upstream_file) if upstream_file else None
        self.upstream_name = upstream_name
        self.reload = reload if reload is not None else (lambda: _run(["nginx", "-s", "reload"]))
        self.dns = dns
        self.record = record
        if dns is not None and not record:
            raise ValueError("a DNS switch needs the record to update")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> FailoverSwitch:
        """Build the switch from ``DR_SWITCH_*`` variables (see the module's docstring)."""
        prefix = "DR_SWITCH_UPSTREAM_"
        upstreams = {
            key[len(prefix) :].lower(): value
            for key, value in environ.items()
            if key.startswith(prefix) and key != "DR_SWITCH_UPSTREAM_FILE"
        }
        reload_cmd = shlex.split(environ.get("DR_SWITCH_RELOAD", "nginx -s reload"))
        return cls(
            upstreams,
            upstream_file=environ.get("DR_SWITCH_UPSTREAM_FILE") or None,
            reload=lambda: _run(reload_cmd),
        )

    def address(self, site: str) -> str:
        try:
            return self.upstreams[site]
        except KeyError:
            raise LookupError(
                f"no address for site {site!r} (known: {', '.join(sorted(self.upstreams))}); "
                "switch the traffic by hand"
            ) from None

    def render(self, marker: Any) -> str:
        """The nginx upstream block sending everything to the active site."""
        return (
            f"# Written by cellvault's failover plugin: {marker.event} to site {marker.site_id}\n"
            f"# at {marker.at.isoformat()} by host {marker.host}. Do not edit by hand.\n"
            f"upstream {self.upstream_name} {{\n"
            f"    server {self.address(marker.site_id)};\n"
            "}\n"
        )

    @hookimpl
    def cellvault_failover(self, marker: Any) -> None:
        """Switch the traffic to ``marker.site_id``."""
        address = self.address(marker.site_id)
        if self.upstream_file is not None:
            text = self.render(marker)
            tmp = self.upstream_file.with_name(f".{self.upstream_file.name}.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.upstream_file)
            self.reload()
        if self.dns is not None:
            assert self.record is not None
            self.dns(self.record, address)


@hookimpl
def cellvault_failover(marker: Any) -> None:
    """The entry-point form: settings from ``DR_SWITCH_*`` in the environment."""
    FailoverSwitch.from_env(os.environ).cellvault_failover(marker)
