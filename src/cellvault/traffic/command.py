"""The command traffic switch: ``DR_SWITCH_COMMAND``, run when a site becomes active.

The command (split like a shell would, never run through one) gets the new
site's id and the event as its last two arguments, and in its environment
``CELLVAULT_SWITCH_SITE``, ``CELLVAULT_SWITCH_PREVIOUS_SITE`` and
``CELLVAULT_SWITCH_EVENT``: ``switch_dns.sh dr failover``. It must exit 0
within ``BACKUP_HOOK_TIMEOUT`` seconds, and do no harm when run twice.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from ..config import Config
from ..errors import DrError
from ..hookspecs import hookimpl
from ..log import get_logger, redact_text

__all__ = ["cellvault_switch_traffic", "switch_command"]

log = get_logger(__name__)


def switch_command(command: str, site: str, event: str) -> list[str]:
    """The argument vector ``DR_SWITCH_COMMAND`` runs as; :class:`DrError` if it cannot be split."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise DrError(f"DR_SWITCH_COMMAND cannot be split into arguments: {exc}") from None
    if not argv:
        raise DrError("DR_SWITCH_COMMAND is empty")
    return [*argv, site, event]


@hookimpl
def cellvault_switch_traffic(
    site: str, previous_site: str | None, event: str, config: Config
) -> str | None:
    """Run ``DR_SWITCH_COMMAND`` for *site*; ``None`` when it is not set."""
    if not config.dr_switch_command:
        return None
    argv = switch_command(config.dr_switch_command, site, event)
    env = {
        **os.environ,
        "CELLVAULT_SWITCH_SITE": site,
        "CELLVAULT_SWITCH_PREVIOUS_SITE": previous_site or "",
        "CELLVAULT_SWITCH_EVENT": event,
    }
    log.info("traffic.command", program=argv[0], site=site, switch_event=event)
    try:
        done = subprocess.run(
            argv,
            env=env,
            capture_output=True,
            text=True,
            timeout=config.hook_timeout,
            check=False,
        )
    except FileNotFoundError:
        raise DrError(f"DR_SWITCH_COMMAND: program {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise DrError(
            f"DR_SWITCH_COMMAND {argv[0]} did not finish within {config.hook_timeout:g} seconds"
        ) from None
    if done.returncode != 0:
        tail = redact_text((done.stderr or done.stdout).strip()[-500:])
        raise DrError(f"DR_SWITCH_COMMAND {argv[0]} exited {done.returncode}: {tail}")
    return f"command {argv[0]} switched the traffic to site {site}"
