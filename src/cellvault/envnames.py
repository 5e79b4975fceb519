"""The names of the environment variables cellvault reads, in one place.

:mod:`cellvault.config` reads them; ``doctor`` and the configuration's
checks report any other ``BACKUP_*`` or ``RESTORE_*`` name as unknown, with
a suggestion; ``docs/configuration.md`` documents each (a test keeps the two
in step).
"""

from __future__ import annotations

__all__ = ["FLEET_ENV", "KNOWN_ENV"]

#: Every environment variable cellvault reads (others starting with BACKUP_ or
#: RESTORE_ are reported as unknown, with a suggestion).
#: The fleet's variables (``cellvault.fleet``, docs/fleet.md) -> their ``[fleet]`` key.
FLEET_ENV: dict[str, str] = {
    "CELLVAULT_BROKER_URL": "broker_url",
    "CELLVAULT_RESULT_BACKEND": "result_backend",
    "CELLVAULT_FLEET_HOST": "host",
    "CELLVAULT_FLEET_POOL": "pool",
    "CELLVAULT_FLEET_TARGET_CONCURRENCY": "target_concurrency",
    "CELLVAULT_FLEET_VISIBILITY_TIMEOUT": "visibility_timeout",
    "CELLVAULT_FLEET_FULL_SCHEDULE": "full_schedule",
    "CELLVAULT_FLEET_INCREMENTAL_SCHEDULE": "incremental_schedule",
}

KNOWN_ENV: tuple[str, ...] = (
    "BACKUP_DIR",
    "BACKUP_TYPE",
    "BACKUP_TARGETS",
    "BACKUP_CELLS",
    "BACKUP_CELLS_ROOT",
    "BACKUP_EXCLUDE",
    "BACKUP_CODEC",
    "BACKUP_COMPRESSION_LEVEL",
    "BACKUP_JOBS",
    "BACKUP_VERIFY",
    "BACKUP_MAX_CHAIN",
    "BACKUP_CHECKSUM",
    "BACKUP_ENCRYPT_RECIPIENTS",
    "BACKUP_ENCRYPT_RECIPIENTS_FILE",
    "BACKUP_AGE_IDENTITY",
    "BACKUP_S3_BUCKET",
    "BACKUP_S3_PREFIX",
    "BACKUP_S3_ENDPOINT",
    "BACKUP_S3_REGION",
    "BACKUP_OSS_BUCKET",
    "BACKUP_OSS_PREFIX",
    "BACKUP_OSS_ENDPOINT",
    "BACKUP_NAS_PATH",
    "BACKUP_NAS_RSYNC",
    "BACKUP_ALERT_WEBHOOK",
    "BACKUP_ALERT_LOG",
    "BACKUP_ALERT_FORMAT",
    "BACKUP_ALERT_SECRET",
    "BACKUP_ALERT_TIMEOUT",
    "BACKUP_ALERT_ON",
    "BACKUP_ALERT_URLS",
    "BACKUP_VERIFY_LEVEL",
    "BACKUP_METRICS_FILE",
    "BACKUP_MAX_AGE_HOURS",
    "BACKUP_LOG_KEEP_DAYS",
    "BACKUP_PROGRESS_INTERVAL",
    "RESTORE_DATE",
    "RESTORE_CELL",
    "RESTORE_SKIP_PREBACKUP",
    "RESTORE_INTO",
    "BACKUP_KEEP_FULL_DAYS",
    "BACKUP_KEEP_INCREMENTAL_DAYS",
    "BACKUP_KEEP_LAST",
    "BACKUP_KEEP_HOURLY",
    "BACKUP_KEEP_DAILY",
    "BACKUP_KEEP_WEEKLY",
    "BACKUP_KEEP_MONTHLY",
    # Hook scripts (cellvault.hooks): restore_hook_<cell>.sh and its siblings.
    "BACKUP_HOOKS_DIR",
    "BACKUP_SIGNING_KEY",
    "BACKUP_VERIFY_KEYS",
    "BACKUP_REQUIRE_SIGNED",
    "BACKUP_OBJECT_LOCK",
    "BACKUP_HOOK_TIMEOUT",
    "RESTORE_HOOKS_DIR",
    # Disaster recovery (cellvault.dr): the seed's DR_* names, and DR_TARGET.
    "DR_SITE_ID",
    "DR_PULL_ONLY",
    "DR_TARGET",
    # cellvault dr watch (automatic failover) and the traffic switch.
    "DR_WATCH_PRIMARY",
    "DR_WATCH_URLS",
    "DR_WATCH_PROBES",
    "DR_WATCH_WINDOW",
    "DR_WATCH_INTERVAL",
    "DR_WATCH_HEARTBEAT_AGE",
    "DR_SWITCH_COMMAND",
    "DR_SWITCH_K8S",
    # The fleet (cellvault.fleet): Celery's broker and the fleet's settings.
    *FLEET_ENV,
)
