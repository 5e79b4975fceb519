#!/usr/bin/env bash
# sync_backup_to_dr.sh: the manual's DR sync, over cellvault.
#
#   ./deploy/scripts/dr_dual_active/sync_backup_to_dr.sh                  primary: push
#   DR_PULL_ONLY=1 ./deploy/scripts/dr_dual_active/sync_backup_to_dr.sh   standby: pull (cron: every 15 minutes)
#
# Push copies every archive of this site's BACKUP_DIR that the object storage
# (DR_TARGET, default every target but the first) misses; pull copies what this
# site misses from it. Oldest first, checked on arrival, committed last; a cell
# another run is copying is skipped (exit 0), a killed run is resumed.
# Reads ../backup_config.env (or $BACKUP_CONFIG), with DR_SITE_ID, DR_PULL_ONLY
# and DR_TARGET in it or in the environment (see examples/dr/env.*.example).
# Exit status: 0 ok; 1 a copy failed (alerted); 2 a configuration error.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cv=("${CELLVAULT:-cellvault}")
if [[ -n ${BACKUP_CONFIG:-} || -f $here/../backup_config.env ]]; then
    cv+=(--env-file "$(realpath -m -- "${BACKUP_CONFIG:-$here/../backup_config.env}")")
fi
cd -- "$here/../../.."
exec "${cv[@]}" sync "$@"
