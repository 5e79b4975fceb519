#!/usr/bin/env bash
# verify_backup.sh: the manual's backup check, over cellvault.
#
#   ./deploy/scripts/verify_backup.sh                     the newest archive of every cell, every target
#   ./deploy/scripts/verify_backup.sh --all               every archive
#   ./deploy/scripts/verify_backup.sh --level drill       a restore drill into a scratch directory
#
# backup_runner.sh does not call it: every backup is read back and checked as
# it is stored. Run it to check what is stored later on: each archive's sha256,
# every member against the manifest, meta.json with backed_at, and that an
# incremental's chain is there. A failure alerts like a failed backup.
# Arguments go to `cellvault verify` (--cell, --target, --date, --level quick|full|drill).
# Exit status: 0 every archive ok; 1 one failed; 2 a configuration error.
set -euo pipefail
here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
cv=("${CELLVAULT:-cellvault}")
if [[ -n ${BACKUP_CONFIG:-} || -f $here/backup_config.env ]]; then
    cv+=(--env-file "$(realpath -m -- "${BACKUP_CONFIG:-$here/backup_config.env}")")
fi
cd -- "$here/../.."
exec "${cv[@]}" verify "$@"
