"""The manual steps a failover and a failback leave to the operator (the seed's section 5.4)."""

from __future__ import annotations

from ..report import iso
from .records import FailoverMarker

__all__ = ["failover_steps", "handback_steps", "takeover_steps"]


def failover_steps(marker: FailoverMarker, *, restored: bool) -> tuple[str, ...]:
    """What the operator does after a failover (the seed's 5.4, step 3)."""
    site = marker.site_id
    old = marker.previous_site or "the primary"
    return (
        (
            "The cells' data is restored on this site."
            if restored
            else "Restore the cells' data here if not done yet: cellvault restore --date latest"
        )
        + f" Start the services of site {site} (gateway, governance, cells) and check their health.",
        f"Switch the traffic to site {site}: point the platform's DNS record (or the SLB "
        f"listener / Kubernetes Ingress in front of the gateway) at site {site}'s gateway; "
        "lower the DNS TTL first if it is long. A cellvault_failover plugin may have done it: "
        "check.",
        f"Record the switch time ({iso(marker.at)}) and tell operations and the business; "
        "'cellvault dr status' shows the active site to everyone.",
        f"Keep backups running on site {site}, to its own directory AND the object storage "
        "(BACKUP_TARGETS=local,s3): the failback brings them home.",
        f"Do not run backups or 'cellvault sync' pushes on {old} until the failback: "
        "'cellvault sync' refuses to push there while this marker is in effect.",
    )


def handback_steps(marker: FailoverMarker) -> tuple[str, ...]:
    """What the operator does after the hand-back on the active site."""
    site = marker.site_id
    old = marker.previous_site or "the primary"
    assert marker.handback is not None
    return (
        f"Site {site} has handed back {len(marker.handback.archives)} cell(s) at "
        f"{iso(marker.handback.at)}; keep its writes stopped from now on.",
        f"On {old} (rebuilt, its services stopped): cellvault dr prepare, then "
        "cellvault dr failback (pulls, verifies, restores exactly these archives, clears the marker).",
        f"Site {site} stays active until then; after the switch back it is the standby "
        "again: re-enable its 'cellvault sync --pull-only' cron job.",
    )


def takeover_steps(marker: FailoverMarker, *, restored: bool) -> tuple[str, ...]:
    """What the operator does after the recovered primary took over again."""
    site = marker.site_id
    old = marker.previous_site or "the standby"
    return (
        (
            "The cells' data handed back is restored on this site."
            if restored
            else "Restore the handed-back data: cellvault restore --date latest"
        )
        + f" Start the services of site {site} and check their health.",
        f"Switch the traffic back to site {site}: point the DNS record (or the SLB listener / "
        f"Kubernetes Ingress) at site {site}'s gateway again, and tell operations and the "
        "business; watch the platform for a while.",
        f"Re-enable backups and 'cellvault sync' (push) on site {site}.",
        f"On site {old}: stop its services and its backups; it is the standby again "
        "(keep its 'cellvault sync --pull-only' job, or keep it as a cold standby).",
    )
