#!/usr/bin/env bash
# backup_runner.sh: the manual's backup entry point, over cellvault.
#
#   BACKUP_TYPE=full ./deploy/scripts/backup_runner.sh          (cron: daily at 02:00)
#   BACKUP_TYPE=incremental ./deploy/scripts/backup_runner.sh   (cron: every 6 hours)
#
# Everything the manual's runner did is inside `cellvault backup`: every cell of
# BACKUP_CELLS, full or incremental (BACKUP_TYPE; default: backup_config.env's,
# else full), built once and stored to every target of BACKUP_TARGETS at once,
# each stored copy read back and checked (verify_backup.sh's job), and on any
# failure an alert to BACKUP_ALERT_WEBHOOK and deploy/backup/backup_alerts.log.
# Then `cellvault prune` applies the retention (full 7 days, incremental 3).
# Arguments go to `cellvault backup` (--cell crm, --target s3, ...).
# Exit status: 0 ok; 1 a cell or target failed (the log names the stage:
# pack, upload, verify); 2 a configuration error.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cv=("${CELLVAULT:-cellvault}")
# backup_config.env next to this script, or $BACKUP_CONFIG; without either, the environment alone.
if [[ -n ${BACKUP_CONFIG:-} || -f $here/backup_config.env ]]; then
    cv+=(--env-file "$(realpath -m -- "${BACKUP_CONFIG:-$here/backup_config.env}")")
fi
# Run from the platform's root, as the manual does (the alert log, deploy/backup/backup_alerts.log,
# is placed from the env file's folder, whatever the current directory).
cd -- "$here/../.."
"${cv[@]}" backup "$@"
exec "${cv[@]}" prune
