#!/usr/bin/env bash
# dr_failover.sh: the manual's failover (section 5.4), over cellvault.
#
# On the standby, once the primary is confirmed down:
#   DR_PULL_ONLY=1 ./sync_backup_to_dr.sh                 pull the newest backups
#   RESTORE_DATE=latest ../restore_full.sh                restore them
#   (start the services, check their health)
#   DR_SITE_ID=dr ./dr_failover.sh                        mark the switch
#
# Pulls again, checks that this site holds the newest backup of every cell and
# verifies each completely, writes the failover marker (object storage and
# BACKUP_DIR/.cellvault/dr/failover.json), calls the failover plugins (DNS,
# SLB, Ingress; examples/dr/failover_plugin.py) and prints the switch steps.
# --restore latest restores as well (then restore_full.sh is not needed);
# --no-pull when the object storage is down too. Failback: docs/dr.md.
# Exit status: 0 failed over; 1 refused or failed (no marker written); 2 a configuration error.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cv=("${CELLVAULT:-cellvault}")
if [[ -n ${BACKUP_CONFIG:-} || -f $here/../backup_config.env ]]; then
    cv+=(--env-file "$(realpath -m -- "${BACKUP_CONFIG:-$here/../backup_config.env}")")
fi
cd -- "$here/../../.."
exec "${cv[@]}" dr failover "$@"
