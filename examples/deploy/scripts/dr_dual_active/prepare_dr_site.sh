#!/usr/bin/env bash
# prepare_dr_site.sh: the manual's DR site preparation, over cellvault.
#
#   DR_SITE_ID=dr ./deploy/scripts/dr_dual_active/prepare_dr_site.sh
#
# Creates the backup directory and the cells' parent directories, checks every
# target (credentials, reachability, a probe object written, read and removed),
# pulls the backups from the object storage, and shows what this site holds.
# Then schedule the pull (cron_backup.example) and run `cellvault doctor`.
# Arguments go to `cellvault dr prepare` (--no-pull).
# Exit status: 0 ok; 1 a target or the pull failed; 2 a configuration error.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cv=("${CELLVAULT:-cellvault}")
if [[ -n ${BACKUP_CONFIG:-} || -f $here/../backup_config.env ]]; then
    cv+=(--env-file "$(realpath -m -- "${BACKUP_CONFIG:-$here/../backup_config.env}")")
fi
cd -- "$here/../../.."
exec "${cv[@]}" dr prepare "$@"
