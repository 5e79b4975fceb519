#!/usr/bin/env bash
# restore_full.sh: the manual's one-click restore, over cellvault.
#
#   RESTORE_DATE=20250101_0200 ./deploy/scripts/restore_full.sh   every cell, as of that time
#   RESTORE_DATE=20250101_0200 RESTORE_CELL=crm ./deploy/scripts/restore_full.sh
#
# RESTORE_DATE   which backup: a date prefix YYYYMMDD[_HH[MM[SS]]] (the newest
#                archive it matches), an archive id, an ISO time (the newest at
#                or before it), or latest (the default).
# RESTORE_CELL   only this cell (default: every cell of BACKUP_CELLS).
# RESTORE_SKIP_PREBACKUP=1   no safety backup of the current data first (needs approval);
#                a cell with a database dumper that cannot stage is then refused.
#
# First a safety backup of the current data (if it fails, nothing is restored);
# then each archive is fetched from the first target that has it (local, else
# S3/OSS/NAS), extracted beside the live data, checked file by file, its
# database dumps loaded into scratch databases and restore_hook_<cell>.sh run
# (BACKUP_HOOKS_DIR), and only then files and databases are swapped into place.
# A failure leaves the live files and the staged databases as they were; a
# dumper that cannot stage loads its live database before the swap (the safety
# backup is the way back), so without the safety backup such a restore is refused.
# Arguments go to `cellvault restore` (--into DIR, --source s3, ...).
# Exit status: 0 ok; 1 failed (nothing swapped in); 2 bad date, unknown cell or configuration.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cv=("${CELLVAULT:-cellvault}")
if [[ -n ${BACKUP_CONFIG:-} || -f $here/backup_config.env ]]; then
    cv+=(--env-file "$(realpath -m -- "${BACKUP_CONFIG:-$here/backup_config.env}")")
fi
cd -- "$here/../.."
exec "${cv[@]}" restore "$@"
